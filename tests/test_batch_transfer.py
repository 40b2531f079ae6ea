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
from streams.dev.sftp import LocalSftp
from streams.kafka.admin import TopicSpec, end_offsets, ensure_topics
from streams.settings import Settings
from tests.apps.batch_app import SCHEMA, registry
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.kafka_tool import client_quota
from tests.reference import committed_to_end, read_topic

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
    server: LocalSftp
    remote: str  # the remote folder, as SFTP clients see it

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
    return Batch(isolated, env, settings, sftp_server.files / remote.strip("/"), topic, sftp_server, remote)


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
    _partner_file(batch, "wrong-delimiter.csv", good.replace(b",", b";"))  # the manifest says ','

    results = {r.file: r for r in run(run_import(batch.settings, batch.spec()))}
    assert set(results) == {"wrong-checksum.csv", "truncated.csv", "wrong-count.csv", "bad-manifest.csv",
                            "wrong-delimiter.csv"}
    assert all(r.status == "rejected" for r in results.values())
    assert "it splits into them on ';', the manifest's delimiter is ','" in results["wrong-delimiter.csv"].detail
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
    # the importer publishes a file in large record batches, fast: a broker quota (Kafka's own, the
    # broker delays its answers) makes the file take a while, so the kill lands mid-file
    client_quota(batch.settings.bootstrap_servers, 100_000)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "batch", *batch.import_args()], cwd=ROOT,
                                env={**os.environ, **batch.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: batch.published() >= n // 5, 120, what="part of the file published")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        client_quota(batch.settings.bootstrap_servers, None)
    first = batch.published()
    assert first < n, "the kill must land mid-file"
    assert batch.iso.sql("SELECT status FROM streams_batch_imports")[0][0] == "importing"
    assert (batch.files / result.file).exists(), "the file stays until it is fully imported"
    recorded = batch.iso.sql("SELECT count(*) FROM streams_batch_published")[0][0]
    assert recorded <= first, "an id is recorded as published only after the broker acknowledged its record"

    out = batch.cli(*batch.import_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert batch.published() == first + n - recorded, \
        "the second run published every row not recorded as published (the rest again, with the same ids)"
    worker = _worker(batch)
    worker.wait_ready()
    wait_for(lambda: batch.caught_up(), 180, what="every record handled")
    stored = batch.iso.sql("SELECT count(*), count(DISTINCT message_id), count(DISTINCT order_id) FROM imported_rows")
    assert stored == [(n, n, n)], "each row's effect exactly once"
    assert batch.iso.sql("SELECT status, attempts, published, already_published FROM streams_batch_imports") == [
        ("done", 2, n - recorded, recorded)]


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


# --- files written by other tools, uploaded with OpenSSH's own sftp client ------------------------
SFTP_CLIENT = "/usr/bin/sftp"  # Debian's openssh-client
COLUMNS = ["order_id", "buyer", "amount", "note"]


def _tool_rows(n: int) -> list[dict]:
    """What the partner's spreadsheet or table holds: every awkward value, some notes empty (NULL)."""
    return [{"order_id": f"t-{i}", "buyer": f"buyer {i % 13}", "amount": str(i * 3),
             "note": None if i % 7 == 0 else NASTY[i % len(NASTY)]} for i in range(1, n + 1)]


def _spreadsheet_csv(rows: list[dict], delimiter: str, newline: str, bom: bool) -> bytes:
    """The bytes a spreadsheet's CSV export writes (neither Excel nor LibreOffice runs here).

    The rules, as LibreOffice's ScDocShell::AsciiSave and Excel's "CSV UTF-8" write them: a text
    cell is quoted only when it holds the quote, the delimiter, LF or CR, quotes doubled; a line
    break inside a cell is written as it is (LF) inside the quotes; an empty cell is nothing;
    numbers as shown; every row, the last included, ends with the line end. Excel: a UTF-8 BOM,
    the list separator of its locale (';' where ',' is the decimal comma), CRLF. LibreOffice on
    Linux: no BOM (its "Save with BOM" option is off by default), ',', LF."""
    def cell(value: str | None) -> str:
        if value is None:
            return ""
        if any(c in value for c in (delimiter, '"', "\n", "\r")):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [delimiter.join(COLUMNS)] + [delimiter.join(cell(r[c]) for c in COLUMNS) for r in rows]
    return (b"\xef\xbb\xbf" if bom else b"") + "".join(line + newline for line in lines).encode()


def _postgres_csv(b: Batch, rows: list[dict]) -> bytes:
    """``COPY (...) TO STDOUT (FORMAT csv, HEADER)`` of the test's own PostgreSQL."""
    import psycopg

    b.iso.sql("CREATE TABLE tool_rows (seq int PRIMARY KEY, order_id text, buyer text, amount numeric, note text)")
    b.iso.sql("INSERT INTO tool_rows SELECT * FROM unnest(%s::int[], %s::text[], %s::text[], %s::numeric[], %s::text[])",
              (list(range(len(rows))), *([r[c] for r in rows] for c in COLUMNS)))
    query = "COPY (SELECT order_id, buyer, amount, note FROM tool_rows ORDER BY seq) TO STDOUT (FORMAT csv, HEADER)"
    with psycopg.connect(b.settings.dsn) as conn, conn.cursor() as cur, cur.copy(query) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def _pandas_csv(rows: list[dict], path: Path) -> bytes:
    """``DataFrame.to_csv(path, index=False)`` of real pandas (amounts as integers, missing notes None)."""
    import pandas as pd

    frame = pd.DataFrame([{**r, "amount": int(r["amount"])} for r in rows], columns=COLUMNS)
    frame.to_csv(path, index=False)
    return path.read_bytes()


def _manifest_for(name: str, content: bytes, rows: int, **fields) -> bytes:
    """The manifest a partner writes for its file."""
    return json.dumps({"file": name, "format": "csv", "columns": COLUMNS, "rows": rows, "size": len(content),
                       "sha256": hashlib.sha256(content).hexdigest(), "source": "partner-system", **fields}).encode()


def _sftp_upload(b: Batch, folder: Path, *names: str) -> None:
    """Upload local files with OpenSSH's sftp client in batch mode (key authentication, host key checked)."""
    assert Path(SFTP_CLIENT).exists(), f"{SFTP_CLIENT} missing: install Debian's openssh-client"
    commands = folder / "sftp-batch"
    commands.write_text("\n".join([f"-mkdir {b.remote}", f"cd {b.remote}", *(f'put "{folder / n}"' for n in names)])
                        + "\n")
    out = subprocess.run([SFTP_CLIENT, "-F", "none", "-b", str(commands), "-P", str(b.server.port),
                          "-i", str(b.server.client_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                          "-o", f"UserKnownHostsFile={b.server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                          f"{b.server.user}@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _topic_rows(b: Batch) -> list[tuple[str, str, dict]]:
    """(message id, batch.file, payload) of every record on the topic, read with a plain consumer."""
    values = [json.loads(r.value) for r in read_topic(b.iso, b.topic)]
    return [(v["message_id"], v["headers"]["batch.file"], v["payload"]) for v in values]


@pytest.mark.timeout(300)
def test_csv_files_of_real_tools_uploaded_with_openssh_sftp_import_whole(batch: Batch, tmp_path: Path) -> None:
    n = 1000
    rows = _tool_rows(n)
    files = {
        "excel-csv-utf8.csv": (_spreadsheet_csv(rows, ";", "\r\n", bom=True), ";"),
        "libreoffice.csv": (_spreadsheet_csv(rows, ",", "\n", bom=False), ","),
        "postgres-copy.csv": (_postgres_csv(batch, rows), ","),
        "pandas-to-csv.csv": (_pandas_csv(rows, tmp_path / "pandas.csv"), ","),
    }
    excel = files["excel-csv-utf8.csv"][0]
    assert excel.startswith(b"\xef\xbb\xbforder_id;buyer;amount;note\r\n") and b'"new\nline"' in excel
    assert b"\r\n" not in files["pandas-to-csv.csv"][0].replace(b'"crlf\r\nline"', b"")  # pandas: LF rows
    for name, (content, delimiter) in files.items():
        (tmp_path / name).write_bytes(content)
        (tmp_path / f"{name}.manifest.json").write_bytes(_manifest_for(name, content, n, delimiter=delimiter))
    _sftp_upload(batch, tmp_path, *(x for name in files for x in (name, f"{name}.manifest.json")))
    assert (batch.files / "excel-csv-utf8.csv").read_bytes() == excel

    out = batch.cli(*batch.import_args())
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())
    for name in files:
        assert f"done {name}: 1,000 rows, 1,000 published, 0 bad" in text, out.stdout
    assert "UTF-8 byte-order mark" in text.split("done excel-csv-utf8.csv")[1].split(" done ")[0], out.stdout
    assert out.stderr == "", "the tool's own lines only (no library warnings)"

    on_topic = _topic_rows(batch)
    assert len(on_topic) == n * len(files)
    want = sorted((r["order_id"], r["buyer"], r["amount"], r["note"]) for r in rows)
    for name in files:
        got = sorted((p["order_id"], p["buyer"], str(p["amount"]), p["note"]) for _, f, p in on_topic if f == name)
        assert got == want, f"{name}: every value as the tool wrote it"


# --- a corrected re-upload publishes only what was not published before ------------------------------
def _orders_csv(rows: list[tuple[str, str, str, str]]) -> bytes:
    return ("order_id,buyer,amount,note\n" + "".join(",".join(r) + "\n" for r in rows)).encode()


def _with_three_bad_lines(n: int, tag: str) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """(the rows as they should be, the same file with rows 7, 20 and 33 broken)."""
    good = [(f"{tag}-{i}", f"buyer {i % 5}", str(i), f"note {i}") for i in range(1, n + 1)]
    broken = list(good)
    broken[6] = (good[6][0], good[6][1], "abc", good[6][3])      # line 8: amount is not a number
    broken[19] = (good[19][0], "", good[19][2], good[19][3])     # line 21: buyer missing
    broken[32] = (good[32][0], good[32][1], "-5", good[32][3])   # line 34: amount below 0
    return good, broken


def _assert_each_row_once_on_the_topic(b: Batch, good: list[tuple[str, str, str, str]]) -> None:
    on_topic = _topic_rows(b)
    assert len(on_topic) == len(good), f"{len(on_topic)} records on the topic for {len(good)} rows"
    assert len({message_id for message_id, _, _ in on_topic}) == len(good)
    got = sorted((p["order_id"], p["buyer"], str(p["amount"]), p["note"]) for _, _, p in on_topic)
    assert got == sorted(good), "every row once, the corrected ones with their corrected values"


def test_a_corrected_re_upload_under_the_same_name_publishes_only_the_rows_not_published_before(batch: Batch) -> None:
    n, name = 50, "partner-2026-12-03.csv"
    good, broken = _with_three_bad_lines(n, "s")
    _partner_file(batch, name, _orders_csv(broken), rows=n)
    first = batch.cli(*batch.import_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"failed {name}: 50 rows, 47 published" in " ".join(first.stdout.split())
    assert (batch.files / "failed" / name).exists()

    _partner_file(batch, name, _orders_csv(good), rows=n)  # the partner fixed the three lines: same name again
    second = batch.cli(*batch.import_args())
    assert second.returncode == 0, second.stdout + second.stderr
    _assert_each_row_once_on_the_topic(batch, good)
    assert f"done {name}: 50 rows, 3 published, 47 already published, 0 bad" in " ".join(second.stdout.split())
    assert batch.iso.sql("SELECT status, rows, bad_rows, published, already_published FROM streams_batch_imports "
                         "ORDER BY started_at") == [("failed", n, 3, 47, 0), ("done", n, 0, 3, 47)]


def test_a_corrected_file_under_a_new_name_publishes_only_new_rows_with_declared_id_columns(batch: Batch) -> None:
    n = 50
    good, broken = _with_three_bad_lines(n, "k")
    args = [*batch.import_args(), "--id-columns", "order_id"]
    _partner_file(batch, "orders-0930.csv", _orders_csv(broken), rows=n)
    typo = batch.cli(*batch.import_args(), "--id-columns", "order_no")
    assert typo.returncode == 0 and "id column(s) order_no not among the manifest's columns" in typo.stdout
    assert batch.published() == 0 and (batch.files / "orders-0930.csv").exists(), "left alone"
    first = batch.cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "failed orders-0930.csv: 50 rows, 47 published, 3 bad" in " ".join(first.stdout.split())

    # the partner's system names every export by its time: the corrected file comes under a new name
    _partner_file(batch, "orders-1015.csv", _orders_csv(good), rows=n)
    second = batch.cli(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "done orders-1015.csv: 50 rows, 3 published, 47 already published, 0 bad" in " ".join(second.stdout.split())
    _assert_each_row_once_on_the_topic(batch, good)


def test_published_ids_are_forgotten_after_the_retention(isolated: Isolated) -> None:
    """The published-id ledger stays bounded: ids older than the retention are deleted per source."""
    import uuid

    import psycopg

    from streams.batch import ledger

    with psycopg.connect(isolated.settings.dsn, autocommit=True) as conn:
        ledger.migrate(conn)
        old, fresh, other = ([str(uuid.uuid4()) for _ in range(n)] for n in (30, 20, 10))
        ledger.record_published(conn, "partner-a", "orders-1.csv", old + fresh)
        ledger.record_published(conn, "partner-b", "orders-1.csv", other)
        conn.execute("UPDATE streams_batch_published SET published_at = now() - interval '8 days' "
                     "WHERE message_id = ANY(%s::uuid[])", (old + other,))
        assert ledger.forget_published(conn, "partner-a", 7 * 24 * 3600, batch=7) == 30
        left = {(s, str(m)) for s, m in conn.execute("SELECT source, message_id FROM streams_batch_published")}
    assert left == {("partner-a", m) for m in fresh} | {("partner-b", m) for m in other}


def test_a_key_longer_than_an_envelope_key_is_a_bad_line_and_the_rest_flows(batch: Batch) -> None:
    """The key column's value becomes the envelope's key (at most 1,000 characters): a longer one is
    that line's error, reported like any other, not an import that stops half-way."""
    long_id = "o-" + "9" * 1000
    content = ("order_id,buyer,amount,note\n"
               "o-1,ann,10,fine\n"
               f"{long_id},bob,20,too long a key\n"
               "o-3,cy,30,last\n").encode()
    _partner_file(batch, "long-key.csv", content, rows=3)
    [result] = run(run_import(batch.settings, batch.spec()))
    assert (result.status, result.rows, result.published, result.bad_rows) == ("failed", 3, 2, 1), result
    assert [(e.line, e.column) for e in result.errors] == [(3, "order_id")]
    assert "a message key has at most 1,000" in result.errors[0].message
    assert batch.published() == 2
    assert batch.iso.sql("SELECT status, published FROM streams_batch_imports") == [("failed", 2)]


def test_every_imported_record_carries_the_files_import_span(batch: Batch) -> None:
    """With tracing on, one trace per imported file: each row's record is a child of the
    ``import <file>`` span (its context in the ``traceparent`` header)."""
    from streams import tracing
    from tests.spans import from_sdk, memory_provider

    _partner_file(batch, "traced.csv", b"order_id,buyer,amount,note\no-1,ann,10,\no-2,bob,20,hi\no-3,cy,30,x\n")
    provider, exporter = memory_provider("importer")
    with tracing.use(provider):
        [result] = run(run_import(batch.settings, batch.spec()))
    assert (result.status, result.published) == ("done", 3)
    [span] = [from_sdk(s) for s in exporter.get_finished_spans() if s.name == "import traced.csv"]
    parents = [dict(r.headers or ()).get("traceparent", b"").decode().split("-")[1:3] for r in read_topic(batch.iso,
                                                                                                        batch.topic)]
    assert parents == [[span.trace_id, span.span_id]] * 3
