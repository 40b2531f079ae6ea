"""A record (key, value, headers: what the relay sends to Kafka) as a Redis stream entry, and back.

Fields: ``value`` (the envelope's JSON, as on Kafka), ``key`` (absent for a keyless record),
``message_id`` (the envelope's, readable without parsing the value: ``XRANGE`` shows it) and one
``h:<name>`` field per record header.
"""

from __future__ import annotations

from streams.messages.envelope import HEADER_MESSAGE_ID

FIELD_VALUE = b"value"
FIELD_KEY = b"key"
FIELD_MESSAGE_ID = b"message_id"
HEADER_PREFIX = b"h:"


def to_fields(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> dict[bytes, bytes]:
    """The entry's fields for ``XADD``."""
    fields: dict[bytes, bytes] = {FIELD_VALUE: value}
    if key is not None:
        fields[FIELD_KEY] = key
    for name, raw in headers:
        fields[HEADER_PREFIX + name.encode()] = raw
        if name == HEADER_MESSAGE_ID:
            fields[FIELD_MESSAGE_ID] = raw
    return fields


def from_fields(fields: dict[bytes, bytes]) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of an entry; value None when the entry has no ``value`` field (an entry
    some other client wrote with fields of its own)."""
    headers = [(name[len(HEADER_PREFIX):].decode("utf-8", "replace"), raw)
               for name, raw in fields.items() if name.startswith(HEADER_PREFIX)]
    if FIELD_MESSAGE_ID in fields and not any(name == HEADER_MESSAGE_ID for name, _ in headers):
        headers.append((HEADER_MESSAGE_ID, fields[FIELD_MESSAGE_ID]))
    return fields.get(FIELD_KEY), fields.get(FIELD_VALUE), headers
