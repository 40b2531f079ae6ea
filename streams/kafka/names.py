"""Names: which topic names Kafka takes, the topics the framework derives from a source topic
``T``, and the record headers it writes.

* ``T.dlq``: its dead-letter topic (records that could not be handled, parked);
* ``T.retry.<n>``: its delayed-retry topics, one per level of a handler's
  ``RetryPolicy.delayed_retries`` (``n`` counts from 1);
* the headers of records on retry topics (``retry.*``), of replayed dead letters
  (``replay.of``) and of dead letters parked without their value (``dlq.value_omitted``).
"""

from __future__ import annotations

import re

DLQ_SUFFIX = ".dlq"

# headers of records on retry topics
H_RETRY_LEVEL = "retry.level"
H_RETRY_DUE = "retry.due_at"
H_RETRY_ATTEMPTS = "retry.attempts"
H_RETRY_FIRST_FAILURE = "retry.first_failure"
H_ORIGIN_TOPIC = "retry.original.topic"
H_ORIGIN_PARTITION = "retry.original.partition"
H_ORIGIN_OFFSET = "retry.original.offset"
#: set on records replayed from a dead-letter topic
H_REPLAY_OF = "replay.of"
#: set on a dead letter parked without its value (its size); the value stays in the source topic
H_VALUE_OMITTED = "dlq.value_omitted"

_LEGAL = re.compile(r"[A-Za-z0-9._\-]{1,249}")


def topic_name_problem(name: str) -> str | None:
    """Why Kafka refuses ``name`` as a topic name, or None when it takes it."""
    if not _LEGAL.fullmatch(name) or name in (".", ".."):
        return f"invalid topic name {name!r}: use letters, digits, '.', '_' and '-' (at most 249)"
    return None


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
