"""Record validation, pure: telemetry schemas (the seed's format), frames and buffers.

A schema lists fields with a ``type`` (``datetime``, ``float``, ``int``, ``string``,
``boolean``, ``object``, ``array``), ``required`` and optional ``validation``
``{min, max}``. For telemetry, ``timestamp`` is the record's own field and every other
name is looked up in its ``values``. Numbers may come as numeric strings (the seed's
message reads "Cannot parse 'invalid' as float").

Every problem of a batch is reported, each as the seed's
``{recordIndex, field, value, expectedType, message}``.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from sluicegate.errors import APIError

__all__ = [
    "AUDIO_FORMATS",
    "IMAGE_FORMATS",
    "Invalid",
    "Schema",
    "check_media",
    "check_records",
    "parse_schema",
    "timestamp_us",
]

IMAGE_FORMATS = frozenset({"jpeg", "jpg", "png", "webp", "gif", "bmp", "raw"})
AUDIO_FORMATS = frozenset({"wav", "pcm", "mp3", "ogg", "opus", "flac", "aac"})
_TYPES = {
    "datetime": "datetime",
    "timestamp": "datetime",
    "float": "float",
    "double": "float",
    "number": "float",
    "int": "int",
    "integer": "int",
    "string": "string",
    "str": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "object": "object",
    "array": "array",
}
_MAX_VALUE_ECHO = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Invalid = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    required: bool
    minimum: float | None
    maximum: float | None


@dataclass(frozen=True, slots=True)
class Schema:
    """A registered schema, ready to check records."""

    name: str
    version: str
    fields: tuple[Field, ...]

    def check(self, records: list[Any], *, telemetry: bool) -> list[Invalid]:
        """Every problem of every record (empty when all are valid)."""
        problems: list[Invalid] = []
        for index, record in enumerate(records):
            values = record.get("values") if telemetry and isinstance(record, dict) else record
            if not isinstance(values, dict):
                values = {}
            for spec in self.fields:
                source = record if (spec.name == "timestamp" or not telemetry) else values
                present = isinstance(source, dict) and spec.name in source
                if not present:
                    if spec.required:
                        problems.append(_invalid(index, spec, None, "Field is required"))
                    continue
                message = _check_value(spec, source[spec.name])
                if message is not None:
                    problems.append(_invalid(index, spec, source[spec.name], message))
        return problems


def _show(value: Any) -> str:
    """A value for a message: its repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_ECHO else text[:_MAX_VALUE_ECHO] + "..."


def _invalid(index: int, spec: Field, value: Any, message: str) -> Invalid:
    if isinstance(value, str) and len(value) > _MAX_VALUE_ECHO:
        value = value[:_MAX_VALUE_ECHO] + "..."
    return {"recordIndex": index, "field": spec.name, "value": value, "expectedType": spec.type, "message": message}


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _check_number(spec: Field, value: Any) -> str | None:
    number = _as_number(value)
    if number is None or not math.isfinite(number) or (spec.type == "int" and not number.is_integer()):
        return f"Cannot parse {_show(value)} as {spec.type}"
    if spec.minimum is not None and number < spec.minimum:
        return f"Value {_show(value)} is below the minimum {spec.minimum}"
    if spec.maximum is not None and number > spec.maximum:
        return f"Value {_show(value)} is above the maximum {spec.maximum}"
    return None


def _check_value(spec: Field, value: Any) -> str | None:
    kind = spec.type
    if kind in ("float", "int"):
        return _check_number(spec, value)
    if kind == "datetime":
        return None if timestamp_us(value) is not None else f"Cannot parse {_show(value)} as datetime"
    if kind == "string":
        if not isinstance(value, str):
            return f"Cannot parse {_show(value)} as string"
        if spec.minimum is not None and len(value) < spec.minimum:
            return f"String is shorter than {spec.minimum:g} characters"
        if spec.maximum is not None and len(value) > spec.maximum:
            return f"String is longer than {spec.maximum:g} characters"
        return None
    if kind == "boolean":
        return None if isinstance(value, bool) else f"Cannot parse {_show(value)} as boolean"
    if kind == "object":
        return None if isinstance(value, dict) else f"Cannot parse {_show(value)} as object"
    return None if isinstance(value, list) else f"Cannot parse {_show(value)} as array"


