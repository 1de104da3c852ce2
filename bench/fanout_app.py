"""The server side of bench/sse_fanout.py: one broadcast, four ways of writing SSE.

- ``sluicegate``: a ``stream_out`` endpoint in a :class:`BroadcastGroup` (encode once,
  one bounded outbox per subscriber, queued frames joined into one write);
- ``starlette``: the baseline, a plain ``StreamingResponse`` over a per-subscriber
  ``asyncio.Queue`` of pre-encoded frames (one write per event);
- ``sse-starlette``: sse-starlette's ``EventSourceResponse`` over the same queues;
- ``fastapi-sse``: FastAPI's own ``fastapi.sse.EventSourceResponse`` with ``yield``.

``POST /bench/publish`` publishes ``count`` messages of about ``size`` bytes, each
carrying its publish time in nanoseconds, in bursts of ``burst``; after each burst it
waits while any subscriber has more than ``burst`` frames queued, so the publisher
runs as fast as the slowest subscriber drains (no subscriber is cut off).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator  # noqa: TC003 -- FastAPI reads route annotations at run time
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.sse import EventSourceResponse as FastAPIEventSourceResponse
from fastapi.sse import ServerSentEvent
from sse_starlette import EventSourceResponse
from starlette.responses import StreamingResponse

from sluicegate.app import create_app as create_sluicegate_app
from sluicegate.streaming import BroadcastGroup, Frame, StreamOut, StreamRouter

streams = StreamRouter(prefix="/bench")
control = APIRouter(prefix="/bench")

group: BroadcastGroup[Any] = BroadcastGroup()
members: set[StreamOut[Any]] = set()
queues: dict[str, set[asyncio.Queue[bytes | None]]] = {"starlette": set(), "sse-starlette": set(), "fastapi-sse": set()}
QUEUE_SIZE = 1000


@streams.stream_out("/sluicegate")
async def sluicegate_stream(stream: StreamOut[Any]) -> None:
    members.add(stream)
    try:
        with group.joined(stream):
            await asyncio.Event().wait()
    finally:
        members.discard(stream)


async def _drain(impl: str, request: Request) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
    queues[impl].add(queue)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item
    finally:
        queues[impl].discard(queue)


@control.get("/starlette")
async def starlette_stream(request: Request) -> StreamingResponse:
    frames = _drain("starlette", request)
    return StreamingResponse(frames, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@control.get("/sse-starlette")
async def sse_starlette_stream(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        async for data in _drain("sse-starlette", request):
            yield {"data": data.decode()}

    return EventSourceResponse(events())


@control.get("/fastapi-sse", response_class=FastAPIEventSourceResponse)
async def fastapi_sse_stream(request: Request) -> AsyncIterator[ServerSentEvent]:
    async for data in _drain("fastapi-sse", request):
        yield ServerSentEvent(raw_data=data.decode())


@control.get("/subscribers")
async def subscribers(impl: str) -> dict[str, int]:
    return {"subscribers": len(members) if impl == "sluicegate" else len(queues[impl])}


def _backlog(impl: str) -> int:
    if impl == "sluicegate":
        return max((m.backlog for m in members), default=0)
    return max((q.qsize() for q in queues[impl]), default=0)


@control.post("/publish")
async def publish(impl: str, count: int, size: int = 100, burst: int = 10) -> dict[str, float]:
    pad = "x" * max(0, size - 60)
    started = time.perf_counter()
    for seq in range(count):
        data = orjson.dumps({"t": time.time_ns(), "seq": seq, "pad": pad})
        if impl == "sluicegate":
            group.publish_frame(Frame(data))
        else:
            frame = b"data: " + data + b"\n\n"
            for queue in queues[impl]:
                queue.put_nowait(frame)
        if seq % burst == burst - 1:
            await asyncio.sleep(0)
            while _backlog(impl) > burst:  # noqa: ASYNC110 -- polling many queues is the point
                await asyncio.sleep(0.0005)
    return {"published": count, "seconds": time.perf_counter() - started}


def create_app() -> FastAPI:
    return create_sluicegate_app(streams=[streams], routers=[control])
