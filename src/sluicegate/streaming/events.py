"""Named-event SSE streams in the fourth seed's format, for routes that do work and report it.

A service writes an async generator of ``(event, data)`` pairs: ``progress`` steps, its
data events (``results``, ``text``, ``audio``, ``intent``...), and ``complete``.
:func:`named_event_frames` wraps it into the seed's stream::

    event: connected   {"message": "Stream started", "streamId": ..., ...}
    event: progress    {"step", "message", "count"?}
    event: <data>      ...
    event: complete    {"total"?, "duration", ...}       duration in ms, filled in here
    event: error       {"message", "error", "code", "timestamp"}   instead of complete
    event: close       {"message": "Stream ended"}       always last

A failure after the stream opened becomes one ``error`` event: an :class:`APIError`, a
provider or store failure keep their sentence; anything else is logged with its
traceback and reported as ``Internal error`` (``PROCESSING_ERROR``), never with
internals. The codes are the seed's upper-case names (``DB_CONNECTION_ERROR``).

Each stream logs the seed's lines (``[product-search-<id>] Starting ...``, ``...
complete``) with structured fields (``stream_id``, ``route``, ``tenant``). A client that
leaves closes the frames, which closes ``events`` too (its ``finally`` runs at once, not
when the garbage collector finds it); ``close`` is then not sent.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.errors import APIError
from sluicegate.streaming.response import EventStreamResponse
from sluicegate.streaming.sse import encode_json_event

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from starlette.responses import Response

    from sluicegate.clock import Clock

__all__ = [
    "NamedEvent",
    "StreamReport",
    "error_code",
    "named_event_frames",
    "named_event_response",
    "new_stream_id",
    "progress",
]

log = logging.getLogger("sluicegate.streams")

NamedEvent = tuple[str, dict[str, Any]]


def progress(step: str, message: str, count: int | None = None, **fields: Any) -> NamedEvent:
    """A ``progress`` event: ``{"step", "message", "count"?, ...fields}``."""
    data: dict[str, Any] = {"step": step, "message": message}
    if count is not None:
        data["count"] = count
    data.update(fields)
    return "progress", data


def new_stream_id(prefix: str) -> str:
    """``<prefix>-<12 hex digits>``, the seed's ``product-search-123`` shape."""
    return f"{prefix}-{secrets.token_hex(6)}"


def error_code(exc: BaseException) -> tuple[str, str]:
    """The seed's ``code`` and the client-facing ``error`` sentence of a failure."""
    from sluicegate.engines.store import StoreUnavailable
    from sluicegate.providers.embeddings.base import EmbeddingError
    from sluicegate.providers.llm.base import ProviderError

    if isinstance(exc, APIError):
        return exc.code.value.upper(), exc.message
    if isinstance(exc, StoreUnavailable):
        return "DB_CONNECTION_ERROR", "Database connection error"
    if isinstance(exc, EmbeddingError):
        return "EMBEDDING_ERROR", str(exc)
    if isinstance(exc, ProviderError):
        return "GENERATION_ERROR", str(exc)
    code = getattr(exc, "stream_code", None)
    if isinstance(code, str):
        return code, str(exc)
    return "PROCESSING_ERROR", "Internal error"


@dataclass(slots=True)
class StreamReport:
    """Who a stream is for and what its log lines say.

    Args:
        stream_id: the ``streamId`` (and the log prefix).
        route: the route's name in logs and metrics (``product_search``).
        what: the words of the log lines (``product search``: ``Starting streaming product search``).
        failure: the ``message`` of the ``error`` event (``Search failed``).
        fields: structured fields of the start and completion lines (query, filters, limit).
        connected: extra fields of the ``connected`` event.
        tenant: the caller's tenant, logged.
    """

    stream_id: str
    route: str
    what: str
    failure: str
    fields: dict[str, Any] = field(default_factory=dict)
    connected: dict[str, Any] = field(default_factory=dict)
    tenant: int | None = None

    def extra(self, **more: Any) -> dict[str, Any]:
        return {"stream_id": self.stream_id, "route": self.route, "tenant": self.tenant, **self.fields, **more}

    def debug(self, message: str, **more: Any) -> None:
        """A progress line (``[product-search-1] Text search found 5 results``), at DEBUG."""
        log.debug("[%s] %s", self.stream_id, message, extra=self.extra(**more))

    def info(self, message: str, **more: Any) -> None:
        log.info("[%s] %s", self.stream_id, message, extra=self.extra(**more))


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return encode_json_event(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), event=name)


async def named_event_frames(
    events: AsyncIterator[NamedEvent], report: StreamReport, *, clock: Clock
) -> AsyncGenerator[bytes]:
    """The encoded stream of ``events``: ``connected`` first, ``close`` last (see the module docs)."""
    try:
        async for frame in _frames(events, report, clock):
            yield frame
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _frames(events: AsyncIterator[NamedEvent], report: StreamReport, clock: Clock) -> AsyncGenerator[bytes]:
    started = clock.monotonic()
    report.info(f"Starting streaming {report.what}")
    yield _frame("connected", {"message": "Stream started", "streamId": report.stream_id, **report.connected})
    try:
        async for name, data in events:
            if name == "complete":
                data.setdefault("duration", round((clock.monotonic() - started) * 1000))
                report.info(
                    f"{report.what[:1].upper()}{report.what[1:]} stream complete",
                    duration_ms=data["duration"],
                    **({"totalResults": data["total"]} if "total" in data else {}),
                )
            elif name == "progress":
                report.debug(str(data.get("message", "")), step=data.get("step"), count=data.get("count"))
            yield _frame(name, data)
    except Exception as exc:
        code, detail = error_code(exc)
        if code == "PROCESSING_ERROR":
            log.exception("[%s] %s failed", report.stream_id, report.what, extra=report.extra())
        else:
            log.error("[%s] %s failed: %s", report.stream_id, report.what, detail, extra=report.extra(code=code))
        yield _frame(
            "error",
            {
                "message": report.failure,
                "error": detail,
                "code": code,
                "timestamp": clock.now().astimezone(UTC).isoformat().replace("+00:00", "Z"),
            },
        )
    yield _frame("close", {"message": "Stream ended"})


def named_event_response(
    events: AsyncIterator[NamedEvent],
    report: StreamReport,
    *,
    clock: Clock,
    heartbeat: float | None,
    response: Response,
) -> EventStreamResponse:
    """The route's answer: :func:`named_event_frames` of ``events`` as an SSE response, with
    the headers the route's dependencies set on ``response`` (the ``X-RateLimit-*`` counts)
    and ``: ping`` comments after ``heartbeat`` seconds of silence."""
    frames = named_event_frames(events, report, clock=clock)
    return EventStreamResponse(frames, clock=clock, heartbeat=heartbeat, headers=dict(response.headers))
