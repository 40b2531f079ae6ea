"""Committed JSON Schemas of message types (``schemas/``) and the compatibility gate.

Every registered version of a type is a contract once released: its JSON Schema
(generated from the pydantic model) is committed as ``schemas/<message type>/v<N>.json``.
:func:`check` compares the registry with those files:

* the current version's file must exist and match the model (a released version does
  not change: a change is a new version);
* a version not committed yet must be compatible with the previous committed one under the
  type's level (:class:`~streams.messages.registry.Compatibility`); ``BACKWARD`` problems
  count as handled when every step between the two versions has an upcaster;
* consecutive committed versions must be compatible too.

Each problem is one sentence (:mod:`streams.messages.compatibility`). :func:`write` adds
the files of versions that pass. ``streams schema check`` / ``streams schema write`` run
them; ``make test`` runs the check on the reference app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.messages.compatibility import breaking_changes
from streams.messages.registry import Compatibility, MessageRegistry, MessageSpec

DEFAULT_DIR = Path("schemas")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(spec: MessageSpec) -> dict[str, Any]:
    """The JSON Schema of ``spec``'s payload (pydantic's, validation mode), with the type's
    name, version, kind and compatibility level under ``x-streams``."""
    schema = spec.model.model_json_schema(mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": f"urn:streams:message:{spec.message_type}:v{spec.version}",
            "x-streams": {"message_type": spec.message_type, "version": spec.version, "kind": spec.kind.value,
                          "compatibility": spec.compatibility.value},
            **schema}


def schema_path(directory: Path, message_type: str, version: int) -> Path:
    return directory / message_type / f"v{version}.json"


def committed(directory: Path, message_type: str) -> dict[int, dict[str, Any]]:
    """The committed schemas of ``message_type``: version → schema."""
    out: dict[int, dict[str, Any]] = {}
    folder = directory / message_type
    if not folder.is_dir():
        return out
    for path in folder.glob("v*.json"):
        version = path.stem[1:]
        if version.isdigit():
            out[int(version)] = json.loads(path.read_text())
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


@dataclass
class CheckResult:
    """What :func:`check` found: ``problems`` fail it; ``notes`` are for information;
    ``writable`` are the (type, version) whose file :func:`write` may add."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    writable: list[MessageSpec] = field(default_factory=list)
    types: int = 0


def _comparable(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "x-streams"}


def _upcast_covered(registry: MessageRegistry, spec: MessageSpec, old: int, new: int) -> bool:
    steps = registry.upcasters(spec.message_type)
    return all(v in steps for v in range(old, new))


def _breaking(registry: MessageRegistry, spec: MessageSpec, old: dict, old_version: int, new: dict,
              new_version: int) -> tuple[list[str], list[str]]:
    """(breaking sentences, sentences an upcaster handles)."""
    sentences = breaking_changes(spec.message_type, _comparable(old), old_version, _comparable(new), new_version,
                                 spec.compatibility)
    if new_version > old_version and _upcast_covered(registry, spec, old_version, new_version):
        handled = [s for s in sentences if "(BACKWARD)" in s]
        return [s for s in sentences if s not in handled], handled
    return sentences, []


def check(registry: MessageRegistry, directory: Path = DEFAULT_DIR) -> CheckResult:
    """Compare every registered type with its committed schemas (see the module's docstring)."""
    result = CheckResult()
    for message_type in registry.types():
        spec = registry.spec(message_type)
        result.types += 1
        current = json_schema(spec)
        history = committed(directory, message_type)
        where = schema_path(directory, message_type, spec.version)
        for older, newer in zip(sorted(history), sorted(history)[1:], strict=False):
            broken, _ = _breaking(registry, spec, history[older], older, history[newer], newer)
            result.problems += [f"{s} (committed schemas)" for s in broken]
        if spec.version in history:
            if _comparable(history[spec.version]) != _comparable(current):
                broken = breaking_changes(message_type, _comparable(history[spec.version]), spec.version,
                                          _comparable(current), spec.version,
                                          spec.compatibility if spec.compatibility is not Compatibility.NONE
                                          else Compatibility.FULL)
                result.problems.append(
                    f"{message_type} v{spec.version}: the model no longer matches {where}, and a released version "
                    f"does not change: register the change as version {spec.version + 1}"
                    + (" (with an upcaster if its messages need one)" if broken else ""))
                result.problems += broken
            continue
        earlier = [v for v in history if v < spec.version]
        if not earlier:
            result.problems.append(f"{message_type} v{spec.version}: no committed schema: run `streams schema write` "
                                   f"and commit {where}")
            if not history:
                result.writable.append(spec)
            continue
        previous = max(earlier)
        broken, handled = _breaking(registry, spec, history[previous], previous, current, spec.version)
        result.problems += broken
        result.notes += [f"{s} (handled by the upcaster)" for s in handled]
        if not broken:
            result.problems.append(f"{message_type} v{spec.version}: compatible with v{previous} but not committed: "
                                   f"run `streams schema write` and commit {where}")
            result.writable.append(spec)
    for folder in sorted(p for p in directory.glob("*") if p.is_dir()) if directory.is_dir() else []:
        if folder.name not in registry:
            result.notes.append(f"{folder} holds schemas of {folder.name!r}, which is not registered (removed?)")
    return result


def write(registry: MessageRegistry, directory: Path = DEFAULT_DIR) -> tuple[list[Path], CheckResult]:
    """Add the schema files of the versions :func:`check` finds compatible and not committed;
    returns the files written and the check (whose other problems remain)."""
    result = check(registry, directory)
    written = []
    for spec in result.writable:
        path = schema_path(directory, spec.message_type, spec.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(json_schema(spec)))
        written.append(path)
    return written, result
