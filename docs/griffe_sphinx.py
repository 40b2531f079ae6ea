"""A griffe extension for the API reference: the docstrings' Sphinx conventions, read as Sphinx reads them.

* Roles (:class:`Settings`, :meth:`~x.Y.z`, :mod:`.writer`) become *optional* cross-references: the
  target is resolved in the scope of the docstring's object (as Sphinx would); the link appears when the
  target is in the API reference, and plain code when it is not (a private helper, another library) —
  never a broken link or a build warning.
* ``#:`` comments above an attribute (or after it, on its line) become its docstring, as with Sphinx's
  autodoc; griffe reads only string literals below an assignment.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+?)`")


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path ``target`` names in the scope of ``obj`` (``target`` itself when it names nothing known)."""
    if target.startswith("."):  # relative to the object's package: .writer
        module = obj if obj.is_module else obj.module
        package = module if module.is_init_module else module.parent
        return f"{package.path}{target}" if package is not None else target.lstrip(".")
    first, _, rest = target.partition(".")
    try:
        path = obj.resolve(first)
    except (griffe.NameResolutionError, AttributeError, KeyError):
        return target
    return f"{path}.{rest}" if rest else path


def _doc_comment(attr: griffe.Object) -> str:
    """The ``#:`` comment documenting ``attr``: the lines right above it, or the end of its own line."""
    filepath = attr.filepath
    if attr.lineno is None or not isinstance(filepath, Path):
        return ""
    try:
        lines = attr.lines_collection[filepath]  # a LinesCollection: no .get()
    except KeyError:
        return ""
    if attr.lineno > len(lines):
        return ""
    own = lines[attr.lineno - 1]
    if "#: " in own:
        return own.split("#: ", 1)[1].strip()
    comment: list[str] = []
    index = attr.lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        comment.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(comment)


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    target = "".join(match.group("target").split())
    shown = target.rsplit(".", 1)[-1] if match.group("tilde") else target
    identifier = _resolve(obj, target)
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(shown)}</code></autoref>'


class SphinxConventions(griffe.Extension):
    """Once a package is loaded: ``#:`` comments become docstrings, roles become cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg)

    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.is_attribute and obj.docstring is None and (comment := _doc_comment(obj)):
            obj.docstring = griffe.Docstring(comment, lineno=obj.lineno, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda match: _link(obj, match), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member)  # type: ignore[arg-type]
