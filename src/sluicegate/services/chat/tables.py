"""Conversation memory: the turns of a chat session (``sessionId``), per tenant, bounded.

Both chat routes (``/api/chat/query/stream`` and the sales agent) keep a session's turns
here, so a follow-up on any node sees the earlier ones. Only the newest
``SLUICEGATE_CHAT_MEMORY_TURNS`` turns are kept; older ones are deleted as new ones come.
"""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 -- SQLAlchemy reads annotations at run time

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base, UTCDateTime
from sluicegate.services.search.tables import AutoKey

__all__ = ["ChatTurnRow"]


class ChatTurnRow(Base):
    __tablename__ = "chat_turns"
    __table_args__ = (Index("ix_chat_turns_session", "tenant", "session_id", "pk"),)

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    tenant: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[str] = mapped_column(String(100))
    route: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
