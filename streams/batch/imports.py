"""Import: files on the SFTP server → envelopes of a registered type on a Kafka topic, never twice.

One run (:func:`import_once`) goes through the remote folder and, for each
``<file>.manifest.json``:

* the data file must be there with the manifest's size and sha256 — otherwise
  the file is **left alone** (an upload in progress, a truncated or replaced
  file) and the ledger records why (``rejected``);
* a file the ledger already finished (same name and checksum) is only moved
  out of the way;
* the file is parsed **once**: its records are counted (a leading UTF-8
  byte-order mark is skipped and reported) while every good row is validated
  against the registered payload model and encoded as its envelope's Kafka
  record into a spool on local disk (:mod:`streams.batch.records`); a csv
  header unlike the manifest's columns, text that is not UTF-8, or a count
  unlike the manifest's refuses the file with **nothing published**;
* every good row becomes an envelope of the registered type with a
  **deterministic** ``message_id`` (:mod:`streams.batch.rowids`: from the
  source, the file name and the row's content, or from declared id columns)
  and the key column as key. A row whose id an import of this source published
  before (``streams_batch_published``) is counted as *already published* and not
  sent: a corrected re-upload of a failed file publishes only the rows that were
  not published (ids are looked up only when one can have been published: with
  id columns, or after an earlier import of the same file name). Once the count
  is right the others go out from the spool, in file order, in whole record
  batches per partition (:mod:`streams.batch.publish`) with an idempotent
  ``acks=all`` producer, and their ids are recorded (in a background thread)
  once the broker acknowledged their batch. A crash between an
  acknowledgement and its record publishes those rows again with the same ids:
  consumers' processed-ID tables drop them, so no effect repeats;
* bad lines (unparseable, failing the payload model, an id that cannot be made,
  a key longer than an envelope's key may be) are listed with line, column and reason; good lines still go through;
* the file and its manifest move to ``done/``, or to ``failed/`` with
  ``<file>.errors.json`` beside them when some lines were bad; the ledger
  (``streams_batch_imports``) records rows, bad rows, published, already
  published, when.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pydantic import ValidationError

from streams import tracing
from streams.batch import ledger
from streams.batch.formats import LineError, parse, read_lines, starts_with_bom
from streams.batch.manifest import SUFFIX, Manifest, file_digest
from streams.batch.publish import publish_records
from streams.batch.records import MAX_KEY, EnvelopeEncoder, Record, Spool
from streams.batch.remote import Remote
from streams.batch.rowids import RowIdError, RowIds
from streams.messages.registry import MessageRegistry
from streams.settings import Settings

log = logging.getLogger(__name__)

DONE, FAILED = "done", "failed"
#: rows whose ids are looked up in the published-id table at a time
LOOKUP_CHUNK = 1000


@dataclass(frozen=True)
class ImportSpec:
    """Where rows go: a registered message type, a topic (full name), the key column, and the
    columns that identify a row if the source has them (else rows are identified by content)."""

    source: str
    topic: str
    registry: MessageRegistry
    message_type: str
    key_column: str | None = None
    id_columns: tuple[str, ...] = ()


@dataclass
class FileResult:
    """What one run did with one file."""

    file: str
    status: str  # done | failed | rejected | waiting | skipped
    rows: int = 0
    bad_rows: int = 0
    published: int = 0
    already_published: int = 0
    detail: str = ""
    errors: list[LineError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


BOM_NOTE = "starts with a UTF-8 byte-order mark (skipped)"


async def import_once(settings: Settings, spec: ImportSpec, remote: Remote, *,
                      progress: Callable[[str, int, int], None] | None = None) -> list[FileResult]:
    """One pass over the remote folder (see the module docstring)."""
    workdir = settings.home_path / "batch" / "import"
    workdir.mkdir(parents=True, exist_ok=True)
    names = await remote.names()
    results = []
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        ledger.migrate(conn)
        forgotten = ledger.forget_published(conn, spec.source, settings.dedup_retention)
        if forgotten:
            log.info("%s: %d published id(s) older than the retention forgotten", spec.source, forgotten)
        for manifest_name in (n for n in names if n.endswith(SUFFIX)):
            results.append(await _import_file(settings, spec, remote, conn, manifest_name, names, workdir, progress))
    return results


async def _import_file(settings: Settings, spec: ImportSpec, remote: Remote, conn: psycopg.Connection,
                       manifest_name: str, names: list[str], workdir: Path,
                       progress: Callable[[str, int, int], None] | None) -> FileResult:
    data_name = manifest_name[: -len(SUFFIX)]
    try:
        manifest = Manifest.from_bytes(await remote.read(manifest_name))
    except ValueError as exc:
        return _reject(conn, spec, data_name, "-", f"{manifest_name}: {exc}")
    if manifest.file != data_name:
        return _reject(conn, spec, data_name, manifest.sha256, f"manifest names {manifest.file!r}")
    if data_name not in names:
        return FileResult(data_name, "waiting", detail="manifest without its file (yet)")
    status = ledger.import_status(conn, spec.source, data_name, manifest.sha256)
    if status in (DONE, FAILED):
        await remote.move(data_name, status)
        await remote.move(manifest_name, status)
        return FileResult(data_name, "skipped", detail=f"already imported ({status}); moved to {status}/")
    missing = [c for c in spec.id_columns if c not in manifest.columns]
    if missing:
        return _reject(conn, spec, data_name, manifest.sha256,
                       f"id column(s) {', '.join(missing)} not among the manifest's columns {manifest.columns} "
                       "(left alone)")
    local = workdir / data_name
    await remote.download(data_name, local)
    try:
        size, sha256 = file_digest(local)
        if (size, sha256) != (manifest.size, manifest.sha256):
            return _reject(conn, spec, data_name, manifest.sha256,
                           f"{size} bytes, sha256 {sha256[:12]}…; the manifest says {manifest.size} bytes, "
                           f"sha256 {manifest.sha256[:12]}… (incomplete or replaced upload: left alone)")
        # default ids include the file name: only an earlier import of this name can have published one of them
        look_up = bool(spec.id_columns) or ledger.imported_before(conn, spec.source, data_name)
        result = FileResult(data_name, DONE, rows=manifest.rows)
        encoder = EnvelopeEncoder(spec.registry, spec.message_type, source=f"batch:{spec.source}", file=data_name)
        spool = Spool(workdir)
        try:
            records, unreadable = _read(spec, manifest, local, encoder, spool, result, conn if look_up else None,
                                        progress)
            if unreadable or records != manifest.rows:
                return _reject(conn, spec, data_name, sha256, unreadable or
                               f"{records} records, the manifest says {manifest.rows} (left alone)")
            ledger.import_started(conn, spec.source, data_name, sha256, manifest.rows)
            if starts_with_bom(local):
                result.notes.append(BOM_NOTE)
            recorder = ledger.PublishedRecorder(settings.dsn, spec.source, data_name)
            try:
                # one trace per imported file: every row's record is a child of its span (tracing on)
                with tracing.span(f"import {data_name}", attributes={"streams.batch.source": spec.source,
                                                                    "streams.batch.file": data_name,
                                                                    tracing.DESTINATION: spec.topic}):
                    trace = tracing.output_headers([])
                    headers = (encoder.record_headers if not trace
                               else lambda message_id: [*encoder.record_headers(message_id), *trace])
                    result.published = await publish_records(settings, spec.topic, spool.chunks(), headers,
                                                             on_acked=recorder.add)
            except BaseException:
                recorder.close(check=False)  # what stopped the import is the error to report
                raise
            recorder.close()
        finally:
            spool.close()
    finally:
        local.unlink(missing_ok=True)
    result.bad_rows = len(result.errors)
    if result.errors:
        result.status = FAILED
        report = {"file": data_name, "sha256": manifest.sha256, "rows": manifest.rows,
                  "bad_rows": len(result.errors), "published": result.published,
                  "already_published": result.already_published,
                  "errors": [{"line": e.line, "column": e.column, "error": e.message} for e in result.errors]}
        await remote.write(f"{data_name}.errors.json", json.dumps(report, indent=2, ensure_ascii=False).encode(),
                           subdir=FAILED)
        result.notes.append(f"{len(result.errors)} bad line(s): see {FAILED}/{data_name}.errors.json")
    result.detail = "; ".join(result.notes)
    await remote.move(data_name, result.status)
    await remote.move(manifest_name, result.status)
    ledger.import_finished(conn, spec.source, data_name, manifest.sha256, status=result.status, rows=manifest.rows,
                           bad_rows=result.bad_rows, published=result.published,
                           already_published=result.already_published, detail=result.detail or None)
    return result


def _reject(conn: psycopg.Connection, spec: ImportSpec, name: str, sha256: str, why: str) -> FileResult:
    ledger.import_finished(conn, spec.source, name, sha256, status="rejected", rows=0, bad_rows=0, published=0,
                           detail=why)
    return FileResult(name, "rejected", detail=why)


def _read(spec: ImportSpec, manifest: Manifest, local: Path, encoder: EnvelopeEncoder, spool: Spool,
          result: FileResult, conn: psycopg.Connection | None,
          progress: Callable[[str, int, int], None] | None) -> tuple[int, str | None]:
    """The one parse pass: (records read, why the file cannot be read). Every good row's record goes
    to ``spool`` unless an earlier import published its id (looked up only with ``conn``; counted in
    ``result``); bad lines go to ``result.errors``. Records are the rows and the bad lines."""
    validate = encoder.model.model_validate
    ids = RowIds(spec.source, manifest.file, spec.id_columns)
    key_column = spec.key_column
    pending: list[Record] = []

    def add_not_yet_published() -> None:
        seen = ledger.published_among(conn, spec.source, [r[2] for r in pending]) if conn is not None else set()
        result.already_published += len(seen)
        for record in pending:
            if record[2] not in seen:
                spool.add(*record)
        pending.clear()

    records = 0
    try:
        for item in parse(read_lines(local), manifest.options, manifest.columns):
            records += 1
            if records % 5000 == 0:
                encoder.stamp()
                if progress is not None:
                    progress(manifest.file, records, manifest.rows)
            if item.error is not None:
                if item.error.whole_file:
                    return 0, f"line {item.error.line}: {item.error.message} (left alone)"
                result.errors.append(item.error)
                continue
            assert item.row is not None
            row = {k: v for k, v in item.row.items() if v is not None}
            try:
                payload = validate(row)
            except ValidationError as exc:
                first = exc.errors()[0]
                column = ".".join(str(p) for p in first["loc"]) or "-"
                got = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
                result.errors.append(LineError(item.line, column, f"{first['msg']}{got}"[:300]))
                continue
            try:
                message_id = ids(item.line, row)
            except RowIdError as exc:
                result.errors.append(LineError(item.line, exc.column, exc.message))
                continue
            key = row.get(key_column) if key_column else None
            if key is not None and len(key) > MAX_KEY:
                result.errors.append(LineError(item.line, str(key_column),
                                               f"{len(key):,} characters, a message key has at most {MAX_KEY:,}"))
                continue
            record = (key.encode() if key is not None else None, encoder.value(message_id, key, item.line, payload),
                      message_id)
            if conn is None:
                spool.add(*record)
            else:
                pending.append(record)
                if len(pending) >= LOOKUP_CHUNK:
                    add_not_yet_published()
    except UnicodeDecodeError as exc:
        return 0, f"not UTF-8 at byte {exc.start}"
    add_not_yet_published()
    if progress is not None:
        progress(manifest.file, records, manifest.rows)
    return records, None


def read_report(data: bytes) -> dict:
    """An ``<file>.errors.json`` report (tests, tools)."""
    return json.load(io.BytesIO(data))


async def run_import(settings: Settings, spec: ImportSpec, **kwargs) -> list[FileResult]:
    """Connect to the SFTP server and run :func:`import_once`."""
    from streams.batch.remote import connect

    async with connect(settings) as remote:
        return await import_once(settings, spec, remote, **kwargs)
