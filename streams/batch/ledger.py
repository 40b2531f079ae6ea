"""What batch transfer remembers in PostgreSQL: export watermarks, the import ledger and the ids
of the rows an import published (so that a row that comes again is not published again)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams_batch_watermarks (
    name          text        PRIMARY KEY,
    column_name   text        NOT NULL,
    watermark     text,
    pending_to    text,
    pending_file  text,
    files         integer     NOT NULL DEFAULT 0,
    rows          bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS streams_batch_imports (
    source        text        NOT NULL,
    file          text        NOT NULL,
    sha256        text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('importing', 'done', 'failed', 'rejected')),
    rows          integer,
    bad_rows      integer,
    published     integer,
    detail        text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    attempts      integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (source, file, sha256)
);
ALTER TABLE streams_batch_imports ADD COLUMN IF NOT EXISTS already_published integer;
CREATE TABLE IF NOT EXISTS streams_batch_published (
    source        text        NOT NULL,
    message_id    uuid        NOT NULL,
    file          text        NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, message_id)
);
CREATE INDEX IF NOT EXISTS streams_batch_published_age ON streams_batch_published (source, published_at);
"""


def migrate(conn: psycopg.Connection) -> None:
    """Create the tables (idempotent)."""
    with conn.transaction():
        conn.execute(SCHEMA)


@dataclass(frozen=True)
class Watermark:
    """Where an export stands: rows up to ``watermark`` are on the server; ``pending_to`` is
    a file being written (resumed with the same rows and name after a crash)."""

    name: str
    column_name: str
    watermark: str | None
    pending_to: str | None
    pending_file: str | None
    files: int
    rows: int
    updated_at: datetime


def watermark(conn: psycopg.Connection, name: str, column: str) -> Watermark:
    conn.execute("INSERT INTO streams_batch_watermarks (name, column_name) VALUES (%s, %s) "
                 "ON CONFLICT (name) DO NOTHING", (name, column))
    row = conn.execute("SELECT name, column_name, watermark, pending_to, pending_file, files, rows, updated_at "
                       "FROM streams_batch_watermarks WHERE name = %s", (name,)).fetchone()
    assert row is not None
    if row[1] != column:
        raise ValueError(f"export {name!r} runs on column {row[1]!r}, not {column!r} (pick another name)")
    return Watermark(*row)


def set_pending(conn: psycopg.Connection, name: str, pending_to: str, pending_file: str) -> None:
    conn.execute("UPDATE streams_batch_watermarks SET pending_to = %s, pending_file = %s, updated_at = now() "
                 "WHERE name = %s", (pending_to, pending_file, name))


def advance(conn: psycopg.Connection, name: str, to: str, rows: int) -> None:
    conn.execute("UPDATE streams_batch_watermarks SET watermark = %s, pending_to = NULL, pending_file = NULL, "
                 "files = files + 1, rows = rows + %s, updated_at = now() WHERE name = %s", (to, rows, name))


def import_status(conn: psycopg.Connection, source: str, file: str, sha256: str) -> str | None:
    row = conn.execute("SELECT status FROM streams_batch_imports WHERE source = %s AND file = %s AND sha256 = %s",
                       (source, file, sha256)).fetchone()
    return row[0] if row else None


def import_started(conn: psycopg.Connection, source: str, file: str, sha256: str, rows: int) -> None:
    conn.execute(
        "INSERT INTO streams_batch_imports (source, file, sha256, status, rows) VALUES (%s, %s, %s, 'importing', %s) "
        "ON CONFLICT (source, file, sha256) DO UPDATE SET status = 'importing', started_at = now(), "
        "finished_at = NULL, attempts = streams_batch_imports.attempts + 1", (source, file, sha256, rows))


def import_finished(conn: psycopg.Connection, source: str, file: str, sha256: str, *, status: str, rows: int,
                    bad_rows: int, published: int, already_published: int = 0, detail: str | None = None) -> None:
    conn.execute(
        "INSERT INTO streams_batch_imports (source, file, sha256, status, rows, bad_rows, published, "
        "already_published, detail, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
        "ON CONFLICT (source, file, sha256) DO UPDATE SET status = EXCLUDED.status, rows = EXCLUDED.rows, "
        "bad_rows = EXCLUDED.bad_rows, published = EXCLUDED.published, "
        "already_published = EXCLUDED.already_published, detail = EXCLUDED.detail, finished_at = now()",
        (source, file, sha256, status, rows, bad_rows, published, already_published, detail))


def published_among(conn: psycopg.Connection, source: str, message_ids: list[str]) -> set[str]:
    """The ids among ``message_ids`` that an import of ``source`` published before."""
    if not message_ids:
        return set()
    found = conn.execute("SELECT message_id::text FROM streams_batch_published WHERE source = %s "
                         "AND message_id = ANY(%s::uuid[])", (source, message_ids)).fetchall()
    return {r[0] for r in found}


def forget_published(conn: psycopg.Connection, source: str, retention: float, batch: int = 50_000) -> int:
    """Delete the ids ``source`` published more than ``retention`` seconds ago (in batches); returns
    how many. A consumer's processed-ID table forgets an id after its own retention
    (``STREAMS_DEDUP_RETENTION``), so an older id would not be recognised downstream either."""
    removed = 0
    while True:
        cur = conn.execute(
            "DELETE FROM streams_batch_published WHERE ctid IN (SELECT ctid FROM streams_batch_published "
            "WHERE source = %s AND published_at < now() - make_interval(secs => %s) LIMIT %s)",
            (source, retention, batch))
        removed += cur.rowcount
        if cur.rowcount < batch:
            return removed


def imported_before(conn: psycopg.Connection, source: str, file: str) -> bool:
    """True if the ledger has an import of a file of that name from ``source`` (any checksum, any outcome)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM streams_batch_imports WHERE source = %s AND file = %s)",
                        (source, file)).fetchone() == (True,)


def record_published(conn: psycopg.Connection, source: str, file: str, message_ids: list[str]) -> None:
    """Remember ids that the broker acknowledged (call only after the acks)."""
    if message_ids:
        # one array literal rather than a list of parameters to adapt: the ids are uuid text
        conn.execute("INSERT INTO streams_batch_published (source, message_id, file) "
                     "SELECT %s, unnest(%s::text::uuid[]), %s ON CONFLICT DO NOTHING",
                     (source, "{" + ",".join(message_ids) + "}", file))


class PublishedRecorder:
    """Records acknowledged ids on its own connection in a background thread, in order, so the
    producer goes on sending meanwhile (the insert is PostgreSQL's work, about 8 µs a row).
    :meth:`close` waits for every record and raises the first failure."""

    def __init__(self, dsn: str, source: str, file: str) -> None:
        self.source, self.file = source, file
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-ids")
        self._pending: list[Future[None]] = []

    def add(self, message_ids: list[str]) -> None:
        self._pending.append(self._thread.submit(record_published, self._conn, self.source, self.file,
                                                 list(message_ids)))

    def close(self, *, check: bool = True) -> None:
        """Wait for the records; with ``check``, raise the first that failed."""
        try:
            for future in self._pending:
                if check:
                    future.result()
        finally:
            self._thread.shutdown(wait=True)
            self._conn.close()


def rows(conn: psycopg.Connection, query: str, params: Any = None) -> list[dict[str, Any]]:
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
