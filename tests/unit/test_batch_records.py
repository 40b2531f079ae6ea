"""An import's records: the encoder writes what the envelope itself would, and the spool gives back
what went in, in order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from streams.batch.records import MAX_KEY, EnvelopeEncoder, Spool
from streams.messages.registry import MessageRegistry

registry = MessageRegistry()


@registry.event("ImportedOrder")
class ImportedOrder(BaseModel):
    order_id: str
    amount: Decimal
    note: str | None = None
    tags: list[str] = []


@registry.command("ImportedCommand", version=3)
class ImportedCommand(BaseModel):
    n: int


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def _same(encoder: EnvelopeEncoder, message_id: str, key: str | None, line: int, payload: BaseModel,
          file: str) -> None:
    value = encoder.value(message_id, key, line, payload)
    data = json.loads(value)
    occurred = datetime.fromisoformat(data["occurred_at"])
    assert occurred.tzinfo is not None and abs((datetime.now(UTC) - occurred).total_seconds()) < 60
    envelope = registry.envelope(payload, key=key, message_id=message_id, source="batch:partner",
                                 headers={"batch.file": file, "batch.line": str(line)}, occurred_at=occurred)
    assert data == json.loads(envelope.to_json())
    assert encoder.record_headers(message_id) == envelope.kafka_headers()
    decoded = registry.decode(value)
    assert (decoded.payload, decoded.key, decoded.message_id) == (payload, key, message_id)


@settings(max_examples=150, deadline=None)
@given(order_id=text, note=st.none() | text, key=st.none() | text, file=text.filter(bool),
       amount=st.decimals(allow_nan=False, allow_infinity=False, places=3), tags=st.lists(text, max_size=3),
       line=st.integers(1, 10**9))
def test_the_value_is_the_envelopes_own_json(order_id, note, key, file, amount, tags, line) -> None:
    encoder = EnvelopeEncoder(registry, "ImportedOrder", source="batch:partner", file=file)
    payload = ImportedOrder(order_id=order_id, amount=amount, note=note, tags=tags)
    _same(encoder, "6f1c7c2e-5a4e-5d2b-9b1e-3f0f8d4b2a11", key, line, payload, file)


def test_kind_and_schema_version_come_from_the_registry() -> None:
    encoder = EnvelopeEncoder(registry, "ImportedCommand", source="batch:partner", file='a "quoted", file.csv')
    _same(encoder, "2c0b0d7e-3c4a-5e6f-8a9b-0c1d2e3f4a5b", 'k "1"', 7, ImportedCommand(n=5), 'a "quoted", file.csv')
    assert dict(encoder.record_headers("x"))["schema_version"] == b"3"
    assert MAX_KEY == 1000


def test_the_spool_gives_back_every_record_in_order(tmp_path) -> None:
    spool = Spool(tmp_path)
    records = [(None if i % 7 == 0 else f"k{i}".encode(), b"v" * (i % 50), f"id-{i}") for i in range(5 * Spool.CHUNK + 3)]
    for record in records:
        spool.add(*record)
    assert spool.count == len(records)
    assert [r for chunk in spool.chunks() for r in chunk] == records
    spool.close()
    assert list(tmp_path.iterdir()) == [], "nothing left on disk"


@settings(max_examples=500, deadline=None)
@given(key=st.binary(max_size=64))
def test_the_partitioner_hash_is_kafkas(key: bytes) -> None:
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    from streams.batch.publish import murmur2

    assert murmur2(key) == aiokafka_murmur2(key)
    assert murmur2(b"order-12345") == aiokafka_murmur2(b"order-12345")
