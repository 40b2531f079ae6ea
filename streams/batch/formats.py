"""The three file formats of batch transfer, written and parsed with per-line errors.

* ``csv`` — delimited text with a header row (RFC 4180 quoting: a field with the
  delimiter, a quote or a newline is quoted, quotes doubled); the delimiter and
  the quoting mode are options. A quoted field may span lines: a row's line
  number is the line it starts on.
* ``kv`` — ``key=value`` lines (logfmt): one row per line, pairs separated by a
  space; a value with a space, ``=``, a quote, a backslash or a control
  character is written in double quotes with JSON escapes (``\\n``, ``\\"``...).
* ``jsonl`` — one JSON object per line (newlines inside strings are escaped by JSON).

Every value is text in the file (``None`` becomes an empty field in csv, is
left out in kv, and is ``null`` in jsonl). Files are UTF-8; :func:`read_lines`
drops a leading byte-order mark (Excel's "CSV UTF-8" and Windows Notepad write
one) and :func:`starts_with_bom` tells whether there was one. Parsing never
raises on bad input: :func:`parse` yields :class:`ParsedLine` items, each a row
or a :class:`LineError` with the line number, the column (field name or 1-based
character position) and what is wrong; an error that concerns the whole file (a
csv header unlike the manifest's columns) is marked ``whole_file``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TextIO

FORMATS = ("csv", "kv", "jsonl")
EXTENSIONS = {"csv": "csv", "kv": "kv", "jsonl": "jsonl"}
QUOTING: dict[str, Literal[0, 1, 2, 3]] = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL,
                                           "nonnumeric": csv.QUOTE_NONNUMERIC}
#: the UTF-8 byte-order mark some tools write at the start of a file
UTF8_BOM = b"\xef\xbb\xbf"
#: delimiters tried when a csv header does not split into the manifest's columns (to say which one would)
COMMON_DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class FormatOptions:
    """How a file is written and read (recorded in its manifest)."""

    format: str = "csv"
    delimiter: str = ","
    quoting: str = "minimal"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r} (choose from {', '.join(FORMATS)})")
        if len(self.delimiter) != 1 or self.delimiter in "\"\r\n":
            raise ValueError(f"the delimiter must be one character other than a quote or newline, "
                             f"got {self.delimiter!r}")
        if self.quoting not in QUOTING:
            raise ValueError(f"unknown quoting {self.quoting!r} (choose from {', '.join(QUOTING)})")

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


@dataclass(frozen=True)
class LineError:
    """What is wrong with one line of a file."""

    line: int
    column: str
    message: str
    #: no row of the file can be read (e.g. its csv header is not the manifest's columns)
    whole_file: bool = False

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class ParsedLine(NamedTuple):
    """One row of a file (``row``) or why it could not be read (``error``). A named tuple: one
    is made per row, at a third of a frozen dataclass's cost."""

    line: int
    row: dict[str, str | None] | None = None
    error: LineError | None = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


# --- writing ----------------------------------------------------------------------
class Writer:
    """Writes rows (mappings of column → value) to a text stream in one format."""

    def __init__(self, out: TextIO, columns: list[str], options: FormatOptions) -> None:
        self.out, self.columns, self.options = out, columns, options
        self.rows = 0
        if options.format == "csv":
            self._csv = csv.writer(out, delimiter=options.delimiter, quoting=QUOTING[options.quoting],
                                   lineterminator="\r\n")  # RFC 4180; also makes a lone \r get quoted
            self._csv.writerow(columns)

    def write(self, row: dict[str, Any]) -> None:
        values = [_text(row.get(c)) for c in self.columns]
        if self.options.format == "csv":
            self._csv.writerow(["" if v is None else v for v in values])
        elif self.options.format == "kv":
            self.out.write(" ".join(f"{c}={_kv_value(v)}" for c, v in zip(self.columns, values, strict=True)
                                    if v is not None) + "\n")
        else:
            self.out.write(json.dumps(dict(zip(self.columns, values, strict=True)), ensure_ascii=False) + "\n")
        self.rows += 1


_KV_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+@,;")


def _kv_value(value: str) -> str:
    if value and all(ch in _KV_PLAIN or (ord(ch) > 127 and ch.isprintable() and not ch.isspace())
                     for ch in value):
        return value
    return json.dumps(value, ensure_ascii=False)


# --- reading ----------------------------------------------------------------------
def starts_with_bom(path: Path) -> bool:
    """True if the file starts with the UTF-8 byte-order mark."""
    with open(path, "rb") as fh:
        return fh.read(len(UTF8_BOM)) == UTF8_BOM


