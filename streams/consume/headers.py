"""Headers the framework writes and reads on a record, and the origin they describe.

A record on a retry topic carries where it came from (``retry.original.*``) and
how often it failed (``retry.*``); a replayed dead letter carries ``replay.of``;
a dead letter parked without its value carries ``dlq.value_omitted``. Only
records of retry topics are trusted to carry an origin: the same headers on a
source topic (written by some other client) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.errors import DecodeError, DecodeReason
from streams.faust_compat.record_headers import BAD_HEADER_NAMES
from streams.kafka.names import (
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REPLAY_OF,
    H_RETRY_ATTEMPTS,
    H_RETRY_FIRST_FAILURE,
    H_RETRY_LEVEL,
)


@dataclass(frozen=True)
class Origin:
    """The source record a (possibly retried) record stands for."""

    topic: str
    partition: int
    offset: int
    level: int  # 0 = source topic, n = retry topic n
    attempts_before: int
    first_failure: float | None
    replayed: bool


def headers_dict(message: Any) -> dict[str, bytes]:
    """A record's headers as ``{name: bytes}`` (a null header value reads as ``b""``)."""
    headers = getattr(message, "headers", None) or []
    items = headers.items() if isinstance(headers, dict) else headers
    return {str(k): (v if isinstance(v, bytes) else b"" if v is None else str(v).encode()) for k, v in items}


def origin_of(message: Any, *, on_retry_topic: bool = True, headers: dict[str, bytes] | None = None) -> Origin:
    """The source record ``message`` stands for. Only records of a retry topic
    (``on_retry_topic``) carry their origin in ``retry.*`` headers; on a source topic
    such headers (written by some other client) are ignored. Headers of a retry
    record that cannot be read, and header names that were not UTF-8 (see
    :mod:`streams.faust_compat.record_headers`), raise ``DecodeError(bad_headers)``.
    ``headers``: the record's headers as :func:`headers_dict` reads them, if already read."""
    h = headers_dict(message) if headers is None else headers
    if BAD_HEADER_NAMES in h:
        raise DecodeError(DecodeReason.BAD_HEADERS, "header name(s) that are not UTF-8 (shown escaped): "
                          + h[BAD_HEADER_NAMES].decode("utf-8", "replace"))
    replayed = H_REPLAY_OF in h
    if not on_retry_topic or not h.get(H_RETRY_LEVEL):
        return Origin(message.topic, message.partition, message.offset, 0, 0, None, replayed)
    try:
        return Origin(
            h[H_ORIGIN_TOPIC].decode(), int(h[H_ORIGIN_PARTITION]), int(h[H_ORIGIN_OFFSET]),
            int(h[H_RETRY_LEVEL]), int(h.get(H_RETRY_ATTEMPTS) or 0),
            float(h.get(H_RETRY_FIRST_FAILURE) or 0) or None, replayed,
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(DecodeReason.BAD_HEADERS, f"the retry headers cannot be read ({type(exc).__name__}: "
                          f"{exc})") from None


def record_origin(message: Any) -> Origin:
    """Where ``message`` itself sits (the origin of a record whose headers cannot be read)."""
    return Origin(message.topic, message.partition, message.offset, 0, 0, None, False)
