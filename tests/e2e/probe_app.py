"""A test-only app: stream endpoints that report, over HTTP, what happened on the server side."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from sluicegate.app import create_app as create_sluicegate_app
from sluicegate.errors import APIError
from sluicegate.streaming import BroadcastGroup, StreamInOut, StreamOut, StreamRouter

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

streams = StreamRouter(prefix="/probe")
control = APIRouter(prefix="/probe")

#: tag -> how many handlers started, were cancelled, ran their finally block.
lifecycle: defaultdict[str, Counter[str]] = defaultdict(Counter)
room: BroadcastGroup[Any] = BroadcastGroup()


class TagHandshake(BaseModel):
    tag: str = "default"
    interval: float = Field(0.01, ge=0)


class FailHandshake(BaseModel):
    how: str


class Tick(BaseModel):
    n: int


class Identity(BaseModel):
    user: str


class TokenAuthenticator:
    """``X-Test-Token: good`` is alice; any other token is refused; none is unauthenticated."""

    async def authenticate(self, conn: HTTPConnection) -> Identity:
        token = conn.headers.get("x-test-token") or conn.query_params.get("token")
        if token is None:
            raise APIError.unauthenticated("Unauthorized: token is missing.")
        if token != "good":
            raise APIError.permission_denied("Forbidden: invalid token.")
        return Identity(user="alice")


@streams.stream_out("/ticks")
async def ticks(handshake: TagHandshake, stream: StreamOut[Tick]) -> None:
    """Send a tick every `interval` seconds until the client leaves."""
    lifecycle[handshake.tag]["started"] += 1
    try:
        n = 0
        while True:
            await stream.send(Tick(n=n), event="tick", id=str(n))
            n += 1
            await asyncio.sleep(handshake.interval)
    except asyncio.CancelledError:
        lifecycle[handshake.tag]["cancelled"] += 1
        raise
    finally:
        lifecycle[handshake.tag]["finally"] += 1


@streams.stream_out("/silent")
async def silent(stream: StreamOut[Tick]) -> None:
    """Send nothing, forever (heartbeats only)."""
    await asyncio.Event().wait()


@streams.stream_out("/fail")
async def fail(handshake: FailHandshake, stream: StreamOut[Tick]) -> None:
    """Send one tick, then fail as asked: an APIError, or a bug."""
    await stream.send(Tick(n=0))
    if handshake.how == "not_found":
        raise APIError.not_found("The thing went away")
    raise RuntimeError("secret internals: do not show the client")


@streams.stream_out("/whoami", auth=True)
async def whoami(stream: StreamOut[Identity]) -> None:
    """Send the caller's identity."""
    await stream.send(stream.auth)


@streams.stream_out("/room")
async def room_member(handshake: TagHandshake, stream: StreamOut[Any]) -> None:
    """Receive everything published to the room."""
    lifecycle[handshake.tag]["started"] += 1
    try:
        with room.joined(stream):
            await asyncio.Event().wait()
    finally:
        lifecycle[handshake.tag]["finally"] += 1


@streams.stream_in_out("/echo", auth=True)
async def echo(stream: StreamInOut[Tick, Tick]) -> None:
    """Echo ticks back, doubled."""
    async for tick in stream:
        await stream.send(Tick(n=tick.n * 2))


@control.get("/state")
async def state() -> dict[str, dict[str, int]]:
    return {tag: dict(counts) for tag, counts in lifecycle.items()}


@control.post("/room/publish")
async def publish(count: int = 1, size: int = 10, pace: float = 0.0) -> dict[str, int]:
    delivered = 0
    for n in range(count):
        delivered += room.publish({"n": n, "pad": "x" * size}, id=str(n))
        await asyncio.sleep(pace)
    return {"delivered": delivered, "members": len(room)}


@control.get("/crash")
async def crash() -> None:
    raise RuntimeError("secret internals: do not show the client")


def create_app() -> FastAPI:
    return create_sluicegate_app(streams=[streams], routers=[control], authenticator=TokenAuthenticator())
