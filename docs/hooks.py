"""MkDocs hooks: the settings and CLI references, generated at build time.

A page asks for a reference with a marker line; the hook replaces it with tables made from the code,
so nothing generated is committed and nothing can go stale:

* ``<!-- streams:settings -->`` — every field of :class:`streams.settings.Settings`: its ``STREAMS_*``
  variable, type, default, limits and description, grouped by the ``# --- section ---`` comments of
  ``streams/settings.py``;
* ``<!-- streams:cli -->`` — every command of the ``streams`` command tree (``streams.cli:cli``) with its
  usage, help and options, as ``streams <command> --help`` prints them.

It also checks that the API reference (``::: module`` blocks under ``reference/api/``) covers every module
of ``streams/`` but the command line (documented by the CLI reference) and the demos: a new module that no
page documents is a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import enum
import inspect
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any

SETTINGS_MARKER = "<!-- streams:settings -->"
CLI_MARKER = "<!-- streams:cli -->"
#: modules the API reference leaves out on purpose (with their submodules)
API_EXCLUDED = ("streams.cli", "streams.demos")

log = logging.getLogger("mkdocs.hooks.streams")


def on_files(files: Any, config: Any) -> Any:
    """Warn about each module of ``streams/`` that no ``::: module`` block of the API reference documents."""
    docs = Path(config["docs_dir"])
    package = docs.parent / "streams"
    covered: list[str] = []
    for page in sorted((docs / "reference" / "api").glob("*.md")):
        for block in re.split(r"(?m)^(?=::: )", page.read_text())[1:]:
            name = block.split()[1]
            covered.append(name if "show_submodules: false" in block else name + ".*")
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if any(module == x or module.startswith(x + ".") for x in API_EXCLUDED):
            continue
        if not any(module == c or (c.endswith(".*") and (module == c[:-2] or module.startswith(c[:-1])))
                   for c in covered):
            log.warning("module %s is not in the API reference (add a '::: %s' block under docs/reference/api/, "
                        "or exclude it in docs/hooks.py)", module, module)
    return files


_expanded: set[str] = set()


def on_pre_build(config: Any) -> None:
    _expanded.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_reference())
        _expanded.add(SETTINGS_MARKER)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
        _expanded.add(CLI_MARKER)
    return markdown


def on_post_build(config: Any) -> None:
    """A reference page that lost its marker would quietly lose the reference: say so."""
    for marker in sorted({SETTINGS_MARKER, CLI_MARKER} - _expanded):
        log.warning("no page has the marker %s: that reference is missing from the site", marker)


def escape(text: str) -> str:
    """Plain text (a help string, a description) as Markdown that shows it unchanged, also in a table cell."""
    text = text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "`*_[]|":
        text = text.replace(char, "\\" + char)
    return text


def code(text: str) -> str:
    """``text`` as inline code in a table cell."""
    return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;") + "</code>"


# --- settings ------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " | ".join(names)
    if origin is typing.Literal:
        return " | ".join(str(arg) for arg in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(str(member.value) for member in annotation)
    name = getattr(annotation, "__name__", str(annotation))
    return {"SecretStr": "secret", "Path": "path", "PosixPath": "path"}.get(name, name)


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value < 1e15 else repr(value)
    if isinstance(value, str) and value == "":
        return "empty"
    return str(value)


def _limits(field: Any) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤",
             "pattern": "matches"}
    parts = []
    for item in field.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{word} {value:,}" if isinstance(value, int) else f"{word} {value}")
    return ", ".join(parts)


def _sections(cls: type) -> dict[str, str]:
    """Field name -> the title of the ``# --- title ---`` comment above it in the class body."""
    sections: dict[str, str] = {}
    current = "General"
    for line in inspect.getsource(cls).splitlines():
        if match := re.match(r"^\s*# -+ (.+?) -+\s*$", line):
            current = match.group(1).strip()
        elif match := re.match(r"^    (\w+)\s*:", line):
            sections.setdefault(match.group(1), current)
    return sections


def settings_reference() -> str:
    from streams.settings import ENV_PREFIX, Settings

    sections = _sections(Settings)
    grouped: dict[str, list[str]] = {}
    for name, field in Settings.model_fields.items():
        variable = field.validation_alias if isinstance(field.validation_alias, str) else ENV_PREFIX + name.upper()
        description = escape(field.description or "")
        if limits := _limits(field):
            description = f"{description} ({escape(limits)})" if description else escape(limits)
        row = f"| {code(variable)} | {code(_type_name(field.annotation))} | {code(_default(field))} | {description} |"
        grouped.setdefault(sections.get(name, "General"), []).append(row)
    out = [f"{len(Settings.model_fields)} settings, generated from `streams.settings.Settings` when this site was built.", ""]
    for section, rows in grouped.items():
        out += [f"### {section[:1].upper()}{section[1:]}", "", "| variable | type | default | description |",
                "|---|---|---|---|", *rows, ""]
    return "\n".join(out)


# --- the command line ------------------------------------------------------------------------------


def cli_reference() -> str:
    import click

    from streams.cli import cli

    root = click.Context(cli, info_name="streams", **cli.context_settings)
    out: list[str] = []

    def document(command: click.Command, ctx: click.Context, depth: int) -> None:
        path = ctx.command_path
        if depth:
            out.append(f"{'#' * min(depth + 1, 6)} `{path}`")
            out.append("")
        out.extend(["```text", "Usage: " + path + " " + " ".join(command.collect_usage_pieces(ctx)), "```", ""])
        if command.help:
            help_text = inspect.cleandoc(command.help).split("\f")[0]
            for paragraph in help_text.split("\n\n"):
                if paragraph.startswith("\b\n"):  # click's "do not rewrap" block
                    out.extend(["```text", paragraph[2:], "```", ""])
                else:
                    out.extend([escape(" ".join(paragraph.split())), ""])
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if arguments:
            out.extend(["| argument | required | repeatable |", "|---|---|---|"])
            for argument in arguments:
                repeatable = "yes" if argument.nargs == -1 or argument.multiple else "no"
                out.append(f"| {code(argument.human_readable_name)} | {'yes' if argument.required else 'no'} | {repeatable} |")
            out.append("")
        help_option = command.get_help_option(ctx)  # every command takes -h/--help: said once, at the top
        options = [record for p in command.get_params(ctx)
                   if p is not help_option and (record := p.get_help_record(ctx)) is not None]
        if options:
            out.extend(["| option | meaning |", "|---|---|"])
            out.extend(f"| {code(names)} | {escape(' '.join(text.split()))} |" for names, text in options)
            out.append("")
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    document(sub, click.Context(sub, info_name=name, parent=ctx, **sub.context_settings), depth + 1)

    document(cli, root, 0)
    return "\n".join(out)


if __name__ == "__main__":  # print both references: python docs/hooks.py
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(settings_reference())
    print(cli_reference())