def parse_schema(definition: Any) -> Schema:
    """Check a schema definition (the seed's format) and compile it.

    Raises:
        APIError: ``invalid_argument`` naming every problem.
    """
    problems: list[dict[str, str]] = []

    def problem(field: str, message: str) -> None:
        problems.append({"field": field, "message": message, "type": "value_error"})

    if not isinstance(definition, dict):
        raise APIError.invalid_argument("Invalid schema", fields=[{"field": "body", "message": "must be an object"}])
    name = definition.get("schemaName")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        problem("body.schemaName", "required, a string of 1 to 200 characters")
    version = definition.get("schemaVersion", "1.0.0")
    if not isinstance(version, str):
        problem("body.schemaVersion", "must be a string")
    raw_fields = definition.get("fields")
    fields: list[Field] = []
    if not isinstance(raw_fields, list) or not raw_fields:
        problem("body.fields", "required, a non-empty list")
        raw_fields = []
    for i, raw in enumerate(raw_fields):
        where = f"body.fields.{i}"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            problem(where, "each field needs a name")
            continue
        kind = _TYPES.get(str(raw.get("type", "")).lower())
        if kind is None:
            problem(f"{where}.type", f"unknown type {raw.get('type')!r}; use one of {sorted(set(_TYPES))}")
            continue
        rules = raw.get("validation") or {}
        bounds = [rules.get("min"), rules.get("max")] if isinstance(rules, dict) else [None, None]
        if any(b is not None and _as_number(b) is None for b in bounds):
            problem(f"{where}.validation", "min and max must be numbers")
            continue
        low, high = (None if b is None else _as_number(b) for b in bounds)
        fields.append(Field(raw["name"], kind, bool(raw.get("required", False)), low, high))
    if problems:
        raise APIError.invalid_argument("Invalid schema", fields=problems)
    return Schema(str(name), str(version), tuple(fields))


def timestamp_us(value: Any) -> int | None:
    """Microseconds since the epoch of an RFC 3339 timestamp (``Z`` or an offset; none is UTC), or ``None``.

    Parsed by msgspec, as uploads are, so that what an upload accepts is read back at its time.
    """
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        try:  # a bare date is midnight
            day = msgspec.convert(value, date)
        except msgspec.ValidationError:
            return None
        parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if parsed.tzinfo is None:  # naive times are read as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return _epoch_us(parsed)


def _epoch_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def check_records(records: list[Any]) -> tuple[list[int], list[Invalid]]:
    """Telemetry records: objects with an ISO ``timestamp``. Returns their times and any problems."""
    times: list[int] = []
    problems: list[Invalid] = []
    for index, record in enumerate(records):
        stamp = record.get("timestamp") if isinstance(record, dict) else None
        micros = timestamp_us(stamp)
        if micros is None:
            spec = Field("timestamp", "datetime", True, None, None)
            message = (
                "Each record must be an object"
                if not isinstance(record, dict)
                else ("Field is required" if stamp is None else f"Cannot parse {_show(stamp)} as datetime")
            )
            problems.append(_invalid(index, spec, stamp, message))
            times.append(0)
        else:
            times.append(micros)
    return times, problems


def check_media(
    items: list[Any], *, data_field: str, number_field: str, formats: frozenset[str]
) -> tuple[list[int], list[Invalid]]:
    """Frames or buffers: base64 data, a known ``format``, a number and a timestamp, each checked."""
    times, problems = check_records(items)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        data = item.get(data_field)
        if not isinstance(data, str) or not data:
            problems.append(_invalid(index, Field(data_field, "string", True, None, None), data, "Field is required"))
        else:
            try:
                binascii.a2b_base64(data, strict_mode=True)
            except (binascii.Error, ValueError):
                spec = Field(data_field, "base64", True, None, None)
                problems.append(_invalid(index, spec, data, f"{data_field} is not valid base64"))
        kind = item.get("format")
        if not isinstance(kind, str) or kind.lower() not in formats:
            spec = Field("format", "string", True, None, None)
            problems.append(_invalid(index, spec, kind, f"Unknown format {_show(kind)}; use one of {sorted(formats)}"))
        number = item.get(number_field)
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            spec = Field(number_field, "int", True, None, None)
            problems.append(_invalid(index, spec, number, f"{number_field} must be a non-negative integer"))
    problems.sort(key=lambda p: p["recordIndex"])
    return times, problems
