"""The fourth seed's named-event streams (``streaming/events.py``), without sockets."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.clock import ManualClock
from sluicegate.engines.store import StoreUnavailable
from sluicegate.errors import APIError
from sluicegate.streaming.events import StreamReport, named_event_frames
from sluicegate.streaming.sse import SSEDecoder

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from sluicegate.streaming.events import NamedEvent


def report() -> StreamReport:
    return StreamReport(
        stream_id="product-search-1", route="product_search", what="product search", failure="Search failed"
    )


async def decoded(
    events: AsyncGenerator[NamedEvent], clock: ManualClock | None = None
) -> list[tuple[str, dict[str, Any]]]:
    frames = named_event_frames(events, report(), clock=clock or ManualClock())
    body = b"".join([frame async for frame in frames])
    return [(event.event or "", orjson.loads(event.data)) for event in SSEDecoder().feed(body)]


async def test_connected_first_complete_with_a_duration_and_close_last() -> None:
    clock = ManualClock()

    async def work() -> AsyncGenerator[NamedEvent]:
        yield "progress", {"step": "text_search", "message": "Text search found 2 results", "count": 2}
        await clock.advance(1.5)
        yield "complete", {"total": 2}

    events = await decoded(work(), clock)
    assert [name for name, _ in events] == ["connected", "progress", "complete", "close"]
    assert events[0][1] == {"message": "Stream started", "streamId": "product-search-1"}
    assert events[2][1] == {"total": 2, "duration": 1500}
    assert events[3][1] == {"message": "Stream ended"}


async def test_a_failure_is_one_error_event_in_the_seeds_shape_then_close() -> None:
    async def failing(exc: Exception) -> AsyncGenerator[NamedEvent]:
        yield "progress", {"step": "text_search", "message": "..."}
        raise exc

    for exc, code, detail in [
        (StoreUnavailable("The database is unavailable: OperationalError at /srv/db"), "DB_CONNECTION_ERROR", None),
        (APIError.invalid_argument("Bad filter"), "INVALID_ARGUMENT", "Bad filter"),
        (RuntimeError("/home/me/secret.py line 3"), "PROCESSING_ERROR", "Internal error"),
    ]:
        events = await decoded(failing(exc))
        assert [name for name, _ in events] == ["connected", "progress", "error", "close"]
        error = events[2][1]
        assert error["message"] == "Search failed" and error["code"] == code
        assert error["timestamp"].endswith("Z")
        assert "/" not in error["error"]  # no paths, no driver messages
        if detail is not None:
            assert error["error"] == detail


async def test_closing_the_frames_closes_the_services_generator_at_once() -> None:
    closed = []

    async def endless() -> AsyncGenerator[NamedEvent]:
        try:
            while True:
                yield "text", {"token": "a"}
        finally:
            closed.append(True)

    frames = named_event_frames(endless(), report(), clock=ManualClock())
    async with contextlib.aclosing(frames):
        async for frame in frames:
            if b"event: text" in frame:
                break
    assert closed == [True]
