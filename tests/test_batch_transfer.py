"""Batch file transfer on a real sshd, PostgreSQL and Kafka: export → SFTP → import → handler.

The SFTP server is the project's own OpenSSH sshd (one per test process, each
test in its own remote folder); files are also written or damaged on the
server's disk directly, as a partner or a broken upload would leave them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.batch.export import ExportSpec, run_export
from streams.batch.formats import FormatOptions
from streams.batch.imports import ImportSpec, run_import
from streams.batch.manifest import Manifest
from streams.dev.process import free_port
from streams.kafka.admin import TopicSpec, end_offsets, ensure_topics
from streams.settings import Settings
from tests.apps.batch_app import SCHEMA, registry
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.reference import committed_to_end

TOPIC = "partner.orders"
NASTY = ['plain', 'comma, inside', 'semi;colon', 'tab\tinside', 'quote " inside', '"quoted"', 'new\nline',
         'crlf\r\nline', 'equals=sign key=value', 'back\\slash', '한글 주문 🙂', '  leading and trailing  ', 'x' * 500]


@dataclass
class Batch:
    iso: Isolated
    env: dict[str, str]
    settings: Settings
    files: Path  # the remote folder, on the server's disk
    topic: str

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", "batch", *args], capture_output=True, text=True,
                              env={**os.environ, **self.env, "COLUMNS": "250", **env}, cwd=ROOT,
                              timeout=300)

    def import_args(self) -> list[str]:
        return ["import", "--source", "partner", "--topic", self.topic, "--registry", "tests.apps.batch_app:registry",
                "--type", "PartnerOrder", "--key-column", "order_id"]

    def spec(self) -> ImportSpec:
        return ImportSpec("partner", self.topic, registry, "PartnerOrder", "order_id")

    def published(self) -> int:
        return sum(run(end_offsets(self.settings, self.topic)).values())

    def caught_up(self) -> bool:
        """The consumer group committed everything published to the topic."""
        return committed_to_end(self.settings, self.settings.app_id, self.topic)

    def stored(self) -> list[tuple]:
        return self.iso.sql("SELECT file, line, order_id, buyer, amount, note FROM imported_rows ORDER BY file, line")


@pytest.fixture
def batch(isolated: Isolated, sftp_server) -> Batch:
    remote = f"/{isolated.settings.app_id}"
    env = {**isolated.env, **sftp_server.client_env(remote)}
    settings = Settings(**{k.removeprefix("STREAMS_").lower(): v for k, v in env.items()})
    topic = isolated.topic(TOPIC)
    run(ensure_topics(settings, [TopicSpec(topic, 3), TopicSpec(topic + ".dlq", 3)]))
    isolated.sql(SCHEMA)
    isolated.sql("CREATE TABLE partner_orders (seq bigserial PRIMARY KEY, order_id text NOT NULL, buyer text NOT NULL, "
                 "amount numeric NOT NULL, note text)")
    return Batch(isolated, env, settings, sftp_server.files / remote.strip("/"), topic)


def _insert(b: Batch, n: int, start: int = 0) -> None:
    b.iso.sql("INSERT INTO partner_orders (order_id, buyer, amount, note) "
              "SELECT 'o-' || g, 'buyer ' || mod(g, 13), g * 1.25, (%s::text[])[1 + mod(g, %s::int)] "
              "FROM generate_series(%s::int, %s::int) g", (NASTY, len(NASTY), start + 1, start + n))


def _worker(b: Batch):
    return b.iso.worker("consumer", STREAMS_WORKER_APP="tests.apps.batch_app:app").start()


FORMATS = [FormatOptions("csv"), FormatOptions("csv", delimiter=";", quoting="all"), FormatOptions("kv"),
           FormatOptions("jsonl")]


@pytest.mark.timeout(300)
def test_every_format_round_trips_through_sftp_to_the_handler(batch: Batch) -> None:
    n = 130
    _insert(batch, n)
    names = []
    for i, options in enumerate(FORMATS):
        result = run(run_export(batch.settings, ExportSpec(f"orders-{i}", "seq", table="partner_orders",
                                                           options=options)))
        assert result.rows == n and result.watermark_to == str(n)
        names.append(result.file)
    # a second run finds nothing new: the watermark moved only after the manifests were up
    assert run(run_export(batch.settings, ExportSpec("orders-0", "seq", table="partner_orders"))).file is None
    assert sorted(p.name for p in batch.files.iterdir()) == sorted(names + [f"{n}.manifest.json" for n in names])

    worker = _worker(batch)
    out = batch.cli(*batch.import_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert " ".join(out.stdout.split()).count(f"{n:,} rows, {n:,} published, 0 bad") == len(FORMATS), out.stdout
    worker.wait_ready()
    wait_for(lambda: len(batch.stored()) >= n * len(FORMATS), 120, what="every imported row handled")
    wait_for(lambda: batch.caught_up(), 60, what="committed offsets at the log end")
    source = batch.iso.sql("SELECT order_id, buyer, amount, note FROM partner_orders ORDER BY seq")
    stored = batch.stored()
    assert len(stored) == n * len(FORMATS)
    for name in names:
        rows = [r[2:] for r in stored if r[0] == name]
        assert sorted(rows) == sorted(source), f"{name}: every value as it was in the database"
    # the files moved to done/, the ledger has them, a second import publishes nothing
    assert sorted(p.name for p in (batch.files / "done").iterdir()) == sorted(
        names + [f"{n}.manifest.json" for n in names])
    before = batch.published()
    again = batch.cli(*batch.import_args())
    assert again.returncode == 0 and "no files" in again.stdout
    assert batch.published() == before
    ledger = batch.iso.sql("SELECT file, status, rows, bad_rows, published FROM streams_batch_imports ORDER BY file")
    assert ledger == sorted((name, "done", n, 0, n) for name in names)


def _partner_file(b: Batch, name: str, content: bytes, fmt: str = "csv", rows: int | None = None,
                  columns: list[str] | None = None, manifest: bool = True, **overrides) -> None:
    """A file as a partner's system would put it on the server, with a correct manifest unless overridden."""
    b.files.mkdir(parents=True, exist_ok=True)
    (b.files / name).write_bytes(content)
    if manifest:
        m = Manifest(file=name, format=fmt, columns=columns or ["order_id", "buyer", "amount", "note"],
                     rows=rows if rows is not None else content.count(b"\n") - (fmt == "csv"),
                     size=len(content), sha256=hashlib.sha256(content).hexdigest(), source="partner-system")
        data = json.loads(m.to_bytes())
        data.update(overrides)
        (b.files / m.name).write_text(json.dumps(data))


