"""Leases in the database: which process does the work of a session, for how long.

Work that must happen once per session (cutting batches, archiving, idle flushes,
expiry) is done by the holder of the session's lease, a row of ``leases`` keyed by a
*kind* (``ingest``, ``races``) and a key (the session's id). A lease expires
``seconds`` after it was last renewed; its holder renews it well before that, and any
process may take it once it has expired. Nothing else survives a process: a node that
dies stops renewing, and another node takes its leases ``seconds`` later.

Each acquisition increments the lease's *epoch*, so a holder can tell its own tenure
from an earlier one (log readers are named after it). A lease row is never reused
across epochs: releasing a lease lets it expire at once but keeps its epoch; only
:meth:`Leases.forget` deletes it, once the session is finished for good.

Expiry times are the gateway's clock (Unix seconds): nodes' clocks must agree to well
within a lease (NTP does this). Statements are single upserts and updates, atomic on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Float, String, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, aliased, mapped_column

from sluicegate.engines.store import Base

if TYPE_CHECKING:
    from collections.abc import Collection

    from sqlalchemy import ColumnElement, SQLColumnExpression

    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store

__all__ = ["LeaseRow", "Leases"]


class LeaseRow(Base):
    __tablename__ = "leases"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)


class Leases:
    """The leases of this process.

    Args:
        store: the database.
        clock: the time leases expire by.
        holder: this process's name (unique among the processes sharing the database).
        seconds: how long a lease lasts without renewal (``SLUICEGATE_LEASE_SECONDS``).
    """

    def __init__(self, store: Store, clock: Clock, *, holder: str, seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.holder = holder
        self.seconds = seconds

    def _now(self) -> float:
        return self.clock.now().timestamp()

    async def acquire(self, kind: str, key: str) -> int | None:
        """Take the lease if it is free, expired, or already this process's.

        Returns:
            The new epoch, or ``None`` when another process holds it.

        Raises:
            APIError: 503 when the database fails.
        """
        now = self._now()
        dialect = postgresql if self.store.url.startswith("postgresql") else sqlite
        statement = dialect.insert(LeaseRow).values(
            kind=kind, key=key, holder=self.holder, epoch=1, expires_at=now + self.seconds
        )
        statement = statement.on_conflict_do_update(
            index_elements=[LeaseRow.kind, LeaseRow.key],
            set_={
                "holder": statement.excluded.holder,
                "epoch": LeaseRow.epoch + 1,
                "expires_at": statement.excluded.expires_at,
            },
            where=or_(LeaseRow.expires_at <= now, LeaseRow.holder == self.holder),
        ).returning(LeaseRow.epoch)
        async with self.store.session() as db:
            epoch = (await db.execute(statement)).scalar_one_or_none()
        return int(epoch) if epoch is not None else None

    async def renew(self, kind: str, keys: Collection[str]) -> set[str]:
        """Extend this process's leases of ``keys``.

        Returns:
            The keys still held (a key missing was taken by another process, or forgotten).

        Raises:
            APIError: 503 when the database fails.
        """
        if not keys:
            return set()
        statement = (
            update(LeaseRow)
            .where(LeaseRow.kind == kind, LeaseRow.holder == self.holder, LeaseRow.key.in_(list(keys)))
            .values(expires_at=self._now() + self.seconds)
            .returning(LeaseRow.key)
        )
        async with self.store.session() as db:
            return set((await db.execute(statement)).scalars().all())

    async def release(self, kind: str, key: str) -> None:
        """Let the lease expire now (if this process holds it): another process may take it."""
        async with self.store.session() as db:
            await db.execute(
                update(LeaseRow)
                .where(LeaseRow.kind == kind, LeaseRow.key == key, LeaseRow.holder == self.holder)
                .values(expires_at=0.0)
            )

    async def forget(self, kind: str, key: str) -> None:
        """Delete the lease of finished work (whoever held it)."""
        async with self.store.session() as db:
            await db.execute(delete(LeaseRow).where(LeaseRow.kind == kind, LeaseRow.key == key))

    def free(self, kind: str, key: SQLColumnExpression[str]) -> ColumnElement[bool]:
        """A condition for a query over sessions: no live lease of ``kind`` holds ``key``
        (a column of the session's table)."""
        lease = aliased(LeaseRow)
        live = select(lease.key).where(lease.kind == kind, lease.key == key, lease.expires_at > self._now())
        return ~live.exists()

    def held_elsewhere(self, kind: str, key: SQLColumnExpression[str]) -> ColumnElement[bool]:
        """A condition: a live lease of ``kind`` on ``key`` belongs to another process."""
        lease = aliased(LeaseRow)
        return (
            select(lease.key)
            .where(
                and_(
                    lease.kind == kind,
                    lease.key == key,
                    lease.expires_at > self._now(),
                    lease.holder != self.holder,
                )
            )
            .exists()
        )
