"""Non-blocking delayed retries through retry topics, on a real broker and a worker process."""

from __future__ import annotations

from streams.kafka.admin import produce_envelopes
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import read_topic


def test_failing_messages_come_back_after_their_delay_without_blocking_the_partition(isolated: Isolated) -> None:
    from tests.apps.retry_app import Job, registry

    _make_tables(isolated)
    worker = isolated.worker("w", TEST_FAILURES="2", TEST_RETRY_GATE="1")
    worker.args = ["--without-web", "--app", "tests.apps.retry_app:app"]
    worker.start()
    worker.wait_ready()
    envelopes = [registry.envelope(Job(n=i), key=f"job-{i}") for i in range(30)]
    run(produce_envelopes(isolated.settings, isolated.topic("jobs"), envelopes))
    # the retries wait at a gate until every first attempt happened: a source partition held up by its
    # retries (the defect this test is about) would never get there
    wait_for(lambda: _has_table(isolated) and isolated.sql("SELECT count(*) FROM attempts WHERE level = 0")[0][0] >= 30,
             60, what="every first attempt, with the retries held at the gate")
    isolated.sql("INSERT INTO retry_gate VALUES (clock_timestamp())")

    def done():
        rows = isolated.sql("SELECT count(*) FROM attempts WHERE ok") if _has_table(isolated) else [(0,)]
        return rows[0][0] >= 30
    wait_for(done, 90, what="every job handled after two delayed retries")
    rows = isolated.sql("SELECT message_id, level, ok, at FROM attempts ORDER BY message_id, at")
    by_id: dict[str, list] = {}
    for message_id, level, ok, at in rows:
        by_id.setdefault(message_id, []).append((level, ok, at))
    assert set(by_id) == {e.message_id for e in envelopes}
    for attempts in by_id.values():
        assert [(lvl, ok) for lvl, ok, _ in attempts] == [(0, False), (1, False), (2, True)]
        # each level waited for its delay (1 s) before trying again
        assert (attempts[1][2] - attempts[0][2]).total_seconds() >= 0.9
        assert (attempts[2][2] - attempts[1][2]).total_seconds() >= 0.9
    # the source partitions moved on at once: every first attempt happened before any retry
    first_attempts = [a[0][2] for a in by_id.values()]
    retries = [a[1][2] for a in by_id.values()]
    assert max(first_attempts) < min(retries)
    for level in (1, 2):
        copies = read_topic(isolated, isolated.topic(f"jobs.retry.{level}"))
        assert len(copies) == 30
        h = dict(copies[0].headers)
        assert h["retry.level"] == str(level).encode() and b"fails on purpose" in h["retry.error"]
    assert read_topic(isolated, isolated.topic("jobs.dlq")) == []
    worker.stop()


def test_a_message_failing_every_level_is_dead_lettered(isolated: Isolated) -> None:
    from tests.apps.retry_app import Job, registry

    _make_tables(isolated)
    worker = isolated.worker("w", TEST_FAILURES="99")
    worker.args = ["--without-web", "--app", "tests.apps.retry_app:app"]
    worker.start()
    worker.wait_ready()
    envelopes = [registry.envelope(Job(n=i), key=f"job-{i}") for i in range(5)]
    run(produce_envelopes(isolated.settings, isolated.topic("jobs"), envelopes))
    def dead_letters() -> list:
        try:
            return read_topic(isolated, isolated.topic("jobs.dlq"))
        except LookupError:  # the worker declares its dead-letter topic just after it says Ready
            return []
    parked = wait_for(lambda: (r := dead_letters()) and len(r) >= 5 and r, 90, what="dead letters after the last level")
    assert len(parked) == 5
    h = dict(parked[0].headers)
    assert h["dlq.attempts"] == b"3" and h["dlq.original.topic"].decode() == isolated.topic("jobs")
    assert not any(k.startswith("retry.") for k in h)
    worker.stop()


def _make_tables(iso: Isolated) -> None:
    """The app's tables before its handlers run (its own CREATE ... IF NOT EXISTS from three partitions
    at once can race on PostgreSQL's catalog: a UniqueViolation would count as a failed attempt)."""
    iso.sql("CREATE TABLE IF NOT EXISTS attempts (message_id text, level int, ok bool, at timestamptz DEFAULT "
            "clock_timestamp())")
    iso.sql("CREATE TABLE IF NOT EXISTS retry_gate (opened_at timestamptz)")


def _has_table(iso: Isolated) -> bool:
    return iso.sql("SELECT to_regclass('attempts') IS NOT NULL")[0][0]