def test_incomplete_or_unverified_files_are_left_alone(batch: Batch) -> None:
    good = b"order_id,buyer,amount,note\no-1,ann,10,\no-2,bob,20,hi\n"
    _partner_file(batch, "no-manifest.csv", good, manifest=False)
    _partner_file(batch, "wrong-checksum.csv", good, sha256="0" * 64)
    _partner_file(batch, "truncated.csv", good)
    (batch.files / "truncated.csv").write_bytes(good[:-9])  # the upload broke off after the manifest was made
    _partner_file(batch, "wrong-count.csv", good, rows=3)
    (batch.files / "uploading.csv.part").write_bytes(good)
    _partner_file(batch, "bad-manifest.csv", good)
    (batch.files / "bad-manifest.csv.manifest.json").write_text("{not json")

    results = {r.file: r for r in run(run_import(batch.settings, batch.spec()))}
    assert set(results) == {"wrong-checksum.csv", "truncated.csv", "wrong-count.csv", "bad-manifest.csv"}
    assert all(r.status == "rejected" for r in results.values())
    assert "incomplete or replaced upload" in results["truncated.csv"].detail
    assert "incomplete or replaced upload" in results["wrong-checksum.csv"].detail
    assert "2 records, the manifest says 3" in results["wrong-count.csv"].detail
    assert "not JSON" in results["bad-manifest.csv"].detail
    assert batch.published() == 0, "nothing of them was published"
    assert not (batch.files / "done").exists() and not (batch.files / "failed").exists(), "nothing moved"
    assert (batch.files / "no-manifest.csv").exists() and (batch.files / "uploading.csv.part").exists()
    status = batch.cli("status")
    assert status.returncode == 0 and "rejected" in status.stdout


def test_bad_lines_are_reported_with_line_and_column_and_good_lines_flow(batch: Batch) -> None:
    content = (b"order_id,buyer,amount,note\n"
               b"o-1,ann,10,fine\n"
               b"o-2,bob\n"                         # line 3: a field missing
               b"o-3,cy,not-a-number,x\n"           # line 4: amount is not a number
               b"o-4,,5,x\n"                        # line 5: buyer is required
               b'"o-5",dee,7,"multi\nline note"\n'  # lines 6-7: one good row over two lines
               b"o-6,eve,-1,x\n"                    # line 8: amount must be >= 0
               b"o-7,fay,8,last\n")
    _partner_file(batch, "partner-2026-12-01.csv", content, rows=7)
    worker = _worker(batch)
    out = batch.cli(*batch.import_args())
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())
    assert "failed partner-2026-12-01.csv: 7 rows, 3 published, 4 bad" in text
    assert "line 3, column amount: 2 fields, the header has 4" in text
    assert "line 4, column amount:" in text and "line 8, column amount:" in text
    report = json.loads((batch.files / "failed" / "partner-2026-12-01.csv.errors.json").read_text())
    assert [(e["line"], e["column"]) for e in report["errors"]] == [(3, "amount"), (4, "amount"), (5, "buyer"),
                                                                     (8, "amount")]
    assert (batch.files / "failed" / "partner-2026-12-01.csv").exists()
    worker.wait_ready()
    wait_for(lambda: len(batch.stored()) >= 3, 60, what="the good rows handled")
    assert [(r[1], r[2], r[5]) for r in batch.stored()] == [(2, "o-1", "fine"), (6, "o-5", "multi\nline note"),
                                                            (9, "o-7", "last")]


