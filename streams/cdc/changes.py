"""Debezium change events as typed messages.

A topic of Debezium's change events (``<prefix>.<schema>.<table>``) is declared with
:meth:`streams.app.StreamsApp.changes` and handled like any other topic; the handler
gets an ``Envelope[ChangeEvent[Row]]``::

    class Order(BaseModel):
        id: int
        status: str

    orders = app.changes("cdc.shop.public.orders", Order)

    @app.handler(orders)
    async def on_order(message: Envelope[ChangeEvent[Order]], delivery: Delivery) -> None:
        change = message.payload
        if change.op is Operation.DELETE: ...
        row = change.after          # an Order (None for a delete)

Each event's ``message_id`` is made from where it sits in the database's log —
table, LSN, transaction id, operation and primary key — so a re-delivery of the same
change (Connect re-sends what it had not committed when it crashed: a whole
transaction twice) has the same id and the processed-ID table drops it. A snapshot
read has no stable position (a snapshot interrupted by a crash starts over at a new
LSN): its id is the table, the key and the row read, so an unchanged row read again
is dropped and a changed one handled. Several
changes can share an LSN (a snapshot's rows, the rows of one COPY): the key tells
them apart (the primary key, or the key columns declared for a table without one:
``CdcSpec.key_columns``), or for an event without a record key the row itself (so two
identical rows of one COPY count as one change).

What is not a change of a declared table is decided here, never by a crash:

* a tombstone (the null value Debezium writes after a delete for log compaction):
  acknowledged without calling the handler, counted ``tombstone``;
* not JSON, not a change event, an unknown operation: parked (``not_change_event``);
* a change of a table the topic was not declared with: parked (``unknown_table``);
* a row the model no longer accepts (a column dropped, renamed or retyped): parked
  (``schema_change``) with the failing columns, to replay once the model follows.
  An added column is ignored by the model and does not stop anything.

Column values arrive as the generated connector config sets them (base64 ``bytea``,
decimal text, ISO 8601 dates, times, timestamps and intervals, JSON text) and are
converted by the type of the row model's field they go to (:mod:`streams.cdc.values`):
``bytes``, ``Decimal``, ``date``, a naive ``time``, ``NaiveDatetime`` or an aware
``datetime``, ``timedelta``, ``dict``/``list`` or ``pydantic.Json[...]``.

Rows of a delete (and the ``before`` of an update) carry only the primary key
unless the table has ``REPLICA IDENTITY FULL``; when such a ``before`` does not fit
the model it is ``None`` and its columns are in ``before_columns``; ``key`` always
holds the primary key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from streams.cdc.values import RowConverter
from streams.errors import DecodeError, DecodeReason
from streams.messages.envelope import Envelope, Kind
from streams.messages.registry import DEFAULT_LIMITS, DecodeLimits, parse_json

R = TypeVar("R", bound=BaseModel)

#: message types of change events are ``change:<schema>.<table>``
MESSAGE_TYPE_PREFIX = "change:"


class Operation(StrEnum):
    """What happened to the row (Debezium's ``op``)."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # read by a snapshot
    TRUNCATE = "t"


class SourcePosition(BaseModel):
    """Where the change sits in the database's log (Debezium's ``source`` block)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    connector: str | None = None
    name: str | None = Field(None, description="The connector's topic prefix.")
    db: str | None = None
    schema_name: str | None = Field(None, alias="schema", description="PostgreSQL's schema (MySQL has none: the db).")
    table: str
    lsn: int | None = Field(None, description="Log sequence number of the change (PostgreSQL).")
    tx_id: int | None = Field(None, alias="txId")
    file: str | None = Field(None, description="Binlog file of the change's event (MySQL / MariaDB).")
    pos: int | None = Field(None, description="Byte position of the change's event in the binlog file.")
    row: int | None = Field(None, description="The row's index within its binlog event.")
    gtid: str | None = Field(None, description="GTID of the change's transaction (MySQL / MariaDB).")
    server_id: int | None = Field(None, description="Id of the server that wrote the event.")
    ts_ms: int | None = Field(None, description="Commit time in the database, ms since the epoch.")
    snapshot: str | None = Field(None, description="true/first/last/... while snapshotting, else false.")

    @model_validator(mode="after")
    def _names_its_table(self) -> "SourcePosition":
        if self.schema_name is None and self.db is None:
            raise ValueError("the source block names no schema (PostgreSQL) or db (MySQL)")
        return self

    @property
    def qualified_table(self) -> str:
        """``schema.table`` (PostgreSQL) or ``database.table`` (MySQL / MariaDB)."""
        return f"{self.schema_name if self.schema_name is not None else self.db}.{self.table}"

    @property
    def in_snapshot(self) -> bool:
        return self.snapshot not in (None, "false")

    @property
    def committed_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.ts_ms / 1000, UTC) if self.ts_ms is not None else None


class ChangeEvent(BaseModel, Generic[R]):
    """One row change: the operation, the row before and after, the primary key and
    the source position."""

    model_config = ConfigDict(frozen=True)

    op: Operation
    table: str = Field(description="schema.table")
    key: dict[str, Any] | None = Field(None, description="The primary key columns (the record key).")
    before: R | None = None
    after: R | None = None
    before_columns: dict[str, Any] | None = Field(
        None, description="The raw before row when it did not fit the model (key-only replica identity).")
    source: SourcePosition
    ts_ms: int | None = Field(None, description="When the connector processed the change.")

    @property
    def row(self) -> R | None:
        """The row as it is now (``after``), or as it was for a delete (``before``)."""
        return self.after if self.after is not None else self.before


class _WireChange(BaseModel, Generic[R]):
    """A change event as Debezium's JSON converter writes it (no schema), validated in one pydantic
    pass from the record's bytes (:meth:`ChangeDecoder._decode_fast`)."""

    model_config = ConfigDict(extra="allow")  # the careful way unwraps a value with both payload and schema

    op: Operation
    before: R | None = None
    after: R | None = None
    source: SourcePosition
    ts_ms: StrictInt | None = None


def change_message_type(table: str) -> str:
    """``public.orders`` → ``change:public.orders``."""
    return MESSAGE_TYPE_PREFIX + table


def change_message_id(table: str, source: SourcePosition, op: Operation, key: Any, row: Any = None) -> str:
    """The deterministic id of a change: the same change delivered twice gets the same id.

    A change from the log: table, LSN, transaction id, operation, key (from a binlog: table, GTID,
    the event's file and position, the row's index in the event, operation, key; see
    :mod:`streams.cdc.binlog` for why). A snapshot read:
    table, key and the row read — a snapshot Debezium starts over after a crash reads
    the rows again at a new LSN, and an unchanged row must still be recognised."""
    name = table if len(table) <= 120 else table[:100] + "~" + hashlib.sha256(table.encode()).hexdigest()[:12]
    if op is Operation.READ:
        return f"cdc:{name}:r:{_digest(key)}:{_digest(row)}"
    if source.file is not None:  # the binlog: the transaction's GTID, the event's place, the row in it
        return f"cdc:{name}:{source.gtid or '-'}:{source.file}:{source.pos}:{source.row}:{op.value}:{_digest(key)}"
    return f"cdc:{name}:{source.lsn}:{source.tx_id}:{op.value}:{_digest(key)}"


#: what ``json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)`` writes, from one
#: encoder (``dumps`` makes a new one per call when given ``default``)
_DIGEST_TEXT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def _digest(value: Any) -> str:
    return hashlib.sha256(_DIGEST_TEXT(value).encode()).hexdigest()[:16]


class ChangeDecoder:
    """Record → ``Envelope[ChangeEvent[Row]]`` for the tables declared on one topic."""

    def __init__(self, tables: dict[str, type[BaseModel]], limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        self.tables = dict(tables)
        self.limits = limits
        self._events = {table: ChangeEvent[model] for table, model in self.tables.items()}  # type: ignore[valid-type]
        self._converters = {table: RowConverter(model) for table, model in self.tables.items()}
        self._envelopes = {table: Envelope[self._events[table]] for table in self.tables}  # type: ignore[name-defined]
        # one pydantic pass from the bytes for the table of a one-table topic whose values need no conversion
        [(only, model)] = self.tables.items() if len(self.tables) == 1 else [(None, None)]
        self._fast = (only, _WireChange[model]) if only and not self._converters[only].columns else None  # type: ignore[valid-type]

    @property
    def message_types(self) -> tuple[str, ...]:
        return tuple(change_message_type(t) for t in self.tables)

    def event_model(self, table: str) -> type[ChangeEvent]:
        return self._events[table]

    def decode(self, value: bytes | None, key: bytes | None) -> Envelope | None:
        """The typed envelope, ``None`` for a tombstone, or :class:`DecodeError` saying why not.

        Nothing else escapes, whatever the key and value hold (the envelope decoder's
        promise): the key is held to the same size and nesting limits as the value, and a
        row model's validator that raises anything (``IndexError``, ``TypeError``, ...) is
        the record's problem, parked as ``schema_change``."""
        try:
            return self._decode(value, key)
        except DecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a record must never stop the worker: classify it
            raise DecodeError(DecodeReason.NOT_CHANGE_EVENT,
                              f"decoding the change event raised {type(exc).__name__}: {_short(exc)}") from None

    def _decode(self, value: bytes | None, key: bytes | None) -> Envelope | None:
        if value is None or value == b"":
            return None
        if self._fast is not None:
            envelope = self._decode_fast(value, key)
            if envelope is not None:
                return envelope
        data = parse_json(value, self.limits)
        if isinstance(data, dict) and "payload" in data and "schema" in data:
            data = data["payload"]  # the JSON converter with schemas enabled
        if not isinstance(data, dict) or "op" not in data or not isinstance(data.get("source"), dict):
            raise DecodeError(DecodeReason.NOT_CHANGE_EVENT,
                              "not a Debezium change event (expected a JSON object with op and source)")
        try:
            op = Operation(data["op"])
        except (ValueError, TypeError):
            raise DecodeError(DecodeReason.NOT_CHANGE_EVENT, f"unknown change operation {_short(data['op'])}") from None
        try:
            source = SourcePosition.model_validate(data["source"])
            occurred = source.committed_at or datetime.now(UTC)
        except ValidationError as exc:
            raise DecodeError(DecodeReason.NOT_CHANGE_EVENT, "the change event's source block is not readable",
                              details=_errors(exc)) from None
        except (ValueError, OverflowError, OSError) as exc:  # a commit time no clock can show
            raise DecodeError(DecodeReason.NOT_CHANGE_EVENT, f"the change event's commit time ts_ms="
                              f"{source.ts_ms} is out of range ({_short(exc)})") from None
        table = source.qualified_table
        message_type = change_message_type(table)
        if table not in self.tables:
            raise DecodeError(DecodeReason.UNKNOWN_TABLE,
                              f"change of table {table!r}, which this topic was not declared with "
                              f"(declared: {', '.join(sorted(self.tables))})", message_type=message_type)
        record_key = self._key(key)
        # a table without a primary key has no record key: the row itself tells the changes
        # of one WAL record apart (rows a COPY writes share an LSN)
        identity = record_key if record_key is not None else data.get("after") or data.get("before")
        message_id = change_message_id(table, source, op, identity, data.get("after"))
        model = self.tables[table]
        fields: dict[str, Any] = {"op": op, "table": table, "key": record_key, "source": source,
                                  "ts_ms": data.get("ts_ms") if isinstance(data.get("ts_ms"), int) else None}
        convert = self._converters[table]
        for side in ("before", "after"):
            row = data.get(side)
            if row is None:
                continue
            try:
                fields[side] = model.model_validate(convert(row))
            except Exception as exc:  # noqa: BLE001 - ValidationError, or a validator's own bug
                if side == "before" and op in (Operation.DELETE, Operation.UPDATE):
                    fields["before_columns"] = row if isinstance(row, dict) else None
                    continue
                why = "" if isinstance(exc, ValidationError) else f" (validating it raised {type(exc).__name__}: " \
                    f"{_short(exc)})"
                raise DecodeError(
                    DecodeReason.SCHEMA_CHANGE,
                    f"the {side} row of {table} does not match {model.__qualname__}{why} (a column dropped, "
                    "renamed or retyped?); replay it once the model follows the table",
                    details=_errors(exc) if isinstance(exc, ValidationError) else None,
                    message_type=message_type, message_id=message_id) from None
        return self._envelope(table, message_id, occurred, key, fields)

    def _envelope(self, table: str, message_id: str, occurred: datetime, key: bytes | None,
                  fields: dict[str, Any], *, every_field: bool = False) -> Envelope:
        event = (construct(self._events[table], fields) if every_field
                 else self._events[table].model_construct(**fields))
        return construct(self._envelopes[table], {
            "message_id": message_id, "message_type": change_message_type(table), "kind": Kind.EVENT,
            "occurred_at": occurred, "key": key.decode("utf-8", "replace") if key is not None else None,
            "payload": event, "source": event.source.name, "correlation_id": None, "causation_id": None,
            "trace_id": None, "headers": {}})

    def _decode_fast(self, value: bytes, key: bytes | None) -> Envelope | None:
        """The envelope of a plain log change (not a snapshot read) of the topic's one table, in one
        pydantic pass from the bytes; None for anything else, which :meth:`_decode` then reads the
        careful way (and so says what is wrong): a value over the size or nesting limits, another
        table, a row or source the models do not take, no record key."""
        assert self._fast is not None
        table, wire = self._fast
        # nesting can be no deeper than the number of opening brackets (parse_json's bound)
        if (not key or len(value) > self.limits.max_value_bytes
                or value.count(b"{") + value.count(b"[") > self.limits.max_depth):
            return None
        try:
            change = wire.model_validate_json(value)
            source = change.source
            occurred = source.committed_at or datetime.now(UTC)
        except Exception:  # noqa: BLE001 - ValidationError, a time out of range, a row validator's own bug:
            return None    # the careful way reads it again and says what is wrong (schema_change naming the model)
        extra = change.model_extra or {}
        if (change.op is Operation.READ or f"{source.schema_name}.{source.table}" != table
                or ("payload" in extra and "schema" in extra)):
            return None
        record_key = self._key(key)
        if record_key is None:
            return None
        message_id = change_message_id(table, source, change.op, record_key)
        return self._envelope(table, message_id, occurred, key, {
            "op": change.op, "table": table, "key": record_key, "before": change.before, "after": change.after,
            "before_columns": None, "source": source, "ts_ms": change.ts_ms}, every_field=True)

    def _key(self, key: bytes | None) -> dict[str, Any] | None:
        """The record key's columns: JSON within the decode limits (``too_large`` / ``too_deep``
        otherwise); a key that is not JSON is kept as ``{"_raw": text}``."""
        if not key:
            return None
        try:
            data = parse_json(key, self.limits)
        except DecodeError as exc:
            if exc.reason in (DecodeReason.TOO_LARGE, DecodeReason.TOO_DEEP):
                raise DecodeError(exc.reason, f"record key: {exc}") from None
            return {"_raw": key.decode("utf-8", "replace")}
        if isinstance(data, dict) and "payload" in data and "schema" in data:
            data = data["payload"]
        return data if isinstance(data, dict) else {"_key": data}


M = TypeVar("M", bound=BaseModel)


def construct(model: type[M], values: dict[str, Any]) -> M:
    """``model.model_construct(**values)`` for ``values`` that hold every field of ``model`` under its
    name (no alias, no default to fill): what ``model_construct`` does then, without its per-field
    alias and default look-ups (a third of a change event's decoding)."""
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors(include_url=False, include_input=False)]
