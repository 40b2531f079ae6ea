"""The message registry: ``message_type`` → payload model (and kind).

Producers and consumers share one registry so a consumer receives typed
payloads, and decoding failures are classified (see
:class:`~streams.errors.DecodeReason`)::

    registry = MessageRegistry()

    @registry.event("OrderPlaced")
    class OrderPlaced(BaseModel):
        order_id: str
        seller_id: str

    envelope = registry.decode(record_value)   # Envelope[OrderPlaced]

Message types carry a **version** (default 1). A new version of a type registers its new
model with ``version=`` and, where the old payloads do not simply validate against it,
an **upcaster** per step, so a handler of version 2 receives version 1 messages as
version 2::

    @registry.event("PaymentTaken", version=2)
    class PaymentTaken(BaseModel):
        order_id: str
        amount_minor: int
        currency: str

    @registry.upcaster("PaymentTaken", from_version=1)
    def payment_v1_to_v2(payload: dict) -> dict:
        return {"order_id": payload["order_id"], "amount_minor": payload["amount"] * 100, "currency": "KRW"}

A message of a version above 1 carries it in its envelope's ``headers``
(``schema_version``; no header: version 1), set by :meth:`MessageRegistry.envelope`.
The committed JSON Schemas of every version and the compatibility check between them
are in :mod:`streams.messages.schemas`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from streams.errors import ConfigurationError, DecodeError, DecodeReason
from streams.messages.envelope import SCHEMA_VERSION, Envelope, Kind

M = TypeVar("M", bound=type[BaseModel])
#: an upcaster: a payload of one version (JSON data) → the payload of the next version
Upcaster = Callable[[Any], Any]


class Compatibility(StrEnum):
    """Which changes between consecutive versions of a type are allowed (Confluent's levels).

    * ``BACKWARD`` (default): the new version reads messages of the previous one (consumers
      upgrade first);
    * ``FORWARD``: the previous version reads messages of the new one (producers upgrade first);
    * ``FULL``: both;
    * ``NONE``: not checked.
    """

    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"
    FULL = "FULL"
    NONE = "NONE"


@dataclass(frozen=True)
class MessageSpec:
    """What the registry knows about one message type (its current version)."""

    message_type: str
    model: type[BaseModel]
    kind: Kind
    version: int = 1
    compatibility: Compatibility = Compatibility.BACKWARD


class MessageRegistry:
    """Maps message types to payload models; encodes and decodes envelopes."""

    def __init__(self) -> None:
        self._specs: dict[str, MessageSpec] = {}
        #: message type -> Envelope[its payload model] (what decode returns)
        self._typed: dict[str, type[Envelope]] = {}
        #: (message type, from version) -> upcaster to the next version
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    # --- registration -------------------------------------------------------
    def register(self, message_type: str, model: type[BaseModel], kind: Kind = Kind.EVENT, *, version: int = 1,
                 compatibility: Compatibility | str = Compatibility.BACKWARD) -> MessageSpec:
        """Register ``model`` as the payload of ``message_type`` (its current ``version``; what
        may change between versions: ``compatibility``)."""
        if not message_type:
            raise ConfigurationError("message_type must be a non-empty string")
        if not isinstance(version, int) or version < 1:
            raise ConfigurationError(f"message type {message_type!r}: version must be a positive integer")
        spec = MessageSpec(message_type, model, kind, version, Compatibility(compatibility))
        existing = self._specs.get(message_type)
        if existing is not None and existing != spec:
            raise ConfigurationError(
                f"message type {message_type!r} is already registered "
                f"({existing.kind.value}, {existing.model.__qualname__}, version {existing.version})"
            )
        self._specs[message_type] = spec
        return spec

    def event(self, message_type: str, *, version: int = 1,
              compatibility: Compatibility | str = Compatibility.BACKWARD) -> Callable[[M], M]:
        """Class decorator: register a payload model as an event type."""
        def wrap(model: M) -> M:
            self.register(message_type, model, Kind.EVENT, version=version, compatibility=compatibility)
            return model
        return wrap

    def command(self, message_type: str, *, version: int = 1,
                compatibility: Compatibility | str = Compatibility.BACKWARD) -> Callable[[M], M]:
        """Class decorator: register a payload model as a command type."""
        def wrap(model: M) -> M:
            self.register(message_type, model, Kind.COMMAND, version=version, compatibility=compatibility)
            return model
        return wrap

    def upcaster(self, message_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``fn(payload) -> payload`` turns a ``from_version`` payload (JSON data) into
        one of the next version. A step without an upcaster passes the payload on unchanged."""
        def wrap(fn: Upcaster) -> Upcaster:
            key = (message_type, from_version)
            if key in self._upcasters and self._upcasters[key] is not fn:
                raise ConfigurationError(f"{message_type!r} already has an upcaster from version {from_version}")
            self._upcasters[key] = fn
            return fn
        return wrap

    def upcasters(self, message_type: str) -> dict[int, Upcaster]:
        """The upcasters of ``message_type``: from version → function."""
        return {v: fn for (t, v), fn in self._upcasters.items() if t == message_type}

    # --- lookup ---------------------------------------------------------------
    def spec(self, message_type: str) -> MessageSpec:
        try:
            return self._specs[message_type]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise DecodeError(
                DecodeReason.UNKNOWN_TYPE,
                f"no payload model registered for this message type (known: {known})",
                message_type=message_type,
            ) from None

    def __contains__(self, message_type: str) -> bool:
        return message_type in self._specs

    def types(self) -> list[str]:
        return sorted(self._specs)

    def type_of(self, model: type[BaseModel]) -> MessageSpec:
        for spec in self._specs.values():
            if spec.model is model:
                return spec
        raise ConfigurationError(f"{model.__qualname__} is not registered as a message type")

    # --- building -----------------------------------------------------------
    def envelope(self, payload: BaseModel, *, key: str | None = None, **fields: Any) -> Envelope:
        """Wrap a registered payload model in an envelope of the right type, kind and version."""
        spec = self.type_of(type(payload))
        if spec.version > 1:
            fields["headers"] = {**fields.get("headers", {}), SCHEMA_VERSION: str(spec.version)}
        return Envelope(message_type=spec.message_type, kind=spec.kind, payload=payload, key=key, **fields)

    # --- decoding -----------------------------------------------------------
    def decode(self, value: bytes | str | None, *, limits: "DecodeLimits | None" = None,
               fallback_id: str | None = None, message_type: str | None = None) -> Envelope:
        """Record value → typed envelope, or :class:`DecodeError` saying why not.

        Nothing else escapes: whatever goes wrong while parsing or validating (a
        value nested too deep for the parser, an integer too long to convert, a
        payload validator that raises ``ZeroDivisionError``) becomes a
        ``DecodeError`` whose reason names the stage. ``limits`` bounds the value's
        size and nesting depth (:data:`DEFAULT_LIMITS` if not given).
        ``fallback_id`` stands in for a missing ``message_id`` (see
        :class:`MessageIdFallback`); without it an envelope lacking one is refused.

        ``message_type`` (the record's ``message_type`` header, which this framework's
        producers set) allows one pydantic pass straight from the bytes for a value
        well within the limits; anything that pass does not accept is decoded again
        the careful way, which says what is wrong."""
        limits = limits or DEFAULT_LIMITS
        if message_type is not None:
            envelope = self._decode_fast(value, limits, message_type)
            if envelope is not None:
                return envelope
        data = parse_json(value, limits)
        raw = validate_envelope(data, fallback_id=fallback_id)
        spec = self.spec(raw.message_type)
        if raw.kind is not spec.kind:
            raise DecodeError(
                DecodeReason.KIND_MISMATCH,
                f"envelope says {raw.kind.value} but {raw.message_type!r} is registered as a {spec.kind.value}",
                message_type=raw.message_type,
                message_id=raw.message_id,
            )
        version = _version_of(raw.headers, raw)
        data = self._upcast(spec, version, raw) if version < spec.version else raw.payload
        newer = f" (a version {version} message; this consumer knows version {spec.version})" \
            if version > spec.version else ""
        try:
            payload = spec.model.model_validate(data)
        except ValidationError as exc:
            raise DecodeError(
                DecodeReason.INVALID_PAYLOAD,
                f"payload does not match {spec.model.__qualname__}{newer}",
                details=_plain_errors(exc),
                message_type=raw.message_type,
                message_id=raw.message_id,
            ) from None
        except Exception as exc:  # noqa: BLE001 - a validator's own bug is the record's problem, not the worker's
            raise DecodeError(
                DecodeReason.INVALID_PAYLOAD,
                f"validating the payload as {spec.model.__qualname__} raised {type(exc).__name__}: "
                f"{_short(exc)}",
                message_type=raw.message_type,
                message_id=raw.message_id,
            ) from None
        fields = {name: getattr(raw, name) for name in raw.model_fields_set}
        if version < spec.version:  # upcast: it is a message of the current version now
            fields["headers"] = {**raw.headers, SCHEMA_VERSION: str(spec.version)}
        return self.typed(spec).model_construct(_fields_set=raw.model_fields_set | ({"headers"} if version < spec.version
                                                                                     else set()),
                                                **{**fields, "payload": payload})

    def _upcast(self, spec: MessageSpec, version: int, raw: Envelope) -> Any:
        """``raw``'s payload of ``version`` brought to ``spec``'s version, step by step."""
        data = raw.payload
        for step in range(version, spec.version):
            fn = self._upcasters.get((spec.message_type, step))
            if fn is None:
                continue
            try:
                data = fn(copy.deepcopy(data))
            except Exception as exc:  # noqa: BLE001 - an upcaster's failure is this record's problem
                raise DecodeError(
                    DecodeReason.INVALID_PAYLOAD,
                    f"upcasting from version {step} to {step + 1} raised {type(exc).__name__}: {_short(exc)}",
                    message_type=raw.message_type,
                    message_id=raw.message_id,
                ) from None
        return data


    def _decode_fast(self, value: Any, limits: "DecodeLimits", message_type: str) -> Envelope | None:
        """The envelope in one validation of ``value`` against ``message_type``'s typed wire
        model, or None when that does not simply succeed (the caller decodes carefully)."""
        spec = self._specs.get(message_type)
        if (spec is None or not isinstance(value, bytes) or len(value) > limits.max_value_bytes
                or value.count(b"{") + value.count(b"[") > limits.max_depth):
            return None
        try:
            envelope = self.typed(spec).model_validate_json(value)
        except Exception:  # noqa: BLE001 - the careful path classifies whatever is wrong
            return None
        if (envelope.message_type != message_type or envelope.kind is not spec.kind
                or "message_id" not in envelope.model_fields_set):  # a missing id is no default here
            return None
        if envelope.headers.get(SCHEMA_VERSION, "1") != str(spec.version):
            return None  # another version: upcast (or explained) the careful way
        return envelope

    def typed(self, spec: MessageSpec) -> type[Envelope]:
        """``Envelope[<payload model>]`` of ``spec`` (made once)."""
        model = self._typed.get(spec.message_type)
        if model is None:
            model = self._typed[spec.message_type] = Envelope[spec.model]  # type: ignore[name-defined]
        return model


class MessageIdFallback(StrEnum):
    """What to do with a record whose envelope has no ``message_id``.

    * ``reject`` (default): it is not an envelope; it is parked as ``not_envelope``.
    * ``header``: take the id from the record's ``message_id`` header (clients that
      put the id in a header, as Debezium's outbox router does with ``id``); no
      header → parked.
    * ``offset``: the ``message_id`` header if there is one, else an id made from
      where the record sits, ``<topic>-<partition>@<offset>``. Weaker: a redelivery
      of the *same record* is recognised, but a producer's retry that wrote the
      message twice gets two offsets and so two ids, and is handled twice.
    """

    REJECT = "reject"
    HEADER = "header"
    OFFSET = "offset"


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds that protect a worker from absurd records; a record over them is parked.

    ``max_value_bytes``: the largest record value accepted (``too_large`` above it).
    ``max_depth``: the deepest nesting of JSON objects and arrays accepted, the
    envelope itself being depth 1 and its payload depth 2 (``too_deep`` above it)."""

    max_value_bytes: int = 1024 * 1024
    max_depth: int = 64


DEFAULT_LIMITS = DecodeLimits()


def parse_json(value: bytes | str | None, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """Bytes → JSON data, or ``DecodeError`` (``not_json``, ``too_large``, ``too_deep``)."""
    if value is None or value == b"" or value == "":
        raise DecodeError(DecodeReason.NOT_JSON, "empty record value (tombstone?)")
    if not isinstance(value, (bytes, bytearray, memoryview, str)):
        raise DecodeError(DecodeReason.NOT_JSON, f"record value is a {type(value).__name__}, not bytes")
    size = len(value)
    if size > limits.max_value_bytes:
        raise DecodeError(DecodeReason.TOO_LARGE, f"value is {size} bytes, more than the {limits.max_value_bytes} "
                          "accepted (STREAMS_MAX_VALUE_BYTES)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(DecodeReason.NOT_JSON, f"value is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            DecodeReason.NOT_JSON, f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise DecodeError(DecodeReason.TOO_DEEP, "value is nested too deep for the JSON parser (more than "
                          f"{limits.max_depth} levels are refused anyway: STREAMS_MAX_NESTING_DEPTH)") from None
    except Exception as exc:  # noqa: BLE001 - e.g. ValueError: an integer of 5,000 digits; MemoryError
        raise DecodeError(DecodeReason.NOT_JSON, f"value could not be parsed as JSON: {type(exc).__name__}: "
                          f"{_short(exc)}") from None
    # nesting can be no deeper than the number of opening brackets: count them at C speed and
    # walk the parsed tree only when that bound is over the limit
    if value.count("{") + value.count("[") > limits.max_depth:
        depth = nesting_depth(data, limits.max_depth)
        if depth > limits.max_depth:
            raise DecodeError(DecodeReason.TOO_DEEP, f"value is nested more than {limits.max_depth} levels deep "
                              "(STREAMS_MAX_NESTING_DEPTH)")
    return data


def nesting_depth(data: Any, stop_above: int | None = None) -> int:
    """How deep JSON objects and arrays nest in ``data`` (a scalar: 0, ``{}``: 1), without
    recursion; stops counting once ``stop_above`` is exceeded."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if stop_above is not None and deepest > stop_above:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def validate_envelope(data: Any, *, fallback_id: str | None = None) -> Envelope[Any]:
    """JSON data → untyped envelope, or ``DecodeError(NOT_ENVELOPE)``.

    The ``message_id`` is required: an envelope without one would get a fresh random
    id at every delivery and so never be recognised as a duplicate. ``fallback_id``
    stands in for a missing one when the topic opted in (:class:`MessageIdFallback`)."""
    if not isinstance(data, dict):
        raise DecodeError(DecodeReason.NOT_ENVELOPE, f"expected a JSON object, got {type(data).__name__}")
    message_type = data.get("message_type") if isinstance(data.get("message_type"), str) else None
    if "message_id" not in data:
        if fallback_id is None:
            raise DecodeError(
                DecodeReason.NOT_ENVELOPE,
                "JSON object is not a message envelope: it has no message_id, so a redelivery could not be "
                "recognised (producers that cannot set one: see STREAMS_MESSAGE_ID_FALLBACK)",
                details=[{"loc": ["message_id"], "msg": "Field required", "type": "missing"}],
                message_type=message_type,
            )
        data = {**data, "message_id": fallback_id}
    try:
        return Envelope[Any].model_validate(data)
    except ValidationError as exc:
        raise DecodeError(
            DecodeReason.NOT_ENVELOPE,
            "JSON object is not a message envelope",
            details=_plain_errors(exc),
            message_type=message_type,
            message_id=data.get("message_id") if isinstance(data.get("message_id"), str) else None,
        ) from None
    except Exception as exc:  # noqa: BLE001 - nothing about a record may escape as anything but DecodeError
        raise DecodeError(
            DecodeReason.NOT_ENVELOPE,
            f"validating the envelope raised {type(exc).__name__}: {_short(exc)}",
            message_type=message_type,
        ) from None


def _version_of(headers: dict[str, str], raw: Envelope) -> int:
    """The payload's version from an envelope's headers (absent: 1), or ``DecodeError``."""
    text = headers.get(SCHEMA_VERSION)
    if text is None:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise DecodeError(DecodeReason.NOT_ENVELOPE, f"the envelope's {SCHEMA_VERSION} header {text[:20]!r} is not a "
                          "positive integer", message_type=raw.message_type, message_id=raw.message_id)
    return int(text)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _plain_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors(include_url=False, include_input=False)
    ]
