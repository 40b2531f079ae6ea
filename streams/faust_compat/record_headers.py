"""Records whose header names are not UTF-8 must not stop a consumer.

Kafka header names are strings, but the protocol carries them as length-prefixed
bytes, and clients other than the JVM's (librdkafka and so kcat, hand-made
producers) will write any bytes there. aiokafka decodes every header name as
UTF-8 while it unpacks a fetched batch; one bad name makes ``getmany`` raise
``UnicodeDecodeError`` for the whole partition at every fetch, so a worker can
never get past that record (checked on this broker: a record whose header name
is ``b"\\xff\\xfe"`` fails every fetch of its partition).

:func:`install` wraps the record sets aiokafka's fetcher unpacks: batches are
read by aiokafka's own (C) reader as before, and only a batch that fails on a
header name is read again by aiokafka's pure-Python reader, with undecodable
names spelled with backslash escapes (``\\xff\\xfe``). Such a record gets one more
header, :data:`BAD_HEADER_NAMES`, listing them; the handler path parks it in
the dead-letter topic (reason ``bad_headers``), from where it can be replayed
with the escaped names.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from aiokafka.errors import CorruptRecordException

log = logging.getLogger(__name__)

#: added to a record whose header names were not UTF-8: the escaped names, comma-separated
BAD_HEADER_NAMES = "streams.bad_header_names"

#: bytes in front of every batch: base offset (int64) and batch length (int32)
_LOG_OVERHEAD = 12
_MAGIC_OFFSET = 16


def install() -> None:
    """Make aiokafka's fetcher unpack record sets through :class:`GuardedRecords` (once)."""
    from aiokafka.consumer import fetcher

    if getattr(fetcher, "_streams_guarded", False):
        return
    GuardedRecords.reader = fetcher.MemoryRecords
    fetcher.MemoryRecords = GuardedRecords  # the name the fetcher builds record sets with
    fetcher._streams_guarded = True


class GuardedRecords:
    """A fetched record set, read batch by batch like aiokafka's ``MemoryRecords``."""

    #: aiokafka's own record set class (set by :func:`install`)
    reader: Any = None

    __slots__ = ("_inner", "_pos", "_view")

    def __init__(self, data: bytes) -> None:
        self._inner = self.reader(data)
        self._view = memoryview(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return self._inner.size_in_bytes()

    def has_next(self) -> bool:
        return self._inner.has_next()

    def next_batch(self) -> Any:
        batch = self._inner.next_batch()
        if batch is None:
            return None
        start = self._pos
        end = start + _LOG_OVERHEAD + int.from_bytes(self._view[start + 8:start + _LOG_OVERHEAD], "big", signed=True)
        self._pos = end
        if self._view[start + _MAGIC_OFFSET] < 2:
            return batch  # message formats v0 and v1 have no headers
        return _GuardedBatch(batch, self._view[start:end])


class _GuardedBatch:
    """One batch: aiokafka's reader, and a tolerant re-read if a header name is not UTF-8."""

    __slots__ = ("_batch", "_raw")

    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker with next()
        return next(self._batch)

    def __iter__(self) -> Any:
        return self._records()

    def _records(self) -> Any:
        last = None
        try:
            for record in self._batch:
                last = record.offset
                yield record
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            # aiokafka's C reader raises the UnicodeDecodeError; its pure-Python one (no compiled
            # extensions) wraps it in CorruptRecordException, as it does real corruption
            if not isinstance(exc, UnicodeDecodeError) and not isinstance(exc.__cause__, UnicodeDecodeError):
                raise
            log.warning("a record after offset %s of a fetched batch (base offset %d) has a header name that "
                        "is not UTF-8 (%s); reading the batch again with escaped names", last,
                        self._batch.base_offset, exc)
            for record in _tolerant_batch(bytes(self._raw)):
                if last is None or record.offset > last:
                    yield record


def read_header_names(headers: Any) -> list[tuple[str, bytes | None]]:
    """Raw headers ``[(name bytes or str, value bytes or None)]`` as a consumer of this framework
    reads them: names decoded as UTF-8, names that are not spelled with backslash escapes and
    listed in a :data:`BAD_HEADER_NAMES` header (what :func:`install` does to fetched records;
    the test driver reads raw records through it)."""
    out: list[tuple[str, bytes | None]] = []
    escaped: list[str] = []
    for name, value in headers:
        if isinstance(name, str):
            text = name
        else:
            try:
                text = bytes(name).decode("utf-8")
            except UnicodeDecodeError:
                text = bytes(name).decode("utf-8", "backslashreplace")
                escaped.append(text)
        out.append((text, None if value is None else bytes(value)))
    if escaped:
        out.append((BAD_HEADER_NAMES, ",".join(escaped).encode()))
    return out


def _tolerant_batch(raw: bytes) -> Any:
    """Records of a v2 batch read by aiokafka's pure-Python reader, header names decoded leniently."""
    from aiokafka.record.default_records import _DefaultRecordBatchPy

    class TolerantBatch(_DefaultRecordBatchPy):
        def __init__(self, buffer: bytes) -> None:
            super().__init__(buffer)
            self._buffer: bytearray = _TolerantBuffer(self._buffer)

        def _maybe_uncompress(self) -> None:
            super()._maybe_uncompress()
            if not isinstance(self._buffer, _TolerantBuffer):
                self._buffer = _TolerantBuffer(self._buffer)

        def __next__(self) -> Any:
            _TolerantBytes.escaped = []
            record = super().__next__()
            if _TolerantBytes.escaped:
                record.headers.append((BAD_HEADER_NAMES, ",".join(_TolerantBytes.escaped).encode()))
            return record

    return TolerantBatch(raw)


class _TolerantBytes(bytes):
    """A slice of a record whose ``decode`` escapes what is not UTF-8 (and notes it)."""

    escaped: ClassVar[list[str]] = []

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        try:
            return bytes.decode(self, encoding, errors)
        except UnicodeDecodeError:
            text = bytes.decode(self, encoding, "backslashreplace")
            _TolerantBytes.escaped.append(text)
            return text


class _TolerantBuffer(bytearray):
    """A batch's bytes whose slices are :class:`_TolerantBytes`."""

    def __getitem__(self, index: Any) -> Any:
        item = bytearray.__getitem__(self, index)
        return _TolerantBytes(item) if isinstance(index, slice) else item
