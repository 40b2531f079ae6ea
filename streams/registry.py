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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from streams.envelope import Envelope, Kind
from streams.errors import ConfigurationError, DecodeError, DecodeReason

M = TypeVar("M", bound=type[BaseModel])


@dataclass(frozen=True)
class MessageSpec:
    """What the registry knows about one message type."""

    message_type: str
    model: type[BaseModel]
    kind: Kind


class MessageRegistry:
    """Maps message types to payload models; encodes and decodes envelopes."""

    def __init__(self) -> None:
        self._specs: dict[str, MessageSpec] = {}

    # --- registration -------------------------------------------------------
    def register(self, message_type: str, model: type[BaseModel], kind: Kind = Kind.EVENT) -> MessageSpec:
        """Register ``model`` as the payload of ``message_type``."""
        if not message_type:
            raise ConfigurationError("message_type must be a non-empty string")
        existing = self._specs.get(message_type)
        if existing is not None and (existing.model is not model or existing.kind is not kind):
            raise ConfigurationError(
                f"message type {message_type!r} is already registered "
                f"({existing.kind.value}, {existing.model.__qualname__})"
            )
        spec = MessageSpec(message_type, model, kind)
        self._specs[message_type] = spec
        return spec

    def event(self, message_type: str) -> Callable[[M], M]:
        """Class decorator: register a payload model as an event type."""
        def wrap(model: M) -> M:
            self.register(message_type, model, Kind.EVENT)
            return model
        return wrap

    def command(self, message_type: str) -> Callable[[M], M]:
        """Class decorator: register a payload model as a command type."""
        def wrap(model: M) -> M:
            self.register(message_type, model, Kind.COMMAND)
            return model
        return wrap

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
        """Wrap a registered payload model in an envelope of the right type and kind."""
        spec = self.type_of(type(payload))
        return Envelope(message_type=spec.message_type, kind=spec.kind, payload=payload, key=key, **fields)

    # --- decoding -----------------------------------------------------------
    def decode(self, value: bytes | str | None) -> Envelope:
        """Record value → typed envelope, or :class:`DecodeError` saying why not."""
        data = parse_json(value)
        raw = validate_envelope(data)
        spec = self.spec(raw.message_type)
        if raw.kind is not spec.kind:
            raise DecodeError(
                DecodeReason.KIND_MISMATCH,
                f"envelope says {raw.kind.value} but {raw.message_type!r} is registered as a {spec.kind.value}",
                message_type=raw.message_type,
                message_id=raw.message_id,
            )
        try:
            payload = spec.model.model_validate(raw.payload)
        except ValidationError as exc:
            raise DecodeError(
                DecodeReason.INVALID_PAYLOAD,
                f"payload does not match {spec.model.__qualname__}",
                details=_plain_errors(exc),
                message_type=raw.message_type,
                message_id=raw.message_id,
            ) from None
        return raw.model_copy(update={"payload": payload})


def parse_json(value: bytes | str | None) -> Any:
    """Bytes → JSON data, or ``DecodeError(NOT_JSON)``."""
    if value is None or value == b"" or value == "":
        raise DecodeError(DecodeReason.NOT_JSON, "empty record value (tombstone?)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(DecodeReason.NOT_JSON, f"value is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            DecodeReason.NOT_JSON, f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def validate_envelope(data: Any) -> Envelope[Any]:
    """JSON data → untyped envelope, or ``DecodeError(NOT_ENVELOPE)``."""
    if not isinstance(data, dict):
        raise DecodeError(DecodeReason.NOT_ENVELOPE, f"expected a JSON object, got {type(data).__name__}")
    try:
        return Envelope[Any].model_validate(data)
    except ValidationError as exc:
        raise DecodeError(
            DecodeReason.NOT_ENVELOPE,
            "JSON object is not a message envelope",
            details=_plain_errors(exc),
            message_type=data.get("message_type") if isinstance(data.get("message_type"), str) else None,
            message_id=data.get("message_id") if isinstance(data.get("message_id"), str) else None,
        ) from None


def _plain_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors(include_url=False, include_input=False)
    ]
