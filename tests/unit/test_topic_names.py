"""Derived topic names."""

from __future__ import annotations

from streams.kafka.names import dead_letter_topic, retry_topic, retry_topics, source_of_dead_letter_topic


def test_dead_letter_topic_of_a_source_or_of_itself() -> None:
    assert dead_letter_topic("orders.placed") == "orders.placed.dlq"
    assert dead_letter_topic("orders.placed.dlq") == "orders.placed.dlq"
    assert source_of_dead_letter_topic("orders.placed.dlq") == "orders.placed"


def test_retry_topics_count_from_one() -> None:
    assert retry_topic("t", 2) == "t.retry.2"
    assert retry_topics("t", 2) == ["t.retry.1", "t.retry.2"]
    assert retry_topics("t", 0) == []
