"""The Kafka records of one import: envelopes encoded once per row, spooled until the file is accepted.

:class:`EnvelopeEncoder` writes the record value of a row's envelope — the bytes
:meth:`Envelope.to_json <streams.messages.envelope.Envelope.to_json>` gives for it —
from a payload the registered model already validated, without building (and
validating) an :class:`~streams.messages.envelope.Envelope` per row: the envelope is
built once per file with placeholder values, serialised, and each row's id, time, key,
line and payload go into the gaps. :class:`Spool` keeps the encoded records of a file
on disk (an unlinked temporary file, in chunks) while the file is parsed, so that
nothing is published before the whole file was read and its count checked.
"""

from __future__ import annotations

import json
import marshal
import struct
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from streams.messages.envelope import HEADER_MESSAGE_ID, SCHEMA_VERSION, Envelope
from streams.messages.registry import MessageRegistry

#: the key's limit of :class:`~streams.messages.envelope.Envelope`
MAX_KEY = Envelope.model_fields["key"].metadata[0].max_length
_TIME = TypeAdapter(datetime)
_MID, _TS, _KEY, _LINE, _PAYLOAD = "@@mid@@", "@@occurred@@", "@@key@@", "@@line@@", "@@payload@@"
#: the order in which :meth:`EnvelopeEncoder.value` makes the gaps' bytes
FILL_ORDER = (_MID, _TS, _KEY, _LINE, _PAYLOAD)
_KEY_TEXT = json.JSONEncoder(ensure_ascii=False).encode  # a key as the envelope's JSON writes it


class EnvelopeEncoder:
    """Record values and headers of the envelopes of one file's rows (one registered type)."""

    def __init__(self, registry: MessageRegistry, message_type: str, *, source: str, file: str) -> None:
        spec = registry.spec(message_type)
        self.model: type[BaseModel] = spec.model
        self._serialize = spec.model.__pydantic_serializer__.to_json
        when = datetime(2000, 1, 1, tzinfo=UTC)
        template = Envelope(message_id=_MID, message_type=spec.message_type, kind=spec.kind, occurred_at=when,
                            key=_KEY, payload=_PAYLOAD, source=source, correlation_id=None, causation_id=None,
                            headers={"batch.file": file, "batch.line": _LINE,
                                     **({SCHEMA_VERSION: str(spec.version)} if spec.version > 1 else {})})
        wire = template.to_json()
        gaps = {f'"{_MID}"'.encode(): _MID, _TIME.dump_json(when): _TS, f'"{_KEY}"'.encode(): _KEY,
                f'"{_LINE}"'.encode(): _LINE, f'"{_PAYLOAD}"'.encode(): _PAYLOAD}
        assert all(wire.count(text) == 1 for text in gaps), "a placeholder appears in the envelope twice"
        # the envelope's bytes as a %-template (its own % doubled), gaps in the order they appear
        order = [gaps[text] for _, text in sorted((wire.index(text), text) for text in gaps)]
        pattern = wire.replace(b"%", b"%%")
        for text in gaps:
            pattern = pattern.replace(text, b"%s")
        self._pattern = pattern
        self._in_order = itemgetter(*(FILL_ORDER.index(name) for name in order))
        #: the record headers of every row but the message id (which comes first)
        self.headers = template.kafka_headers()[1:]
        self.stamp()

    def stamp(self) -> None:
        """Take the current time as ``occurred_at`` of the rows encoded from now on."""
        self._now = _TIME.dump_json(datetime.now(UTC))

    def value(self, message_id: str, key: str | None, line: int, payload: BaseModel) -> bytes:
        """The record value of a row's envelope (``payload``: an instance of the registered model)."""
        return self._pattern % self._in_order((
            b'"' + message_id.encode() + b'"', self._now, _KEY_TEXT(key).encode() if key is not None else b"null",
            b'"%d"' % line, self._serialize(payload)))

    def record_headers(self, message_id: str) -> list[tuple[str, bytes]]:
        """The record headers of a row's envelope."""
        return [(HEADER_MESSAGE_ID, message_id.encode()), *self.headers]


_LENGTH = struct.Struct("<Q")
#: one spooled row: (record key, record value, message id)
Record = tuple[bytes | None, bytes, str]


class Spool:
    """Encoded records of one file, in order, in an unlinked temporary file (gone on close or a crash)."""

    CHUNK = 2000

    def __init__(self, folder: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=folder, prefix="spool-")  # noqa: SIM115 - closed by close()
        self._chunk: list[Record] = []
        self.count = 0

    def add(self, key: bytes | None, value: bytes, message_id: str) -> None:
        self._chunk.append((key, value, message_id))
        self.count += 1
        if len(self._chunk) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._chunk:
            blob = marshal.dumps(self._chunk)
            self._file.write(_LENGTH.pack(len(blob)))
            self._file.write(blob)
            self._chunk = []

    def chunks(self) -> Iterator[list[Record]]:
        """The records, in the order added, a chunk at a time."""
        self._flush()
        self._file.seek(0)
        # whole blobs read, then unmarshalled: marshal.load on the file reads it in small pieces
        while header := self._file.read(_LENGTH.size):
            yield marshal.loads(self._file.read(_LENGTH.unpack(header)[0]))

    def close(self) -> None:
        self._file.close()
