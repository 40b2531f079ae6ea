"""Export: rows past a stored watermark → a file on the SFTP server, then its manifest, then the watermark.

One run (:func:`export_once`):

1. reads the export's watermark (``streams_batch_watermarks``). If a file was
   pending (a crash after it was planned), the same range is exported again to
   the same name; otherwise the new range is ``(watermark, max(column)]`` and is
   recorded as pending with its file name before anything is written;
2. writes the range's rows, ordered by the column, to a local file;
3. uploads it as ``<file>.part`` and renames it (the server never shows half a file);
4. uploads the manifest (rows, size, sha256, watermark range) the same way;
5. only then advances the watermark.

A crash before step 5 re-exports the same rows to the same file name on the
next run (the upload replaces the earlier one): rows are never skipped and the
file is the same file. The watermark column must grow in commit order (a
``bigserial`` written by one writer, a commit timestamp); rows that appear later
with a smaller value than the watermark are not exported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from streams.batch import ledger
from streams.batch.formats import FormatOptions, Writer
from streams.batch.manifest import Manifest, file_digest
from streams.batch.remote import Remote
from streams.settings import Settings

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ExportSpec:
    """What to export: a table (or a query) with an increasing column, in a format."""

    name: str
    column: str
    table: str | None = None
    query: str | None = None
    options: FormatOptions = field(default_factory=FormatOptions)

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError("give a table or a query (one of them)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", self.name):
            raise ValueError(f"export name {self.name!r}: letters, digits, '_', '.', '-' only")

    def source(self) -> sql.Composable:
        if self.table is not None:
            return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*self.table.split(".")))
        return sql.SQL(self.query or "")  # an operator's query, as given


@dataclass(frozen=True)
class ExportResult:
    """One run's outcome (``file`` None: nothing new past the watermark)."""

    name: str
    file: str | None
    rows: int
    watermark_from: str | None
    watermark_to: str | None
    resumed: bool = False


def file_name(spec: ExportSpec, low: str | None, high: str) -> str:
    """Deterministic from the range: a re-export of the same rows gets the same name."""
    def part(v: str | None) -> str:
        return "start" if v is None else _SAFE.sub("_", v)[:40]
    return f"{spec.name}-{part(low)}-{part(high)}.{spec.options.extension}"


def _text(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


async def export_once(settings: Settings, spec: ExportSpec, remote: Remote, *,
                      progress: Callable[[int, int], None] | None = None,
                      after_upload: Callable[[str], None] | None = None) -> ExportResult:
    """Export the rows past the watermark as one file (see the module docstring).
    ``progress(rows_done, rows_total)`` is called while writing; ``after_upload(name)``
    between the data upload and the manifest (tests put a crash there). The database
    work is synchronous: a command-line process has nothing else to do meanwhile."""
    workdir = settings.home_path / "batch" / "export"
    workdir.mkdir(parents=True, exist_ok=True)
    source = spec.source()
    col = sql.Identifier(spec.column)
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        ledger.migrate(conn)
        state = ledger.watermark(conn, spec.name, spec.column)
        low = state.watermark
        where = sql.SQL("WHERE {col} > %s").format(col=col) if low is not None else sql.SQL("")
        params: tuple = (low,) if low is not None else ()
        resumed = state.pending_to is not None
        if resumed:
            high, name = state.pending_to, state.pending_file
        else:
            top = conn.execute(sql.SQL("SELECT max({col})::text FROM ({src}) AS q {where}").format(
                col=col, src=source, where=where), params).fetchone()
            if top is None or top[0] is None:
                return ExportResult(spec.name, None, 0, low, low)
            high = top[0]
            name = file_name(spec, low, high)
            ledger.set_pending(conn, spec.name, high, name)
        assert high is not None and name is not None
        bounds = sql.SQL("{where} {joiner} {col} <= %s").format(
            where=where, joiner=sql.SQL("AND" if low is not None else "WHERE"), col=col)
        total = conn.execute(sql.SQL("SELECT count(*) FROM ({src}) AS q {bounds}").format(
            src=source, bounds=bounds), (*params, high)).fetchone()
        local = workdir / name
        rows = _write(conn, source, bounds, (*params, high), col, local, spec.options, progress,
                      total[0] if total else 0)
        size, sha256 = file_digest(local)
        manifest = Manifest(file=name, format=spec.options.format, columns=rows[1], rows=rows[0], size=size,
                            sha256=sha256, source=spec.name, watermark_column=spec.column, watermark_from=low,
                            watermark_to=high, delimiter=spec.options.delimiter, quoting=spec.options.quoting)
        await remote.upload(local, name)
        if after_upload is not None:
            after_upload(name)
        await remote.write(manifest.name, manifest.to_bytes())
        ledger.advance(conn, spec.name, high, rows[0])
        local.unlink(missing_ok=True)
    return ExportResult(spec.name, name, rows[0], low, high, resumed)


def _write(conn: psycopg.Connection, source: sql.Composable, bounds: sql.Composable, params: tuple,
           col: sql.Identifier, local: Path, options: FormatOptions,
           progress: Callable[[int, int], None] | None, total: int) -> tuple[int, list[str]]:
    query = sql.SQL("SELECT * FROM ({src}) AS q {bounds} ORDER BY {col}").format(src=source, bounds=bounds, col=col)
    with conn.transaction(), conn.cursor(name="streams_batch_export") as cur, \
            open(local, "w", encoding="utf-8", newline="") as out:
        cur.itersize = 5000
        cur.execute(query, params)
        columns = [d.name for d in cur.description or []]
        writer = Writer(out, columns, options)
        for record in cur:
            writer.write({c: _text(v) for c, v in zip(columns, record, strict=True)})
            if progress is not None and writer.rows % 5000 == 0:
                progress(writer.rows, total)
        if progress is not None:
            progress(writer.rows, total)
        return writer.rows, columns


async def run_export(settings: Settings, spec: ExportSpec, **kwargs: Any) -> ExportResult:
    """Connect to the SFTP server and run :func:`export_once`."""
    from streams.batch.remote import connect

    async with connect(settings) as remote:
        return await export_once(settings, spec, remote, **kwargs)
