"""The race-session table and the API's shapes."""

from __future__ import annotations

import enum
from datetime import datetime  # noqa: TC003 -- pydantic and SQLAlchemy read annotations at run time
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base, UTCDateTime

__all__ = ["STREAM_PATTERN", "RaceSessionRow", "SessionIn", "SessionOut", "SessionState"]

#: A stream ID (the seed: "Linux username for the user"): no path separators, no leading dot.
STREAM_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


class SessionState(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class RaceSessionRow(Base):
    __tablename__ = "race_sessions"
    __table_args__ = (
        # One open session per stream, enforced by the database as well.
        Index(
            "uq_race_sessions_open_stream",
            "stream",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    stream: Mapped[str] = mapped_column(String(64), index=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    archived_points: Mapped[int] = mapped_column(BigInteger, default=0)
    archived_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    archived_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The identity of the session log that holds its points (SessionLog.identity).
    log: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The archive being written: its number and the index after its last point (None: none).
    cut_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cut_end: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class SessionIn(BaseModel):
    stream: str = Field(pattern=STREAM_PATTERN, description="The stream ID data will be posted for.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Anything to keep with the session.")


class SessionOut(BaseModel):
    id: str
    stream: str
    metadata: dict[str, Any]
    state: SessionState
    data_points: int = Field(description="Points acknowledged so far, archived or still in the session's log.")
    bytes: int = Field(description="Size of those points as JSON Lines, before compression.")
    spooled_points: int = Field(description="Points durable in the session's log, not archived yet.")
    archived_keys: list[str]
    created_at: datetime
    closed_at: datetime | None
    last_error: str | None = Field(description="Why the last archive attempt failed, until one succeeds.")
    failed_attempts: int = Field(description="Archive attempts failed since the last success.")
