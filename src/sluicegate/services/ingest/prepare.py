"""Turning an upload's body into durable-ready lines: decode, check, canonicalise.

This is the CPU-heavy part of ingestion, a pure function of bytes so that it can run in
worker processes (``SLUICEGATE_INGEST_WORKERS``) while the event loop keeps serving.

Canonical bytes of a record: its JSON text exactly as the client sent it, with every
whitespace character outside strings removed (msgspec's ``json.format(indent=-1)``).
Keys keep the client's order and numbers and strings their spelling: the store holds
what was sent, byte for byte but for whitespace, and re-encoding 10,000 records per
upload (sorting keys) would cost three times the CPU. Each line's SHA-256 names its
atom; the digests are computed where the batch is stored (:mod:`.archiver`), off the
upload's path.
"""

from __future__ import annotations

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
ITEMS = {"telemetry": "records", "video": "frames", "audio": "buffers"}


class _Stamp(msgspec.Struct):
    timestamp: datetime


_STAMPS = {
    name: msgspec.json.Decoder(msgspec.defstruct("S", [("items", list[_Stamp], msgspec.field(name=key))]))
    for name, key in ITEMS.items()
}
_RAWS = {
    name: msgspec.json.Decoder(msgspec.defstruct("R", [("items", list[msgspec.Raw], msgspec.field(name=key))]))
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


def _check_items(kind: str, items: list[Any], schema: dict[str, Any] | None) -> tuple[list[int], list[dict[str, Any]]]:
    """The thorough check (every problem of every item), with a schema or for media."""
    if kind == "video":
        return check_media(items, data_field="imageData", number_field="frameNumber", formats=IMAGE_FORMATS)
    if kind == "audio":
        return check_media(items, data_field="audioData", number_field="bufferNumber", formats=AUDIO_FORMATS)
    stamps, problems = check_records(items)
    if schema is not None:
        compiled = _schemas.get(str(schema))
        if compiled is None:
            compiled = _schemas[str(schema)] = parse_schema(schema)
        seen = {(p["recordIndex"], p["field"]) for p in problems}
        problems.extend(p for p in compiled.check(items, telemetry=True) if (p["recordIndex"], p["field"]) not in seen)
        problems.sort(key=operator.itemgetter("recordIndex"))
    return stamps, problems


def prepare(kind: str, body: bytes, max_items: int, schema: dict[str, Any] | None = None) -> Prepared:
    """Decode and check an upload of a ``kind`` session; canonicalise its items.

    Never raises for bad input: the result says what is wrong.
    """
    key = ITEMS[kind]
    try:
        # Machine clients usually send compact JSON already (JSON.stringify, orjson):
        # a body without any whitespace byte needs no minifying.
        spaced = b" " in body or b"\n" in body or b"\t" in body or b"\r" in body
        compact = msgspec.json.format(body, indent=-1) if spaced else body
        raws = _RAWS[kind].decode(compact).items  # type: ignore[attr-defined]
    except (msgspec.DecodeError, msgspec.ValidationError):
        raws = None
    if not raws:
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            return Prepared(False, error=f"The body must be JSON: {exc}")
        return Prepared(False, error=f"A {kind} upload needs a non-empty '{key}' list", field_name=f"body.{key}")
    if len(raws) > max_items:
        return Prepared(False, too_many=len(raws))
    low = high = 0
    checked = False
    if kind == "telemetry" and schema is None:
        try:  # the fast path: every timestamp checked and parsed in C
            moments = list(map(operator.attrgetter("timestamp"), _STAMPS[kind].decode(compact).items))  # type: ignore[attr-defined]
            low, high = _micros(min(moments)), _micros(max(moments))
            checked = True
        except (msgspec.ValidationError, TypeError, ValueError):
            checked = False
    if not checked:
        stamps, problems = _check_items(kind, _DECODER.decode(compact)[key], schema)
        if problems:
            return Prepared(False, problems=problems)
        low, high = min(stamps), max(stamps)
    lines = b"\n".join(raws) + b"\n"
    return Prepared(True, count=len(raws), lines=lines, min_ts=low, max_ts=high)
