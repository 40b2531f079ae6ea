"""Debezium's JSON column values → the Python types the row model's fields declare.

The generated connector config (:mod:`streams.cdc.config`) makes Debezium write column
values as JSON without a schema, so a value alone does not say which PostgreSQL type it
came from: ``bytea`` arrives as base64 text, ``time`` as ``"10:01:05Z"``, ``numeric`` NaN as
``"NAN"``. pydantic would take such text as it is (a ``bytes`` field holds the base64 text's
bytes) or refuse it. :class:`RowConverter` converts each value by the type of the field it
goes to, before the model validates the row:

============================  ==========================  =========================================
field type                    Debezium sends              the field gets
============================  ==========================  =========================================
``bytes``                     base64 text                 the bytes
``date``                      ``"2026-12-02Z"``           the date
``time``                      ``"10:01:05.123456Z"``      a naive time (a ``time`` column's value)
``NaiveDatetime``             ``"2026-12-02T10:01:05Z"``  a naive datetime (a ``timestamp`` column)
``datetime``                  the same                    an aware datetime in UTC (``timestamptz``)
``Decimal``                   ``"NAN"``, ``"POSITIVE_``   NaN / ±Infinity (the field must allow them:
                              ``INFINITY"``, ...          ``Field(allow_inf_nan=True)``)
``timedelta``                 ``"P1Y2M-3DT4H5M6.789S"``   years as 365 days, months as 30 (as psycopg)
``dict``, ``list``            JSON text (``jsonb``)       the decoded JSON
============================  ==========================  =========================================

``list[T]`` converts each element as ``T`` (arrays: ``bytea[]``, ``date[]``), ``T | None``
converts non-null values. Other fields (``UUID``, ``str``, enums, ``pydantic.Json[...]``)
get the value as Debezium sent it. A value that cannot be converted (not base64, not an
interval) fails the row's validation like any value the model refuses.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, Json, NaiveDatetime, ValidationError
from pydantic_core import PydanticCustomError, from_json

#: one value → its converted form; raises ValueError with a message when it cannot
Convert = Callable[[Any], Any]

#: Debezium's names for numeric's special values (``decimal.handling.mode=string``)
_SPECIAL_DECIMALS = {"NAN": "NaN", "POSITIVE_INFINITY": "Infinity", "NEGATIVE_INFINITY": "-Infinity"}
#: ``io.debezium.time.Interval`` (``interval.handling.mode=string``): every part signed
_INTERVAL = re.compile(r"P(-?\d+)Y(-?\d+)M(-?\d+)DT(-?\d+)H(-?\d+)M(-?\d+(?:\.\d+)?)S")
_ZULU_DATE = re.compile(r"\d{4}-\d{2}-\d{2}Z")


def _bytes(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not base64 text (Debezium's binary.handling.mode=bytes)") from None


def _iso_text(value: Any) -> Any:
    """Dates, times and timestamps come as ISO text; a number is another ``time.precision.mode``
    (days, ms or µs since the epoch, by column precision), which pydantic would read as seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("a number where ISO 8601 text was expected: the connector's time.precision.mode "
                         "is not isostring")
    return value


def _date(value: Any) -> Any:
    return value[:-1] if isinstance(value, str) and _ZULU_DATE.fullmatch(value) else _iso_text(value)


def _naive(value: Any) -> Any:
    """``time`` and ``timestamp`` columns: Debezium writes the wall time with a ``Z``."""
    return value[:-1] if isinstance(value, str) and value.endswith("Z") else _iso_text(value)


def _decimal(value: Any) -> Any:
    return Decimal(_SPECIAL_DECIMALS[value]) if isinstance(value, str) and value in _SPECIAL_DECIMALS else value


def interval(text: str) -> timedelta:
    """Debezium's interval text as a ``timedelta``, counting a year as 365 days and a month
    as 30 (what psycopg returns for the same ``interval``)."""
    match = _INTERVAL.fullmatch(text)
    if match is None:
        raise ValueError(f"not Debezium's interval text (PnYnMnDTnHnMnS): {text[:60]!r}")
    years, months, days, hours, minutes = (int(g) for g in match.groups()[:5])
    micros = int(Decimal(match.group(6)).scaleb(6).to_integral_value())
    try:
        return timedelta(days=365 * years + 30 * months + days, hours=hours, minutes=minutes, microseconds=micros)
    except OverflowError:
        raise ValueError(f"interval {text!r} is beyond timedelta's range") from None


def _timedelta(value: Any) -> Any:
    if isinstance(value, str):
        return interval(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(microseconds=value)  # interval.handling.mode=numeric (a connector made elsewhere)
    return value


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return from_json(value)
    except ValueError as exc:
        raise ValueError(f"not JSON text: {exc}") from None


def _each(convert: Convert) -> Convert:
    def convert_list(value: Any) -> Any:
        return [None if v is None else convert(v) for v in value] if isinstance(value, list) else value
    return convert_list


def _array_or_json(element: Convert | None) -> Convert:
    """A ``list[T]`` field: a list is an array (each element as ``T``), text a ``jsonb`` array."""
    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return _json(value)
        return element(value) if element is not None else value
    return convert


def _is_json(marker: Any) -> bool:
    """``pydantic.Json[...]``'s marker: pydantic parses the JSON text itself."""
    return marker is Json or type(marker) is Json


_SCALARS: dict[Any, Convert] = {bytes: _bytes, date: _date, time: _naive, NaiveDatetime: _naive,
                                datetime: _iso_text, AwareDatetime: _iso_text, Decimal: _decimal,
                                timedelta: _timedelta}


def converter_for(annotation: Any) -> Convert | None:
    """How a value bound for a field of type ``annotation`` is converted, or None (as it is)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        return None if any(map(_is_json, metadata)) else converter_for(inner)
    if origin in (Union, UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        if len(members) == 1:
            return converter_for(members[0])
        if any(m in (dict, list) or get_origin(m) in (dict, list) for m in members):
            return _json
        return None
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is dict or origin is dict:
        return _json
    if annotation is list or origin is list:
        args = get_args(annotation)
        element = converter_for(args[0]) if args else None
        return _array_or_json(_each(element) if element is not None else None)
    return None  # UUID, str, enums, numbers: as sent


class RowConverter:
    """Converts one row (Debezium's ``before``/``after``) for the fields of ``model``."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self.columns: dict[str, Convert] = {}
        for name, info in model.model_fields.items():
            if any(map(_is_json, info.metadata)):
                continue  # pydantic.Json[...] parses the text itself
            convert = converter_for(info.annotation)
            if convert is not None:
                self.columns[info.alias or name] = convert

    def __call__(self, row: Any) -> Any:
        """The row with its values converted; :class:`ValidationError` naming the columns
        that cannot be."""
        if not self.columns or not isinstance(row, dict):
            return row
        out = dict(row)
        errors: list[Any] = []
        for column, convert in self.columns.items():
            value = out.get(column)
            if value is None:
                continue
            try:
                out[column] = convert(value)
            except (ValueError, ArithmeticError) as exc:  # InvalidOperation, OverflowError
                errors.append({"type": PydanticCustomError("cdc_value", "{reason}", {"reason": str(exc)}),
                               "loc": (column,), "input": value})
        if errors:
            raise ValidationError.from_exception_data(self.model.__name__, errors)
        return out
