"""The server side of bench/sse_fanout.py: the real channel service, and three baselines.

- ``channel``: Sluicegate's channel service (``/api/channels/bench/events``), published
  to over its WebSocket (``/api/channels/bench/ws``): memory broker, one bounded
  outbox per subscriber, each message framed once, queued frames joined into one write;
- ``starlette``: the baseline, a plain ``StreamingResponse`` over a per-subscriber
  ``asyncio.Queue`` of pre-encoded frames (one write per event);
- ``sse-starlette``: sse-starlette's ``EventSourceResponse`` over the same queues;
- ``fastapi-sse``: FastAPI's own ``fastapi.sse.EventSourceResponse`` with ``yield``.

The baselines are published to over ``/bench/{impl}/publish`` (a WebSocket whose text
messages are fanned out as they come), so every impl has the same external publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator  # noqa: TC003 -- FastAPI reads route annotations at run time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.sse import EventSourceResponse as FastAPIEventSourceResponse
from fastapi.sse import ServerSentEvent
from sse_starlette import EventSourceResponse
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from sluicegate.app import create_app as create_sluicegate_app

control = APIRouter(prefix="/bench")
QUEUE_SIZE = 1000
queues: dict[str, set[asyncio.Queue[bytes]]] = {"starlette": set(), "sse-starlette": set(), "fastapi-sse": set()}


async def _drain(impl: str) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
    queues[impl].add(queue)
    try:
        while True:
            yield await queue.get()
    finally:
        queues[impl].discard(queue)


@control.get("/starlette")
async def starlette_stream(request: Request) -> StreamingResponse:
    frames = (b"data: " + data + b"\n\n" async for data in _drain("starlette"))
    return StreamingResponse(frames, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@control.get("/sse-starlette")
async def sse_starlette_stream(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        async for data in _drain("sse-starlette"):
            yield {"data": data.decode()}

    return EventSourceResponse(events())


@control.get("/fastapi-sse", response_class=FastAPIEventSourceResponse)
async def fastapi_sse_stream(request: Request) -> AsyncIterator[ServerSentEvent]:
    async for data in _drain("fastapi-sse"):
        yield ServerSentEvent(raw_data=data.decode())


@control.get("/subscribers")
async def subscribers(impl: str, request: Request) -> dict[str, Any]:
    if impl == "channel":
        stats = await request.app.state.broker.stats("t0/bench")
        return {"subscribers": stats.subscribers}
    return {"subscribers": len(queues[impl])}


@control.websocket("/{impl}/publish")
async def publish(websocket: WebSocket, impl: str) -> None:
    await websocket.accept()
    targets = queues[impl]
    try:
        while True:
            data = (await websocket.receive_text()).encode()
            for queue in targets:
                queue.put_nowait(data)
    except WebSocketDisconnect:
        return


def create_app() -> FastAPI:
    return create_sluicegate_app(routers=[control])
