"""Index versions: one row per (tenant, kind, name), its ``seq`` bumped by each write.

Every product and chunk row carries the ``seq`` of the write that made (or deleted) it.
A node holding an in-memory index of a catalog compares the row's ``seq`` with its own
and loads only the rows written since: the database is the one source of truth, and any
node serves any search (ARCHITECTURE.md, "the engines own distribution").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from sluicegate.engines.store import Base

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["IndexVersionRow", "bump_version", "read_version"]


class IndexVersionRow(Base):
    __tablename__ = "index_versions"

    tenant: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


async def bump_version(session: AsyncSession, tenant: int, kind: str, name: str) -> int:
    """Take the next ``seq`` of an index inside the caller's transaction (an upsert).

    On PostgreSQL the upsert locks the row until the transaction ends, so writes to one
    index are serialised and their ``seq`` values are in commit order; SQLite has one
    writer at a time anyway.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    values = {"tenant": tenant, "kind": kind, "name": name, "seq": 1}
    bump = {"seq": IndexVersionRow.seq + 1}
    keys = ["tenant", "kind", "name"]
    statement: Any
    if session.get_bind().dialect.name == "postgresql":
        statement = (
            postgresql.insert(IndexVersionRow).values(values).on_conflict_do_update(index_elements=keys, set_=bump)
        )
    else:
        statement = sqlite.insert(IndexVersionRow).values(values).on_conflict_do_update(index_elements=keys, set_=bump)
    statement = statement.returning(IndexVersionRow.seq)
    return int((await session.execute(statement)).scalar_one())


async def read_version(session: AsyncSession, tenant: int, kind: str, name: str) -> int:
    """The index's current ``seq`` (0 when nothing was ever written)."""
    seq = await session.scalar(
        select(IndexVersionRow.seq).where(
            IndexVersionRow.tenant == tenant, IndexVersionRow.kind == kind, IndexVersionRow.name == name
        )
    )
    return int(seq or 0)
