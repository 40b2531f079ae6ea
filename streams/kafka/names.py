"""Names of the topics the framework derives from a source topic ``T``.

* ``T.dlq``: its dead-letter topic (records that could not be handled, parked);
* ``T.retry.<n>``: its delayed-retry topics, one per level of a handler's
  ``RetryPolicy.delayed_retries`` (``n`` counts from 1).
"""

from __future__ import annotations

DLQ_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of ``topic`` (``topic`` itself if it already is one)."""
    return topic if topic.endswith(DLQ_SUFFIX) else f"{topic}{DLQ_SUFFIX}"


def source_of_dead_letter_topic(topic: str) -> str:
    """The source topic a dead-letter topic belongs to."""
    return topic.removesuffix(DLQ_SUFFIX)


def retry_topic(topic: str, level: int) -> str:
    """The delayed-retry topic of ``topic`` for retry level ``level`` (1, 2, ...)."""
    return f"{topic}.retry.{level}"


def retry_topics(topic: str, levels: int) -> list[str]:
    """Every delayed-retry topic of ``topic`` for a policy with ``levels`` delayed retries."""
    return [retry_topic(topic, level) for level in range(1, levels + 1)]