@pytest.mark.timeout(400)
def test_an_importer_killed_mid_file_repeats_no_handler_effect(batch: Batch) -> None:
    n = 15_000
    _insert(batch, n)
    result = run(run_export(batch.settings, ExportSpec("big", "seq", table="partner_orders",
                                                       options=FormatOptions("jsonl"))))
    assert result.rows == n
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "batch", *batch.import_args()], cwd=ROOT,
                            env={**os.environ, **batch.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: batch.published() >= n // 5, 120, what="part of the file published")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    first = batch.published()
    assert first < n, "the kill must land mid-file"
    assert batch.iso.sql("SELECT status FROM streams_batch_imports")[0][0] == "importing"
    assert (batch.files / result.file).exists(), "the file stays until it is fully imported"

    out = batch.cli(*batch.import_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert batch.published() == first + n, "the second run published the whole file again, same ids"
    worker = _worker(batch)
    worker.wait_ready()
    wait_for(lambda: batch.caught_up(), 180, what="every record handled")
    stored = batch.iso.sql("SELECT count(*), count(DISTINCT message_id), count(DISTINCT order_id) FROM imported_rows")
    assert stored == [(n, n, n)], "each row's effect exactly once"
    assert batch.iso.sql("SELECT status, attempts, published FROM streams_batch_imports") == [("done", 2, n)]


def test_an_exporter_killed_between_upload_and_manifest_re_exports_the_same_rows(batch: Batch) -> None:
    _insert(batch, 200)
    spec = ExportSpec("crashy", "seq", table="partner_orders", options=FormatOptions("kv"))

    class Crash(BaseException):
        pass

    def crash(name: str) -> None:
        raise Crash(name)

    with pytest.raises(Crash):
        run(run_export(batch.settings, spec, after_upload=crash))
    first_name = "crashy-start-200.kv"
    uploaded = (batch.files / first_name).read_bytes()
    assert not (batch.files / f"{first_name}.manifest.json").exists()
    assert batch.iso.sql("SELECT watermark, pending_to FROM streams_batch_watermarks") == [(None, "200")]
    assert run(run_import(batch.settings, batch.spec())) == [], "no manifest: not a file to import yet"

    _insert(batch, 50, start=200)  # new rows meanwhile: they belong to the next file
    resumed = run(run_export(batch.settings, spec))
    assert (resumed.file, resumed.rows, resumed.resumed) == (first_name, 200, True)
    assert (batch.files / first_name).read_bytes() == uploaded, "the same rows, byte for byte"
    manifest = Manifest.from_bytes((batch.files / f"{first_name}.manifest.json").read_bytes())
    assert (manifest.rows, manifest.watermark_from, manifest.watermark_to) == (200, None, "200")
    following = run(run_export(batch.settings, spec))
    assert (following.file, following.rows, following.watermark_from) == ("crashy-200-250.kv", 50, "200")
    assert batch.iso.sql("SELECT watermark, pending_to, files, rows FROM streams_batch_watermarks") == [
        ("250", None, 2, 250)]


def test_servers_down_give_a_clear_error_lose_nothing_and_the_next_run_retries(batch: Batch) -> None:
    _insert(batch, 40)
    dead = str(free_port())
    out = batch.cli("export", "--name", "retry", "--table", "partner_orders", "--column", "seq",
                    STREAMS_SFTP_PORT=dead)
    assert out.returncode == 1
    assert "cannot connect to sftp://" in out.stdout and f":{dead}/" in out.stdout and "the next run retries" in out.stdout
    assert batch.iso.sql("SELECT to_regclass('streams_batch_watermarks') IS NULL")[0][0], "nothing was recorded"
    down_db = batch.cli("export", "--name", "retry", "--table", "partner_orders", "--column", "seq",
                        STREAMS_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{dead}/x")
    assert down_db.returncode == 1 and "cannot reach PostgreSQL" in down_db.stdout

    ok = batch.cli("export", "--name", "retry", "--table", "partner_orders", "--column", "seq")
    assert ok.returncode == 0 and "40 rows" in ok.stdout
    out = batch.cli(*batch.import_args(), STREAMS_SFTP_PORT=dead)
    assert out.returncode == 1 and "cannot connect to sftp://" in out.stdout
    assert batch.published() == 0
    broker_down = batch.cli(*batch.import_args(), STREAMS_KAFKA_BOOTSTRAP=f"127.0.0.1:{dead}")
    assert broker_down.returncode == 1 and "Kafka" in broker_down.stdout, broker_down.stdout + broker_down.stderr
    assert (batch.files / "retry-start-40.csv").exists(), "the file stays for the next run"
    ok = batch.cli(*batch.import_args())
    assert ok.returncode == 0 and batch.published() == 40
    time.sleep(0)  # (no waiting needed: every check above read the servers)
