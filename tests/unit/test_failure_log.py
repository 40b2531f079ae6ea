"""Reading dead letters never fails on the bytes they hold: the failure log shows what it can
of a record that was parked *because* it could not be read (deeply nested, huge, not UTF-8)."""

from __future__ import annotations

import json

import pytest

from streams.kafka.failure_log import DeadLetter
from streams.messages.registry import DecodeLimits


def letter(value: bytes | None, **headers: bytes) -> DeadLetter:
    return DeadLetter("orders.dlq", 1, 7, b"k", value, {"dlq.reason": b"too_deep", **headers}, 1796191154068)


@pytest.mark.parametrize("value", [
    b"[" * 50_000 + b"]" * 50_000,
    b'{"message_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"a":' * 30_000 + b"1" + b"}" * 30_000,
    b"9" * 10_000,
    b"\xff\xfe" + b"x" * 10,
    b"",
    None,
])
def test_a_parked_value_no_parser_takes_still_lists_and_shows(value: bytes | None) -> None:
    dl = letter(value)
    summary = dl.summary()
    assert summary["message_id"] is None and summary["reason"] == "too_deep"
    assert json.loads(json.dumps(summary)) == summary
    shown = json.dumps(dl.details())
    assert "orders.dlq@1:7" in shown


def test_the_message_id_is_read_from_the_value_within_the_limits_only() -> None:
    value = json.dumps({"message_id": "m-1", "message_type": "OrderPlaced", "payload": [[[[1]]]]}).encode()
    assert letter(value).message_id == "m-1" and letter(value).message_type == "OrderPlaced"
    tight = letter(value)
    tight.limits = DecodeLimits(max_value_bytes=1024, max_depth=3)
    assert tight.message_id is None  # over the depth limit: not parsed, not guessed
    assert letter(value, message_id=b"from-header").message_id == "from-header"
