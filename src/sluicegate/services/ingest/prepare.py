"""Turning an upload's body into durable-ready lines: decode, check, canonicalise, hash.

This is the CPU-heavy part of ingestion, a pure function of bytes so that it can run in
worker processes (``SLUICEGATE_INGEST_WORKERS``) while the event loop keeps serving.

Canonical bytes of a record: compact JSON with object keys sorted (msgspec's
``order="sorted"``), one per line. Each line's SHA-256 names its atom.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from sluicegate.services.ingest.validation import (
    AUDIO_FORMATS,
    IMAGE_FORMATS,
    check_media,
    check_records,
    parse_schema,
)

__all__ = ["Prepared", "prepare"]

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder(order="sorted")
ITEMS = {"telemetry": "records", "video": "frames", "audio": "buffers"}


class _Stamp(msgspec.Struct):
    timestamp: datetime


_STAMPS = {
    name: msgspec.json.Decoder(msgspec.defstruct("S", [("items", list[_Stamp], msgspec.field(name=key))]))
    for name, key in ITEMS.items()
}
_schemas: dict[str, Any] = {}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Prepared:
    """What :func:`prepare` made of an upload."""

    ok: bool
    count: int = 0
    lines: bytes = b""  # canonical records, one per line, each ending in \\n
    digests: bytes = b""  # 32 bytes per record, in order
    min_ts: int = 0
    max_ts: int = 0
    error: str | None = None  # a body that is not a usable upload at all
    field_name: str | None = None
    too_many: int | None = None  # the item count, when over the limit
    problems: list[dict[str, Any]] = field(default_factory=list)  # "Invalid data format"


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def prepare(kind: str, body: bytes, max_items: int, schema: dict[str, Any] | None = None) -> Prepared:
    """Decode and check an upload of a ``kind`` session; canonicalise and hash its items.

    Never raises for bad input: the result says what is wrong.
    """
    key = ITEMS[kind]
    try:
        payload = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        return Prepared(False, error=f"The body must be JSON: {exc}")
    items = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        return Prepared(False, error=f"A {kind} upload needs a non-empty '{key}' list", field_name=f"body.{key}")
    if len(items) > max_items:
        return Prepared(False, too_many=len(items))
    stamps: list[int] | None = None
    if kind == "telemetry" and schema is None:
        try:  # the fast path: every timestamp checked and parsed in C
            parsed = _STAMPS[kind].decode(body).items  # type: ignore[attr-defined]
            moments = list(map(operator.attrgetter("timestamp"), parsed))
            low, high = _micros(min(moments)), _micros(max(moments))
        except (msgspec.ValidationError, TypeError, ValueError):
            parsed = None
        if parsed is None:
            stamps, problems = check_records(items)
            if problems:
                return Prepared(False, problems=problems)
            low, high = min(stamps), max(stamps)
    else:
        if kind == "telemetry":
            stamps, problems = check_records(items)
            compiled = _schemas.get(str(schema))
            if compiled is None:
                compiled = _schemas[str(schema)] = parse_schema(schema)
            seen = {(p["recordIndex"], p["field"]) for p in problems}
            problems.extend(
                p for p in compiled.check(items, telemetry=True) if (p["recordIndex"], p["field"]) not in seen
            )
            problems.sort(key=operator.itemgetter("recordIndex"))
        elif kind == "video":
            stamps, problems = check_media(
                items, data_field="imageData", number_field="frameNumber", formats=IMAGE_FORMATS
            )
        else:
            stamps, problems = check_media(
                items, data_field="audioData", number_field="bufferNumber", formats=AUDIO_FORMATS
            )
        if problems:
            return Prepared(False, problems=problems)
        low, high = min(stamps), max(stamps)
    lines = _ENCODER.encode_lines(items)
    sha = hashlib.sha256
    digests = b"".join([sha(line).digest() for line in lines.split(b"\n")[:-1]])
    return Prepared(True, count=len(items), lines=lines, digests=digests, min_ts=low, max_ts=high)