def read_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file with their newlines, as :func:`parse` takes them; a leading
    byte-order mark is dropped. Raises ``UnicodeDecodeError`` on bytes that are not UTF-8."""
    with open(path, encoding="utf-8-sig", newline="", errors="strict") as fh:
        yield from fh


# --- parsing ----------------------------------------------------------------------
def parse(lines: Iterable[str], options: FormatOptions, columns: list[str] | None = None) -> Iterator[ParsedLine]:
    """Rows of a file given as lines (with their newlines); bad lines come out as errors.

    ``columns`` (from the manifest) is checked against a csv header, and bounds
    the keys of kv and jsonl rows (an unknown key is an error)."""
    if options.format == "csv":
        yield from _parse_csv(lines, options, columns)
    elif options.format == "kv":
        yield from _parse_lines(lines, _parse_kv_line, columns)
    else:
        yield from _parse_lines(lines, _parse_json_line, columns)


def _parse_csv(lines: Iterable[str], options: FormatOptions, columns: list[str] | None) -> Iterator[ParsedLine]:
    reader = csv.reader(iter(lines), delimiter=options.delimiter, strict=True)
    start = 1
    try:
        header = next(reader)
    except StopIteration:
        yield ParsedLine(1, error=LineError(1, "-", "empty file: no header row", whole_file=True))
        return
    except csv.Error as exc:
        yield ParsedLine(1, error=LineError(1, "-", f"unreadable header: {exc}", whole_file=True))
        return
    if columns is not None and header != columns:
        yield ParsedLine(1, error=LineError(1, "-", _header_mismatch(header, columns, options.delimiter),
                                            whole_file=True))
        return
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield ParsedLine(start, error=LineError(start, "-", f"malformed csv: {exc}"))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if fields == []:
            continue  # a blank line
        if len(fields) != len(header):
            column = header[len(fields)] if len(fields) < len(header) else str(len(header) + 1)
            yield ParsedLine(line, error=LineError(line, column, f"{len(fields)} fields, the header has "
                                                                 f"{len(header)}"))
            continue
        yield ParsedLine(line, row={h: (v if v != "" else None) for h, v in zip(header, fields, strict=True)})


def _header_mismatch(header: list[str], columns: list[str], delimiter: str) -> str:
    """Why a csv header is not the manifest's columns, naming the delimiter that would split it into them."""
    why = f"header {header} is not the manifest's columns {columns}"
    line = delimiter.join(header)
    for other in COMMON_DELIMITERS:
        if other != delimiter and next(csv.reader([line], delimiter=other), None) == columns:
            return f"{why}: it splits into them on {other!r}, the manifest's delimiter is {delimiter!r}"
    if header and header[0].startswith("\ufeff"):
        return f"{why}: its first name starts with a byte-order mark"
    return why


def _parse_lines(lines: Iterable[str], parse_line, columns: list[str] | None) -> Iterator[ParsedLine]:
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            row = parse_line(text)
        except _BadLine as exc:
            yield ParsedLine(number, error=LineError(number, exc.column, exc.message))
            continue
        if columns is not None:
            unknown = [k for k in row if k not in columns]
            if unknown:
                yield ParsedLine(number, error=LineError(number, unknown[0], f"unknown column {unknown[0]!r}"))
                continue
        yield ParsedLine(number, row=row)


class _BadLine(Exception):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


def _parse_json_line(text: str) -> dict[str, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadLine(str(exc.colno), f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise _BadLine("1", f"a JSON object is expected, got {type(value).__name__}")
    return {str(k): _text(v) for k, v in value.items()}


def _parse_kv_line(text: str) -> dict[str, str | None]:
    row: dict[str, str | None] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] not in "= ":
            i += 1
        key = text[start:i]
        if not key:
            raise _BadLine(str(start + 1), "a pair without a key")
        if i >= n or text[i] != "=":
            raise _BadLine(str(i + 1), f"{key!r} has no '=value'")
        i += 1
        if i < n and text[i] == '"':
            try:
                value, end = json.JSONDecoder().raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise _BadLine(str(exc.pos + 1), f"bad quoted value of {key!r}: {exc.msg}") from None
            if not isinstance(value, str):
                raise _BadLine(str(i + 1), f"bad quoted value of {key!r}")
            i = end
            if i < n and text[i] != " ":
                raise _BadLine(str(i + 1), f"text after the quoted value of {key!r}")
        else:
            start = i
            while i < n and text[i] != " ":
                i += 1
            value = text[start:i]
            if '"' in value:
                raise _BadLine(str(start + 1), f"stray quote in the value of {key!r}")
        if key in row:
            raise _BadLine(key, f"{key!r} appears twice")
        row[key] = value
    return row


def render(rows: Iterable[dict[str, Any]], columns: list[str], options: FormatOptions) -> str:
    """A whole file as text (tests and small exports)."""
    out = io.StringIO()
    writer = Writer(out, columns, options)
    for row in rows:
        writer.write(row)
    return out.getvalue()
