"""The message ids of imported rows: deterministic, and the same for a row that comes again.

A row's id must not depend on where the row sits in the file, so that a
partner who fixes three bad lines and uploads the file again gets the same
ids for every line that was good (and the importer publishes only the rest).
Two schemes, chosen per import (``streams batch import --id-columns``):

* **content** (the default): uuid5 of the source, the file **name**, the row's
  content (its columns and values, NULLs left out, independent of the format,
  delimiter, quoting or line ends) and its occurrence — the n-th row with that
  exact content in the file gets n, so identical rows in one file stay
  distinct. The same name with fixed lines keeps the ids of the unchanged rows;
  a line moving (a row added or removed above it, a value spanning more lines)
  changes nothing. A file under a **new name** gets new ids: use id columns
  when a partner's corrections come under new names.
* **id columns**: uuid5 of the source and the values of the declared columns
  (e.g. ``order_id``), in any file of the source. The columns must identify the
  message: a row whose id columns were published before — from any file of the
  source — is not published again, even if other columns changed (declare a
  version or timestamp column too if a later file may carry a newer state of a
  record). In one file, an id repeated, or an id column empty, is a bad line.

Ids never include the line number or the file's checksum.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

#: namespace of the message ids of imported rows
ID_NAMESPACE = uuid.UUID("5b0f5a0e-3c1d-4a51-9e57-0b6a7c2d9e11")
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_string = encode_basestring  # a str as JSON text, not ASCII-escaped (what _CANONICAL writes for one)


def uuid5(name: str, *, prefix: Any = None) -> tuple[str, int]:
    """``str(uuid.uuid5(ID_NAMESPACE, name))`` and 64 bits of it, at a fraction of the cost (a row each).

    ``prefix``: a sha1 that already took ``ID_NAMESPACE.bytes`` and the start of the name
    (:func:`sha1_of`); ``name`` is then the rest."""
    digest = (prefix or _NAMESPACE_SHA1).copy()
    digest.update(name.encode())
    value = int.from_bytes(digest.digest()[:16], "big")
    value = (value & _CLEAR_VERSION) | _VERSION_5_RFC_4122
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", value >> 64


def sha1_of(start: str) -> Any:
    """The sha1 of ``ID_NAMESPACE.bytes`` and ``start``, to pass to :func:`uuid5` as ``prefix``."""
    return hashlib.sha1(ID_NAMESPACE.bytes + start.encode())


_NAMESPACE_SHA1 = hashlib.sha1(ID_NAMESPACE.bytes)
#: the version nibble (byte 6) and the variant bits (byte 8) of a 128-bit uuid, cleared / set to 5 and RFC 4122
_CLEAR_VERSION = ~((0xF0 << 72) | (0xC0 << 56)) & ((1 << 128) - 1)
_VERSION_5_RFC_4122 = (0x50 << 72) | (0x80 << 56)


def canonical(row: Mapping[str, str | None]) -> str:
    """The row's content as the ids see it: a JSON object of its non-null columns, keys sorted,
    compact, not ASCII-escaped (``_CANONICAL``'s text, built faster for a row of text values)."""
    try:
        return "{" + ",".join([_string(k) + ":" + _string(v) for k, v in sorted(row.items()) if v is not None]) + "}"
    except TypeError:  # a value that is not text: the encoder says how it is written
        return _CANONICAL.encode({k: v for k, v in row.items() if v is not None})


class RowIdError(ValueError):
    """A row that cannot get an id (an id column empty, an id repeated in the file)."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


class RowIds:
    """Gives the rows of one file their ids, in file order (see the module docstring)."""

    def __init__(self, source: str, file: str, id_columns: Sequence[str] = ()) -> None:
        self.source, self.file, self.id_columns = source, file, tuple(id_columns)
        self._prefix = (json.dumps(["columns", source, list(self.id_columns)], ensure_ascii=False) if self.id_columns
                        else json.dumps(["content", source, file], ensure_ascii=False))
        # 64 bits of the first id of each content met so far; contents met again → occurrences so far; for id
        # columns, 64 bits of each id → its line.
        # Two different contents sharing those bits (about 1 in 10^7 files of a million rows) only make the
        # second one's id the "occurrence 2" id: still unique, still the same on every run.
        self._sha1 = sha1_of(self._prefix)
        self._once: set[int] = set()
        self._again: dict[int, int] = {}
        self._lines: dict[int, int] = {}

    def __call__(self, line: int, row: Mapping[str, str | None]) -> str:
        """The id of the row starting at ``line``; :class:`RowIdError` if it cannot have one."""
        if self.id_columns:
            return self._by_columns(line, row)
        content = canonical(row)
        first, bits = uuid5(content, prefix=self._sha1)
        if bits not in self._once:
            self._once.add(bits)
            return first
        occurrence = self._again.get(bits, 1) + 1
        self._again[bits] = occurrence
        return uuid5(f"{self._prefix}{content}\x00{occurrence}")[0]

    def _by_columns(self, line: int, row: Mapping[str, str | None]) -> str:
        values = []
        for column in self.id_columns:
            value = row.get(column)
            if value is None or value == "":
                raise RowIdError(column, f"id column {column!r} is empty")
            values.append(value)
        key, bits = uuid5(self._prefix + _CANONICAL.encode(values))
        earlier = self._lines.setdefault(bits, line)
        if earlier != line:
            raise RowIdError(self.id_columns[0], f"the id ({', '.join(self.id_columns)}) of line {earlier} again")
        return key
