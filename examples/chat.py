"""Stream-in-out: a chat room; each message is broadcast to the other participants.

The broadcast group encodes each message once, whatever the number of
participants, and never waits for a slow one: a participant that stops reading
is cut off with a ``slow_consumer`` close (1008) and the others carry on.

    sluicegate serve --app examples.chat:create_app
    # then connect WebSockets to ws://127.0.0.1:8000/chat?userId=alice (and bob)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from sluicegate.app import create_app as create_sluicegate_app
from sluicegate.streaming import BroadcastGroup, StreamInOut, StreamRouter

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sluicegate.settings import Settings

streams = StreamRouter()


class ChatHandshake(BaseModel):
    userId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class ChatIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class ChatOut(BaseModel):
    userId: str
    text: str
    sentAt: datetime


room: BroadcastGroup[ChatOut] = BroadcastGroup(ChatOut)


@streams.stream_in_out("/chat")
async def chat(handshake: ChatHandshake, stream: StreamInOut[ChatIn, ChatOut]) -> None:
    """Join the room as ``userId``; what you send reaches everyone else in the room."""
    with room.joined(stream):
        async for message in stream:
            room.publish(
                ChatOut(userId=handshake.userId, text=message.text, sentAt=datetime.now(UTC)),
                exclude=stream,
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The example app: Sluicegate with the chat room mounted."""
    return create_sluicegate_app(settings, streams=[streams])
