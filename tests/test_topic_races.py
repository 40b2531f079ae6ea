"""A worker and its topics' creation, on the session's real broker.

The races of the hardening issue, reproduced deterministically: a worker whose
group formed before its topics existed (assigned nothing of them), and a worker
whose table changelogs did not exist when it started handling records (Faust
took them for 0-partition topics and raised ``PartitionsMismatch``). With
``STREAMS_CREATE_TOPICS=false`` the worker cannot create them itself, so the
test decides exactly when they appear. And the everyday path — a worker that
creates its own topics on a fresh cluster — many times in a row.
"""

from __future__ import annotations

import uuid

from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from streams.kafka.clients import admin_client
from streams.kafka.names import dead_letter_topic, retry_topics
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import (
    PARTITIONS,
    TOPIC,
    create_topics,
    orders,
    push_counts,
    rows_per_message,
    wait_committed_to_end,
)
from tests.web_helpers import http, web_worker


def _changelogs(iso: Isolated) -> list[TopicSpec]:
    app_id = iso.settings.app_id
    return [TopicSpec(f"{app_id}-{table}-changelog", PARTITIONS, config={"cleanup.policy": "compact"})
            for table in ("processed-push_seller", "order-push-status")]


def _log_has(worker, text: str) -> bool:
    return text in worker.log_text()


async def _topics(iso: Isolated) -> set[str]:
    admin = admin_client(iso.settings)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_a_worker_says_ready_only_once_every_topic_it_writes_to_exists(isolated: Isolated) -> None:
    """``Ready`` in the log means a handler's output topic, its dead-letter topic and its retry
    topics exist: asked once, right when the worker said it (no polling). The output topic
    was created by a task Faust only schedules before it says ``Ready``; in CI a test read it
    right after and found no such topic."""
    iso = isolated
    worker = iso.worker("jobs", STREAMS_WORKER_APP="tests.apps.jobs_app:app").start()
    worker.wait_ready(interval=0.02)
    source = iso.topic("jobs")
    written = {iso.topic("jobs.done"), dead_letter_topic(source), *retry_topics(source, 2)}
    missing = written - run(_topics(iso))
    assert not missing, f"the worker said Ready while {sorted(missing)} did not exist"
    assert worker.running()


def test_a_worker_started_before_its_topics_exist_consumes_once_they_do(isolated: Isolated) -> None:
    iso = isolated
    worker, url = web_worker(iso, "w1", STREAMS_CREATE_TOPICS="false")
    worker.start()
    # the group forms without the topics: nothing of them can be assigned, and the worker says so
    wait_for(lambda: _log_has(worker, "waiting for topic(s)"), 60, what="the worker waiting for its topics")
    ready = http(f"{url}/health/ready")
    assert ready.status == 503, ready.text
    assert any(r.startswith("waiting for topics: ") and iso.topic(TOPIC) in r for r in ready.json["reasons"])

    create_topics(iso)
    run(ensure_topics(iso.settings, _changelogs(iso)))
    envelopes = orders(300)
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), envelopes))
    wait_for(lambda: push_counts(iso)[1] >= 300, 60, what="300 seller pushes")
    wait_committed_to_end(iso)
    assert push_counts(iso) == (300, 300)
    wait_for(lambda: http(f"{url}/health/ready").status == 200, 30, what="the worker ready")
    assert worker.running()
    assert "now in the cluster metadata" in worker.log_text()


def test_a_changelog_missing_at_the_first_write_does_not_stop_the_worker(isolated: Isolated) -> None:
    iso = isolated
    create_topics(iso)  # the source exists; the tables' changelogs do not
    worker = iso.worker(STREAMS_CREATE_TOPICS="false").start()
    worker.wait_ready()
    envelopes = orders(200)
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), envelopes))
    # records are handled while the changelogs are missing: the table write waits instead of failing
    wait_for(lambda: _log_has(worker, "is not in the consumer's metadata yet"), 60,
             what="a table write meeting the missing changelog")
    run(ensure_topics(iso.settings, _changelogs(iso)))
    wait_for(lambda: push_counts(iso)[1] >= 200, 90, what="200 seller pushes")
    wait_committed_to_end(iso)
    text = worker.log_text()
    assert "PartitionsMismatch" not in text
    assert worker.running()
    assert push_counts(iso) == (200, 200)
    assert max(rows_per_message(iso).values()) == 1
    assert iso.sql("SELECT count(*) FROM seller_push_notifications WHERE message_id = ANY(%s)",
                   ([e.message_id for e in envelopes],))[0][0] == 200


def test_a_worker_creating_its_topics_on_a_fresh_cluster_consumes_every_time(isolated: Isolated) -> None:
    """Before the fix about one start in a few was assigned nothing of its freshly created source
    topic, or crashed on its freshly created changelog; each round here is a new app id and new
    topics (a fresh cluster as far as the group can tell)."""
    iso = isolated
    for round_ in range(5):
        tag = uuid.uuid4().hex[:6]
        env = {"STREAMS_APP_ID": f"{iso.settings.app_id}-{tag}", "STREAMS_TOPIC_PREFIX": f"r{tag}."}
        settings = iso.settings.model_copy(update={"app_id": env["STREAMS_APP_ID"],
                                                   "topic_prefix": env["STREAMS_TOPIC_PREFIX"]})
        worker = iso.worker(f"round-{round_}", **env).start()
        worker.wait_ready()
        run(produce_envelopes(settings, f"r{tag}.{TOPIC}", orders(60, tag=tag)))
        wait_for(lambda: iso.sql("SELECT count(*) FROM seller_push_notifications WHERE order_id LIKE %s",
                                 (f"{tag}-%",))[0][0] == 60 if push_counts(iso)[0] else False, 60,
                 what=f"round {round_}: 60 seller pushes")
        text = worker.log_text()
        assert "Ignoring missing topic" not in text, f"round {round_}: {worker.log_file}"
        assert "PartitionsMismatch" not in text
        worker.stop()
