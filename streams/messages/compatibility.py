"""Whether one JSON Schema version reads what another wrote: Confluent's compatibility rules.

A **reader** schema reads a message that a **writer** schema validated. The reader
refuses some such messages when, at any field (``payload.a.b``):

* it requires a field the writer does not have, or has as optional;
* the writer has a field the reader does not know, and the reader refuses unknown
  fields (``additionalProperties: false``, pydantic's ``extra="forbid"``);
* its type is narrower: a type the writer allows that the reader does not (``integer``
  for ``number``, ``string`` no longer ``null``), a tighter bound (``maxLength``,
  ``minimum`` ...), fewer ``enum`` values, a ``format`` or ``pattern`` the writer did
  not have.

``BACKWARD`` checks the new version as the reader of the previous version's messages;
``FORWARD`` the previous version as the reader of the new one's; ``FULL`` both. Each
problem becomes one sentence (:func:`breaking_changes`). The comparison is
conservative: what it cannot prove compatible (two different patterns) it reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from streams.messages.registry import Compatibility

#: bounds where a larger reader value is narrower, and where a smaller one is
_LOWER = ("minLength", "minItems", "minimum", "exclusiveMinimum", "minProperties")
_UPPER = ("maxLength", "maxItems", "maximum", "exclusiveMaximum", "maxProperties")
_NAMES = {"minLength": "min length", "maxLength": "max length", "minItems": "min items", "maxItems": "max items",
          "minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<",
          "minProperties": "min fields", "maxProperties": "max fields"}


@dataclass(frozen=True)
class Problem:
    """A message the writer allows and the reader refuses, at ``path``."""

    path: str
    kind: str  # "missing" | "optional" | "unknown" | "narrower"
    reader: str = ""
    writer: str = ""


def breaking_changes(message_type: str, old: dict, old_version: int, new: dict, new_version: int,
                     level: Compatibility) -> list[str]:
    """One sentence per breaking change from ``old`` to ``new`` under ``level``."""
    out: list[str] = []
    head = f"{message_type} v{new_version}"
    if level in (Compatibility.BACKWARD, Compatibility.FULL):
        for p in reader_refuses(new, old):
            out.append(f"{head} (BACKWARD): {_backward(p, old_version, new_version)}")
    if level in (Compatibility.FORWARD, Compatibility.FULL):
        for p in reader_refuses(old, new):
            out.append(f"{head} (FORWARD): {_forward(p, old_version, new_version)}")
    return out


def _backward(p: Problem, old: int, new: int) -> str:
    if p.kind == "missing":
        return f"required field '{p.path}' added without a default: v{old} messages do not have it"
    if p.kind == "optional":
        return f"field '{p.path}' became required: v{old} messages may lack it"
    if p.kind == "unknown":
        return f"field '{p.path}' removed while v{new} refuses unknown fields: v{old} messages carry it"
    return f"field '{p.path}' type narrowed from {p.writer} to {p.reader}: v{old} messages may not fit"


def _forward(p: Problem, old: int, new: int) -> str:
    if p.kind == "missing":
        return f"field '{p.path}' removed: v{old} consumers require it"
    if p.kind == "optional":
        return f"field '{p.path}' became optional: v{old} consumers require it"
    if p.kind == "unknown":
        return f"field '{p.path}' added while v{old} refuses unknown fields"
    return f"field '{p.path}' type widened from {p.reader} to {p.writer}: v{old} consumers refuse the new values"


def reader_refuses(reader: dict, writer: dict) -> list[Problem]:
    """What messages valid under ``writer`` the ``reader`` refuses (empty: it reads them all)."""
    return _compare(_Schema(reader), reader, _Schema(writer), writer, "payload")


class _Schema:
    """A document with its ``$defs`` (for ``$ref``)."""

    def __init__(self, root: dict) -> None:
        self.root = root

    def resolve(self, node: Any) -> dict:
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 50:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                return {}
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            extra = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **extra}
            seen += 1
        return node if isinstance(node, dict) else {}


def _branches(doc: _Schema, node: dict) -> list[dict]:
    node = doc.resolve(node)
    for key in ("anyOf", "oneOf"):
        if key in node:
            rest = {k: v for k, v in node.items() if k not in (key, "default", "title", "description")}
            return [b for branch in node[key] for b in _branches(doc, {**rest, **branch})]
    return [node]


def _compare(rdoc: _Schema, reader: dict, wdoc: _Schema, writer: dict, path: str) -> list[Problem]:
    """Problems of ``reader`` reading what ``writer`` allows at ``path`` (unions branch by branch)."""
    rbranches, wbranches = _branches(rdoc, reader), _branches(wdoc, writer)
    problems: list[Problem] = []
    for w in wbranches:
        results = [_compare_one(rdoc, r, wdoc, w, path) for r in rbranches]
        if any(not result for result in results):
            continue  # some reader branch takes every value of this writer branch
        matching = [result for r, result in zip(rbranches, results, strict=True) if _overlaps(r, w)]
        problems.extend(matching[0] if len(matching) == 1 else [Problem(path, "narrower")])
    out: list[Problem] = []
    for p in problems:
        if p.kind == "narrower" and p.path == path and not p.reader:
            p = Problem(path, "narrower", describe(rdoc, reader), describe(wdoc, writer))
        if p not in out:
            out.append(p)
    return out


def _overlaps(r: dict, w: dict) -> bool:
    rtypes, wtypes = _types(r), _types(w)
    if rtypes is None or wtypes is None:
        return True
    widen = {"integer"} if "number" in rtypes else set()
    return bool((rtypes | widen) & wtypes)


def _types(node: dict) -> set[str] | None:
    t = node.get("type")
    if t is None:
        if "properties" in node:
            return {"object"}
        if "enum" in node or "const" in node:
            return None
        return None
    return set(t) if isinstance(t, list) else {t}


def _compare_one(rdoc: _Schema, r: dict, wdoc: _Schema, w: dict, path: str) -> list[Problem]:
    here = [Problem(path, "narrower")]
    if not {k for k in r if k not in ("title", "description", "default", "examples")}:
        return []  # the reader takes anything
    if "enum" in w or "const" in w:  # the writer's values are known: check each against the reader
        values = w.get("enum", [w.get("const")])
        return [] if all(_fits(r, v) for v in values) else here
    rtypes, wtypes = _types(r), _types(w)
    if rtypes is not None:
        if wtypes is None:
            return here
        else:
            for t in wtypes:
                if t not in rtypes and not (t == "integer" and "number" in rtypes):
                    return here
    if "enum" in r or "const" in r:
        return here  # the writer allows values beyond the reader's list
    for key in ("format", "pattern"):
        if key in r and r.get(key) != w.get(key):
            return here
    for key in _LOWER:
        if key in r and (key not in w or w[key] < r[key]):
            return here
    for key in _UPPER:
        if key in r and (key not in w or w[key] > r[key]):
            return here
    problems: list[Problem] = []
    if "items" in r and isinstance(r["items"], dict):
        problems += _compare(rdoc, r["items"], wdoc, w.get("items", {}) if isinstance(w.get("items"), dict) else {},
                             f"{path}[]")
    if "properties" in r or "properties" in w or r.get("additionalProperties") is False:
        problems += _compare_object(rdoc, r, wdoc, w, path)
    return problems


def _compare_object(rdoc: _Schema, r: dict, wdoc: _Schema, w: dict, path: str) -> list[Problem]:
    rprops, wprops = r.get("properties", {}), w.get("properties", {})
    rreq, wreq = set(r.get("required", [])), set(w.get("required", []))
    problems: list[Problem] = []
    for name in rprops:
        sub = f"{path}.{name}" if path else name
        if name not in wprops:
            if name in rreq:
                problems.append(Problem(sub, "missing"))
            continue
        if name in rreq and name not in wreq:
            problems.append(Problem(sub, "optional"))
        problems += _compare(rdoc, rprops[name], wdoc, wprops[name], sub)
    if r.get("additionalProperties") is False:
        for name in wprops:
            if name not in rprops:
                problems.append(Problem(f"{path}.{name}" if path else name, "unknown"))
    return problems


def _fits(r: dict, value: Any) -> bool:
    """Whether the scalar ``value`` is valid under the reader branch ``r`` (the keywords compared here)."""
    rtypes = _types(r)
    kind = _json_type(value)
    if rtypes is not None and kind not in rtypes and not (kind == "integer" and "number" in rtypes):
        return False
    if ("enum" in r or "const" in r) and value not in r.get("enum", [r.get("const")]):
        return False
    if isinstance(value, str):
        if len(value) < r.get("minLength", 0) or len(value) > r.get("maxLength", len(value)):
            return False
        if "pattern" in r and re.search(r["pattern"], value) is None:
            return False
        return "format" not in r  # not checked here: a format the writer's values may not meet
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = (("minimum", lambda b: value >= b), ("exclusiveMinimum", lambda b: value > b),
                  ("maximum", lambda b: value <= b), ("exclusiveMaximum", lambda b: value < b))
        return all(test(r[key]) for key, test in bounds if key in r)
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def describe(doc: _Schema, node: dict) -> str:
    """A schema in a few words: ``string (max length 3) or null``."""
    parts = []
    for branch in _branches(doc, node):
        if "enum" in branch or "const" in branch:
            values = branch.get("enum", [branch.get("const")])
            parts.append("one of " + ", ".join(repr(v) for v in values[:6]) + (" ..." if len(values) > 6 else ""))
            continue
        types = _types(branch)
        text = " or ".join(sorted(types)) if types else "any"
        bounds = [f"{_NAMES[k]} {branch[k]}" for k in (*_LOWER, *_UPPER) if k in branch]
        bounds += [f"{k} {branch[k]}" for k in ("format", "pattern") if k in branch]
        parts.append(f"{text} ({', '.join(bounds)})" if bounds else text)
    return " or ".join(dict.fromkeys(parts))
