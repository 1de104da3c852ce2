"""Conversation memory: the turns of a ``sessionId``, per tenant, bounded, in the database.

A turn is one exchange, the user's question and the answer, stored as two
:class:`~sluicegate.services.chat.tables.ChatTurnRow` rows (``role`` ``user`` and
``assistant``). :meth:`ChatMemory.remember` stores a turn and deletes all but the newest
``turns`` of the session in the same transaction; :meth:`ChatMemory.history` reads them
back, oldest first. Because the turns live in the database, a follow-up served by any
node sees the earlier ones. Both chat routes use it (``route`` tells them apart in the
rows, and the history holds both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from sluicegate.services.chat.prompt import PromptTurn
from sluicegate.services.chat.tables import ChatTurnRow

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store

__all__ = ["ChatMemory"]


class ChatMemory:
    """The bounded turns of chat sessions.

    Args:
        store: where the turns live.
        clock: stamps them.
        turns: turns kept per session (``0`` remembers nothing).
    """

    def __init__(self, store: Store, *, clock: Clock, turns: int) -> None:
        self.store = store
        self.clock = clock
        self.turns = turns

    async def history(self, tenant: int, session_id: str | None) -> list[PromptTurn]:
        """The session's remembered turns, oldest first (none without a ``session_id``).

        Raises:
            StoreUnavailable: the database failed.
        """
        if not session_id or not self.turns:
            return []
        async with self.store.session() as session:
            rows = (
                await session.scalars(
                    select(ChatTurnRow)
                    .where(ChatTurnRow.tenant == tenant, ChatTurnRow.session_id == session_id)
                    .order_by(ChatTurnRow.pk.desc())
                    .limit(2 * self.turns)
                )
            ).all()
        turns: list[PromptTurn] = []
        question: str | None = None
        for row in reversed(rows):
            if row.role == "user":
                question = row.text
            elif question is not None:
                turns.append(PromptTurn(query=question, answer=row.text))
                question = None
        return turns

    async def remember(self, tenant: int, session_id: str | None, route: str, query: str, answer: str) -> None:
        """Store one turn and forget the session's turns beyond the newest :attr:`turns`.

        Raises:
            StoreUnavailable: the database failed.
        """
        if not session_id or not self.turns:
            return
        now = self.clock.now()
        async with self.store.session() as session:
            session.add_all(
                [
                    ChatTurnRow(tenant=tenant, session_id=session_id, route=route, role=role, text=text, created_at=now)
                    for role, text in (("user", query), ("assistant", answer))
                ]
            )
            await session.flush()
            oldest_kept = (
                select(ChatTurnRow.pk)
                .where(ChatTurnRow.tenant == tenant, ChatTurnRow.session_id == session_id)
                .order_by(ChatTurnRow.pk.desc())
                .offset(2 * self.turns - 1)
                .limit(1)
                .scalar_subquery()
            )
            await session.execute(
                delete(ChatTurnRow).where(
                    ChatTurnRow.tenant == tenant, ChatTurnRow.session_id == session_id, ChatTurnRow.pk < oldest_kept
                )
            )
