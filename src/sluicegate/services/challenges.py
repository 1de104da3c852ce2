"""Challenge chat, exactly as the first seed: ``GET /api/streams/challenge-chat?name=``.

The stream needs no authentication. It answers ``404 {"error": "Challenge not found"}``
for an unknown challenge and ``404 {"error": "Challenge is not active"}`` for one that
is not ``active``; otherwise its first event is
``data: {"type":"connection","message":...}`` and each chat message follows as
``data: {"type":"message","message":{...}}``. Events carry ids (broker positions), so
a reconnecting client resumes with ``Last-Event-ID``. When the challenge stops being
active, open streams get a last event (``{"type":"ended",...}``) and close.

Challenges and their messages are stored in the database; messages also go through
the broker channel ``challenge/<name>``, whose subscribers are the seed's "connected
clients". Deliberate divergence from the tenant rule: challenges are public (the
seed's stream has no authentication), so they are global, managed by admin keys.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base, UTCDateTime
from sluicegate.errors import APIError
from sluicegate.security.deps import AdminIdentity, ApiKeyIdentity  # noqa: TC001 -- FastAPI reads annotations
from sluicegate.services.relay import follow, memo_frame
from sluicegate.streaming import Frame, StreamOut, StreamRouter

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.broker import Broker, BrokerMessage, Gap
    from sluicegate.engines.store import Store

__all__ = ["ChallengeService", "ChallengeStatus"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"


class ChallengeStatus(enum.StrEnum):
    UPCOMING = "upcoming"
    ACTIVE = "active"
    ENDED = "ended"


class ChallengeRow(Base):
    __tablename__ = "challenges"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChallengeMessageRow(Base):
    __tablename__ = "challenge_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id", ondelete="CASCADE"), index=True)
    author: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChallengeIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Unique name, used in the chat stream's `name`.")
    status: ChallengeStatus = ChallengeStatus.UPCOMING


class ChallengeUpdate(BaseModel):
    status: ChallengeStatus


class ChatIn(BaseModel):
    author: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=4000)


class Challenge(BaseModel):
    name: str
    status: ChallengeStatus
    connectedClients: int
    createdAt: datetime
    updatedAt: datetime


class ChatMessage(BaseModel):
    id: int
    author: str
    text: str
    createdAt: datetime
    position: str


class ChatHandshake(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="The challenge to follow.")


_FINAL_TYPES = frozenset({"ended", "closed"})


def _chat_frame(message: BrokerMessage) -> Frame:
    return memo_frame(message, "chat.sse", lambda m: Frame(m.data, id=m.position))


def _is_final(message: BrokerMessage) -> bool:
    final = message.memo.get("chat.final")
    if final is None:
        final = message.memo["chat.final"] = orjson.loads(message.data).get("type") in _FINAL_TYPES
    return bool(final)


def _gap_frame(gap: Gap) -> Frame:
    body = {"after": gap.after, "resumedFrom": gap.resumed_from, "reason": gap.reason}
    return Frame(orjson.dumps({"type": "gap", "message": body}))


def _channel(name: str) -> str:
    return f"challenge/{name}"


class ChallengeService:
    """Challenges, their chat, and the seed's chat stream.

    Args:
        store: where challenges and messages are kept.
        broker: carries chat messages to connected clients.
        clock: timestamps.
    """

    def __init__(self, store: Store, broker: Broker, clock: Clock) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock
        self.router = APIRouter(tags=["challenges"])
        self.streams = StreamRouter(tags=("challenges",))
        self._routes()
        self._stream_routes()

    async def _find(self, name: str) -> ChallengeRow | None:
        async with self.store.session() as session:
            found: ChallengeRow | None = await session.scalar(select(ChallengeRow).where(ChallengeRow.name == name))
            return found

    async def _describe(self, row: ChallengeRow) -> Challenge:
        stats = await self.broker.stats(_channel(row.name))
        return Challenge(
            name=row.name,
            status=ChallengeStatus(row.status),
            connectedClients=stats.subscribers,
            createdAt=row.created_at,
            updatedAt=row.updated_at,
        )

    def _routes(self) -> None:
        router = self.router

        @router.post("/api/challenges", status_code=201, summary="Create a challenge (admin key)")
        async def create_challenge(body: ChallengeIn, admin: AdminIdentity) -> Challenge:
            now = self.clock.now()
            if await self._find(body.name) is not None:
                raise APIError.already_exists("Challenge already exists", name=body.name)
            row = ChallengeRow(name=body.name, status=body.status.value, created_at=now, updated_at=now)
            async with self.store.session() as session:
                session.add(row)
            return await self._describe(row)

        @router.get("/api/challenges/{name}", summary="A challenge and its connected clients")
        async def get_challenge(name: str = Path(max_length=100)) -> Challenge:
            row = await self._find(name)
            if row is None:
                raise APIError.not_found("Challenge not found")
            return await self._describe(row)

        @router.patch("/api/challenges/{name}", summary="Change a challenge's status (admin key)")
        async def update_challenge(
            body: ChallengeUpdate, admin: AdminIdentity, name: str = Path(max_length=100)
        ) -> Challenge:
            async with self.store.session() as session:
                row = await session.scalar(select(ChallengeRow).where(ChallengeRow.name == name))
                if row is None:
                    raise APIError.not_found("Challenge not found")
                previous = row.status
                row.status = body.status.value
                row.updated_at = self.clock.now()
            if previous == ChallengeStatus.ACTIVE and body.status != ChallengeStatus.ACTIVE:
                kind, text = (
                    ("ended", f"Challenge {name} has ended")
                    if body.status == ChallengeStatus.ENDED
                    else ("closed", f"Challenge {name} is no longer active")
                )
                await self.broker.publish(_channel(name), orjson.dumps({"type": kind, "message": text}))
            return await self._describe(row)

        @router.post("/api/challenges/{name}/chat", status_code=201, summary="Post a chat message (any API key)")
        async def post_chat(body: ChatIn, identity: ApiKeyIdentity, name: str = Path(max_length=100)) -> ChatMessage:
            now = self.clock.now()
            async with self.store.session() as session:
                row = await session.scalar(select(ChallengeRow).where(ChallengeRow.name == name))
                if row is None:
                    raise APIError.not_found("Challenge not found")
                if row.status != ChallengeStatus.ACTIVE:
                    raise APIError.failed_precondition("Challenge is not active")
                message = ChallengeMessageRow(challenge_id=row.id, author=body.author, text=body.text, created_at=now)
                session.add(message)
                await session.flush()
                message_id = message.id
            payload: dict[str, Any] = {
                "id": message_id,
                "author": body.author,
                "text": body.text,
                "createdAt": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            }
            position = await self.broker.publish(_channel(name), orjson.dumps({"type": "message", "message": payload}))
            return ChatMessage(id=message_id, author=body.author, text=body.text, createdAt=now, position=position)

    def _stream_routes(self) -> None:
        @self.streams.stream_out("/api/streams/challenge-chat")
        async def challenge_chat(handshake: ChatHandshake, stream: StreamOut[Any]) -> None:
            """Follow a challenge's chat (no authentication), as the first seed describes."""
            row = await self._find(handshake.name)
            if row is None:
                raise APIError.not_found("Challenge not found")
            if row.status != ChallengeStatus.ACTIVE:
                raise APIError.not_found("Challenge is not active")
            subscription = await self.broker.subscribe(_channel(row.name), after=stream.last_event_id)
            try:
                current = await self._find(handshake.name)  # it may have ended while we subscribed
                if current is None or current.status != ChallengeStatus.ACTIVE:
                    raise APIError.not_found("Challenge is not active")
                await stream.send({"type": "connection", "message": f"Connected to chat for challenge {row.name}"})
                await follow(stream, subscription, _chat_frame, gap_frame=_gap_frame, until=_is_final)
            finally:
                subscription.close()
