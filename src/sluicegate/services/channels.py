"""Native channels: publish JSON, follow it live over SSE or WebSocket, resume, read history.

Channels belong to the caller's tenant (bearer token or API key): the same name in two
tenants is two channels, and no tenant can see another's.

========================================  ==================================================
``POST /api/channels/{channel}/messages``  publish the JSON body; answers its ``position``
``GET /api/channels/{channel}/events``     SSE: ``id:`` is the position, resume with
                                           ``Last-Event-ID``; ``event: gap`` when history
                                           was lost
``GET /api/channels/{channel}/ws``         WebSocket: ``{"type": "message", "position",
                                           "data"}`` frames; every JSON frame the client
                                           sends is published and acknowledged with
                                           ``{"type": "ack", "position"}``
``GET /api/channels/{channel}/history``    retained messages after ``since`` (``limit``)
``GET /api/channels``                      the tenant's channels with subscriber counts
========================================  ==================================================
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response  # noqa: TC002 -- FastAPI reads route annotations at run time

from sluicegate.errors import APIError
from sluicegate.responses import json_response
from sluicegate.security.deps import AnyIdentity  # noqa: TC001 -- FastAPI reads route annotations at run time
from sluicegate.services.relay import follow, memo_frame
from sluicegate.streaming import Frame, StreamInOut, StreamOut, StreamRouter

if TYPE_CHECKING:
    from sluicegate.engines.broker import Broker, BrokerMessage, Gap
    from sluicegate.security.identity import Identity

__all__ = ["ChannelService"]

CHANNEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ChannelName = Annotated[str, Path(pattern=CHANNEL_PATTERN, description="The channel's name.")]


class ChannelHandshake(BaseModel):
    channel: str = Field(pattern=CHANNEL_PATTERN, description="The channel's name.")


def _key(identity: Identity, channel: str) -> str:
    return f"t{identity.tenant}/{channel}"


def _sse_frame(message: BrokerMessage) -> Frame:
    return Frame(message.data, id=message.position)


def _ws_frame(message: BrokerMessage) -> Frame:
    position = orjson.dumps(message.position)
    return Frame(b'{"type":"message","position":' + position + b',"data":' + message.data + b"}")


def _gap_body(gap: Gap) -> dict[str, Any]:
    return {"after": gap.after, "resumedFrom": gap.resumed_from, "reason": gap.reason}


def _sse_gap(gap: Gap) -> Frame:
    return Frame(orjson.dumps(_gap_body(gap)), event="gap")


def _ws_gap(gap: Gap) -> Frame:
    return Frame(orjson.dumps({"type": "gap", **_gap_body(gap)}))


def sse_frame(message: BrokerMessage) -> Frame:
    """The SSE frame of a channel message (``id:`` position, ``data:`` the JSON), made once."""
    return memo_frame(message, "channel.sse", _sse_frame)


def ws_frame(message: BrokerMessage) -> Frame:
    """The WebSocket envelope of a channel message, made once."""
    return memo_frame(message, "channel.ws", _ws_frame)


class ChannelService:
    """The channel routes over a broker.

    Args:
        broker: where messages live.
        max_message_bytes: the largest message accepted (413 above it).
    """

    def __init__(self, broker: Broker, *, max_message_bytes: int) -> None:
        self.broker = broker
        self.max_message_bytes = max_message_bytes
        self.router = APIRouter(prefix="/api/channels", tags=["channels"])
        self.streams = StreamRouter(prefix="/api/channels", tags=("channels",))
        self._routes()
        self._stream_routes()

    def _encode(self, value: Any) -> bytes:
        data = orjson.dumps(value)
        if len(data) > self.max_message_bytes:
            raise APIError.payload_too_large(
                f"Message is {len(data)} bytes; the limit is {self.max_message_bytes}", limit=self.max_message_bytes
            )
        return data

    async def _read_json(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_message_bytes:
            raise APIError.payload_too_large(
                f"Message is {declared} bytes; the limit is {self.max_message_bytes}", limit=self.max_message_bytes
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_message_bytes:
                raise APIError.payload_too_large(
                    f"Message is over the limit of {self.max_message_bytes} bytes", limit=self.max_message_bytes
                )
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise APIError.invalid_argument(f"The body must be JSON: {exc}") from None
        return self._encode(value)

    def _routes(self) -> None:
        broker = self.broker

        @self.router.post("/{channel}/messages", status_code=201, summary="Publish a JSON message")
        async def publish(channel: ChannelName, request: Request, identity: AnyIdentity) -> dict[str, str]:
            """Publish the request body (any JSON value); answers the message's position."""
            data = await self._read_json(request)
            position = await broker.publish(_key(identity, channel), data)
            return {"channel": channel, "position": position}

        @self.router.get("/{channel}/history", summary="Retained messages after a position")
        async def history(
            channel: ChannelName,
            identity: AnyIdentity,
            since: Annotated[str | None, Query(max_length=200, description="A position; omit for the oldest.")] = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ) -> Response:
            """Retained messages after `since`, oldest first, with `gap` set when some were lost."""
            page = await broker.history(_key(identity, channel), after=since, limit=limit)
            return json_response(
                {
                    "channel": channel,
                    "messages": [
                        {"position": m.position, "data": orjson.Fragment(m.data), "publishedAt": m.published_at}
                        for m in page.messages
                    ],
                    "gap": _gap_body(page.gap) if page.gap is not None else None,
                    "lastPosition": page.last_position,
                }
            )

        @self.router.get("", summary="The caller's channels")
        async def channels(identity: AnyIdentity) -> dict[str, list[dict[str, Any]]]:
            """Channels of the caller's tenant with subscribers on this node and the last position."""
            prefix = f"t{identity.tenant}/"
            found = await broker.channels(prefix)
            return {
                "channels": [
                    {
                        "name": s.channel.removeprefix(prefix),
                        "subscribers": s.subscribers,
                        "lastPosition": s.last_position,
                        "retained": s.retained,
                    }
                    for s in found
                ]
            }

    def _stream_routes(self) -> None:
        broker = self.broker

        @self.streams.stream_out("/{channel}/events", auth=True)
        async def channel_events(handshake: ChannelHandshake, stream: StreamOut[Any]) -> None:
            """Follow a channel: each event's id is its position; resume with Last-Event-ID."""
            subscription = await broker.subscribe(_key(stream.auth, handshake.channel), after=stream.last_event_id)
            await follow(stream, subscription, sse_frame, gap_frame=_sse_gap)

        @self.streams.stream_in_out("/{channel}/ws", auth=True)
        async def channel_socket(handshake: ChannelHandshake, stream: StreamInOut[Any, Any]) -> None:
            """Follow a channel and publish to it: every JSON message sent is published and acknowledged."""
            key = _key(stream.auth, handshake.channel)
            subscription = await broker.subscribe(key, after=stream.last_event_id)

            async def publish_each() -> None:
                async for value in stream:
                    try:
                        position = await broker.publish(key, self._encode(value))
                    except APIError as exc:
                        await stream.send({"type": "error", **exc.body()})
                        continue
                    await stream.send({"type": "ack", "position": position})

            tasks = {
                asyncio.create_task(follow(stream, subscription, ws_frame, gap_frame=_ws_gap)),
                asyncio.create_task(publish_each()),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # an error of either ends the stream with it
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                subscription.close()
