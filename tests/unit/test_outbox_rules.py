"""Outbox rules that need no server: topic names the writer takes, the waiting-for-topic figures."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.messages.envelope import event
from streams.metrics import Metrics, render_prometheus
from streams.outbox.stats import OutboxStats
from streams.outbox.writer import OutboxError, row_values


@pytest.mark.parametrize("topic", ["orders.order-placed", "a", "A_b-c.9", "x" * 249])
def test_writer_takes_legal_topic_names(topic):
    assert row_values(event("X", {}), topic)["topic"] == topic


@pytest.mark.parametrize("topic", ["with space", "slash/topic", "ümlaut", ".", "..", "x" * 250, "tab\t"])
def test_writer_refuses_names_kafka_refuses(topic):
    with pytest.raises(OutboxError, match="invalid topic name"):
        row_values(event("X", {}), topic)


def test_waiting_topics_reach_json_and_metrics():
    from streams.web.api import WebApi

    since = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    stats = OutboxStats(table="streams_outbox", exists=True, pending=7, waiting=5,
                        waiting_topics={"points.grant-points": {"rows": 5, "since": since}})
    data = stats.to_dict()
    assert data["waiting"] == 5
    assert data["waiting_topics"] == {"points.grant-points": {"rows": 5, "since": "2026-12-01T10:00:00+00:00"}}
    text = render_prometheus(Metrics(), WebApi._outbox_gauges(data)).decode()
    assert 'streams_outbox_waiting_for_topic{table="streams_outbox",topic="points.grant-points"} 5.0' in text
    assert 'streams_outbox_pending{table="streams_outbox"} 7.0' in text
