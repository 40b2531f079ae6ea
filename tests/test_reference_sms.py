"""The reference SMS handler against the flaky provider simulator: outages pause, nothing is parked, no SMS twice.

The provider runs in the test process (a real HTTP server on a local port); the
handler runs in a worker process on real Kafka. What is checked comes from the
provider (what it sent, and to whom), the broker (offsets, the dead-letter
topic) and the worker's own counters (``/api/metrics``).
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from agents.sms_provider import SmsProvider
from streams.dev.process import free_port
from streams.kafka.admin import TopicSpec, committed_offsets, end_offsets, ensure_topics, produce_envelopes
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import PARTITIONS, TOPIC, committed_to_end, orders

GROUP_SUFFIX = ".sms"


def _setup(iso: Isolated) -> str:
    topic = iso.topic(TOPIC)
    run(ensure_topics(iso.settings, [TopicSpec(topic, PARTITIONS), TopicSpec(topic + ".dlq", PARTITIONS)]))
    return topic


def _worker(iso: Isolated, provider_url: str, port: int, rate: str = "80"):
    return iso.worker("sms", args=["--web-port", str(port)], STREAMS_WORKER_APP="agents.sms:app",
                      AGENTS_SMS_PROVIDER_URL=provider_url, AGENTS_SMS_RATE=rate).start()


def _counters(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/metrics", timeout=10) as resp:
        return json.loads(resp.read())["totals"]


def _sent(provider: SmsProvider, tag: str) -> int:
    return sum(text.startswith(f"Order {tag}-") for _, text in list(provider.messages.values()))


def _caught_up(iso: Isolated, topic: str) -> bool:
    return committed_to_end(iso.settings, iso.settings.app_id + GROUP_SUFFIX, topic)


@pytest.mark.timeout(300)
def test_rate_limits_outage_and_lost_replies_send_each_sms_once(isolated: Isolated) -> None:
    topic = _setup(isolated)
    # every trouble on a schedule counted in requests, so it happens however fast the worker is
    provider = SmsProvider(port=free_port(), rate=1000, burst=100, outage_at=80, outage_seconds=4,
                           lost_reply_every=15, throttle_at=30, throttle_count=5).start()
    try:
        port = free_port()
        worker = _worker(isolated, provider.url, port)
        worker.wait_ready()
        envelopes = orders(400, tag="sms")
        run(produce_envelopes(isolated.settings, topic, envelopes))
        wait_for(lambda: _sent(provider, "sms") >= 400, 180, what="400 SMS")
        wait_for(lambda: _caught_up(isolated, topic), 90, what="committed offsets at the log end")
        counters = _counters(port)
        stats = provider.snapshot()
    finally:
        provider.stop()
    assert stats["sent_twice"] == 0, "no phone got the same text twice"
    assert len(provider.messages) == 400 and set(provider.messages) == {e.message_id for e in envelopes}
    # every trouble really happened, and was handled the way it should
    assert stats["unavailable"] >= 3 and stats["outages"] == 1
    assert stats["throttled"] >= 5 and counters.get("sink_throttled", 0) >= 5
    assert stats["lost_replies"] >= 400 // 15 - 1
    assert stats["repeats"] >= stats["lost_replies"], "each lost reply was retried with the same idempotency key"
    assert counters.get("sink_failures", 0) >= 3 and counters.get("sink_pauses", 0) >= 1, counters
    assert counters.get("dead_lettered", 0) == 0
    assert sum(run(end_offsets(isolated.settings, topic + ".dlq")).values()) == 0, "nothing parked"
    assert counters["handled"] == 400


@pytest.mark.timeout(300)
def test_provider_down_pauses_and_parks_nothing_until_it_is_back(isolated: Isolated) -> None:
    topic = _setup(isolated)
    provider = SmsProvider(port=free_port(), rate=500, burst=50)  # not started: connections refused
    port = free_port()
    worker = _worker(isolated, provider.url, port)
    worker.wait_ready()
    envelopes = orders(150, tag="down")
    run(produce_envelopes(isolated.settings, topic, envelopes))
    wait_for(lambda: _counters(port).get("sink_failures", 0) >= 3, 60, what="the breaker to count failures")
    time.sleep(6)  # the outage lasts: the partitions stay paused and nothing is parked or committed past
    during = _counters(port)
    group = isolated.settings.app_id + GROUP_SUFFIX
    committed = sum(run(committed_offsets(isolated.settings, group, topic)).values())
    assert during.get("handled", 0) == 0 and during.get("dead_lettered", 0) == 0
    assert during.get("retried", 0) == 0, "breaker failures use up no attempts"
    assert during.get("sink_pauses", 0) >= 1
    assert committed == 0
    assert sum(run(end_offsets(isolated.settings, topic + ".dlq")).values()) == 0

    provider.start()  # the provider is back
    try:
        wait_for(lambda: _sent(provider, "down") >= 150, 120, what="150 SMS after recovery")
        wait_for(lambda: _caught_up(isolated, topic), 90, what="committed offsets at the log end")
        assert provider.snapshot()["sent_twice"] == 0
        assert sum(run(end_offsets(isolated.settings, topic + ".dlq")).values()) == 0
        assert _counters(port)["handled"] == 150
    finally:
        provider.stop()
