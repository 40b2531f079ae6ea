"""Message versions, upcasters, the committed schemas and Confluent's compatibility rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from streams import DecodeError, MessageRegistry
from streams.messages.compatibility import breaking_changes
from streams.messages.registry import Compatibility
from streams.messages.schemas import check, json_schema, write

ROOT = Path(__file__).resolve().parents[2]


class V1(BaseModel):
    order_id: str
    amount: int = Field(ge=0)
    note: str | None = None


def _schema(model: type[BaseModel], version: int = 1, level: str = "BACKWARD") -> dict:
    reg = MessageRegistry()
    reg.register("Payment", model, version=version, compatibility=level)
    return {k: v for k, v in json_schema(reg.spec("Payment")).items() if k != "x-streams"}


def _changes(new: type[BaseModel], level: str, old: type[BaseModel] = V1) -> list[str]:
    return breaking_changes("Payment", _schema(old), 1, _schema(new, 2), 2, Compatibility(level))


def test_adding_an_optional_field_is_compatible_both_ways() -> None:
    class V2(V1):
        currency: str = "KRW"

    assert _changes(V2, "FULL") == []


def test_a_required_field_added_without_default_breaks_backward_only() -> None:
    class V2(V1):
        currency: str

    assert _changes(V2, "BACKWARD") == [
        "Payment v2 (BACKWARD): required field 'payload.currency' added without a default: v1 messages do not have it"]
    assert _changes(V2, "FORWARD") == []


def test_a_removed_required_field_breaks_forward_only() -> None:
    class V2(BaseModel):
        order_id: str
        note: str | None = None

    assert _changes(V2, "FORWARD") == ["Payment v2 (FORWARD): field 'payload.amount' removed: v1 consumers require it"]
    assert _changes(V2, "BACKWARD") == []


def test_narrowed_and_widened_types() -> None:
    class Narrow(BaseModel):
        order_id: str = Field(max_length=8)
        amount: int = Field(ge=0)
        note: str | None = None

    class Wide(BaseModel):
        order_id: str
        amount: int | str
        note: str | None = None

    [narrowed] = _changes(Narrow, "FULL")
    assert narrowed == ("Payment v2 (BACKWARD): field 'payload.order_id' type narrowed from string to string "
                        "(max length 8): v1 messages may not fit")
    assert _changes(Wide, "FULL") == [
        "Payment v2 (FORWARD): field 'payload.amount' type widened from integer (≥ 0) to integer or string: "
        "v1 consumers refuse the new values"]

    class NotNull(BaseModel):
        order_id: str
        amount: int = Field(ge=0)
        note: str = ""

    assert _changes(NotNull, "BACKWARD") == [
        "Payment v2 (BACKWARD): field 'payload.note' type narrowed from string or null to string: "
        "v1 messages may not fit"]

    class Choice(BaseModel):
        order_id: Literal["a", "b"]
        amount: int = Field(ge=0)
        note: str | None = None

    assert len(_changes(Choice, "BACKWARD")) == 1


def test_unknown_fields_matter_only_to_a_closed_model_and_nested_models_are_compared() -> None:
    class Closed(BaseModel):
        model_config = ConfigDict(extra="forbid")
        order_id: str
        note: str | None = None

    assert _changes(Closed, "BACKWARD") == [
        "Payment v2 (BACKWARD): field 'payload.amount' removed while v2 refuses unknown fields: v1 messages carry it"]

    class Line(BaseModel):
        sku: str
        qty: int

    class Line2(BaseModel):
        sku: str
        qty: int = Field(le=100)

    class WithLines(V1):
        lines: list[Line] = []

    class WithLines2(V1):
        lines: list[Line2] = []

    assert _changes(WithLines2, "BACKWARD", old=WithLines) == [
        "Payment v2 (BACKWARD): field 'payload.lines[].qty' type narrowed from integer to integer (≤ 100): "
        "v1 messages may not fit"]


class V2(BaseModel):
    order_id: str
    amount_minor: int
    currency: str


def _versioned() -> MessageRegistry:
    reg = MessageRegistry()
    reg.event("Payment", version=2)(V2)

    @reg.upcaster("Payment", from_version=1)
    def v1_to_v2(payload: dict) -> dict:
        return {"order_id": payload["order_id"], "amount_minor": payload["amount"] * 100, "currency": "KRW"}

    return reg


def _v1_record(amount=5, **headers) -> tuple[bytes, str]:
    value = json.dumps({"message_id": "m-1", "message_type": "Payment", "kind": "event", "headers": headers,
                        "payload": {"order_id": "o-1", "amount": amount}}).encode()
    return value, "Payment"


def test_a_v2_consumer_receives_v1_messages_as_v2_on_both_decode_paths() -> None:
    reg = _versioned()
    value, header = _v1_record()
    for message_type in (None, header):  # the careful path and the one-pass path (type header present)
        envelope = reg.decode(value, message_type=message_type)
        assert envelope.payload == V2(order_id="o-1", amount_minor=500, currency="KRW")
        assert envelope.headers == {"schema_version": "2"}
    made = reg.envelope(V2(order_id="o", amount_minor=1, currency="USD"))
    assert made.headers == {"schema_version": "2"} and ("schema_version", b"2") in made.kafka_headers()
    assert reg.decode(made.to_json(), message_type="Payment").payload.currency == "USD"


def test_versions_that_cannot_be_read_are_refused_with_a_reason() -> None:
    reg = _versioned()
    with pytest.raises(DecodeError) as bad_version:
        reg.decode(_v1_record(schema_version="two")[0])
    assert bad_version.value.reason.value == "not_envelope" and "schema_version" in bad_version.value.message
    with pytest.raises(DecodeError) as failing:
        reg.decode(_v1_record(amount=None)[0])
    assert failing.value.reason.value == "invalid_payload" and "upcasting from version 1 to 2 raised" in str(failing.value)
    with pytest.raises(DecodeError) as newer:
        reg.decode(json.dumps({"message_id": "m", "message_type": "Payment", "headers": {"schema_version": "3"},
                               "payload": {"order_id": "o"}}).encode())
    assert "a version 3 message; this consumer knows version 2" in str(newer.value)


def test_check_and_write_against_committed_schemas(tmp_path: Path) -> None:
    old = MessageRegistry()
    old.event("Payment")(V1)
    written, _ = write(old, tmp_path)
    assert written == [tmp_path / "Payment" / "v1.json"] and check(old, tmp_path).problems == []

    renamed = MessageRegistry()  # v2 renames the field; BACKWARD is kept by the upcaster
    renamed.event("Payment", version=2)(V2)
    assert check(renamed, tmp_path).problems == [
        "Payment v2 (BACKWARD): required field 'payload.amount_minor' added without a default: v1 messages do not have it",
        "Payment v2 (BACKWARD): required field 'payload.currency' added without a default: v1 messages do not have it"]
    result = check(_versioned(), tmp_path)
    assert result.problems == ["Payment v2: compatible with v1 but not committed: run `streams schema write` and "
                               f"commit {tmp_path / 'Payment' / 'v2.json'}"]
    assert len(result.notes) == 2 and all("(handled by the upcaster)" in n for n in result.notes)
    write(_versioned(), tmp_path)
    assert check(_versioned(), tmp_path).problems == []

    changed = MessageRegistry()  # the same version, another model: refused
    changed.event("Payment", version=2)(V1)
    problems = check(changed, tmp_path).problems
    assert any(p.startswith("Payment v2: the model no longer matches") for p in problems)
    assert "Payment v2 (BACKWARD): field 'payload.amount_minor' removed" not in problems  # open model: not breaking


def test_the_reference_app_matches_its_committed_schemas_and_the_cli_says_why_not(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "streams.cli", "schema", "check", "--app", "agents.main:app"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "schema check passed: 3 message type(s)" in ok.stdout
    empty = subprocess.run([sys.executable, "-m", "streams.cli", "schema", "check", "--app", "agents.main:app",
                            "--dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 1
    assert "OrderPlaced v1: no committed schema: run `streams schema write`" in empty.stderr


def test_a_choice_of_values_is_checked_value_by_value() -> None:
    class Codes(BaseModel):
        order_id: str = Field(min_length=3, max_length=3)
        amount: int = Field(ge=0)
        note: str | None = None

    class Known(BaseModel):
        order_id: Literal["KRW", "USD"]
        amount: Literal[0, 5]
        note: str | None = None

    class TooLong(BaseModel):
        order_id: Literal["KRW", "EURO"]
        amount: int = Field(ge=0)
        note: str | None = None

    old = _schema(Codes)
    assert breaking_changes("Payment", old, 1, _schema(Known, 2), 2, Compatibility.FORWARD) == []
    assert breaking_changes("Payment", old, 1, _schema(TooLong, 2), 2, Compatibility.FORWARD) == [
        "Payment v2 (FORWARD): field 'payload.order_id' type widened from string (min length 3, max length 3) to "
        "one of 'KRW', 'EURO': v1 consumers refuse the new values"]
    assert len(breaking_changes("Payment", _schema(Known), 1, _schema(Codes, 2), 2, Compatibility.FORWARD)) == 2
