"""Storing batches: a row per batch in the database, a segment per batch in the object store.

A batch is first *cut*: its row is inserted (state ``queued``, its place in the session,
its record count), before anything is stored. The row fixes what the batch holds, so a
processor that takes the session over stores the same records under the same key; the
unique ``(session, seq)`` index refuses a second cut with that number, which is how a
processor that lost its lease finds out (:class:`SessionMoved`). Then the batch is
atomized (a SHA-256 per record, one over them all) and compressed in a thread, written
to ``ingest/t<tenant>/<session>/<seq:06d>.jsonl.zst`` (the same bytes whoever writes
it), and its row marked ``processed``, in one transaction with a look at the session:
a cancelled session's batch is not counted (its segment stays, unreferenced).

Rows written at the same time (cuts and stored batches, of every session this process
works on) share one transaction (a group commit).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import zstandard
from sqlalchemy import bindparam, update

from sluicegate.engines.store import StoreConflict
from sluicegate.services.ingest.atoms import line_digests
from sluicegate.services.ingest.models import BatchRow, BatchState, IngestSessionRow, SessionState

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import Table

    from sluicegate.clock import Clock
    from sluicegate.engines.objects import ObjectStore
    from sluicegate.engines.store import Store
    from sluicegate.services.ingest.batcher import Cut

__all__ = ["Archiver", "SessionCancelled", "SessionMoved", "SessionRef", "batch_id"]

log = logging.getLogger("sluicegate.ingest")


class SessionMoved(Exception):
    """A batch row this processor meant to write exists already: another processor holds the session."""


class SessionCancelled(Exception):
    """The session was cancelled: its batches are no longer stored."""


def batch_id(session_id: str, seq: int) -> str:
    """The id of batch ``seq`` of a session, as events and the DLQ name it."""
    return f"batch-{seq:03d}-{session_id[-6:]}"


@dataclass(frozen=True, slots=True)
class SessionRef:
    """What storing a batch needs to know of its session."""

    id: str
    tenant: int

    def key(self, seq: int) -> str:
        return f"ingest/t{self.tenant}/{self.id}/{seq:06d}.jsonl.zst"


def atomize(data: bytes, level: int = 3) -> tuple[str, bytes]:
    """A batch's digest (the SHA-256 of its atoms' digests, in order) and its zstd segment."""
    digest = hashlib.sha256(line_digests(data)).hexdigest()
    return digest, zstandard.ZstdCompressor(level=level).compress(data)


class _Op:
    """A row write waiting for the next transaction."""

    session: SessionRef
    future: asyncio.Future[None]

    def succeed(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Cut(_Op):
    def __init__(self, session: SessionRef, cut: Cut) -> None:
        self.session, self.cut = session, cut
        self.future = asyncio.get_running_loop().create_future()

    def row(self, now: datetime) -> BatchRow:
        cut = self.cut
        return BatchRow(
            batch_id=batch_id(self.session.id, cut.seq),
            session_id=self.session.id,
            tenant=self.session.tenant,
            seq=cut.seq,
            first_index=cut.first,
            record_count=cut.count,
            state=BatchState.QUEUED.value,
            attempts=0,
            min_ts=cut.min_ts,
            max_ts=cut.max_ts,
            created_at=now,
        )


class _Done(_Op):
    def __init__(self, session: SessionRef, seq: int, values: dict[str, Any]) -> None:
        self.session, self.seq, self.values = session, seq, values
        self.future = asyncio.get_running_loop().create_future()

    def params(self) -> dict[str, Any]:
        return {"s": self.session.id, "q": self.seq, **{f"v_{k}": v for k, v in self.values.items()}}


class Archiver:
    """Writes batch rows and segments.

    Args:
        store: the database.
        objects: where segments go.
        clock: timestamps of rows and processing times.
    """

    def __init__(self, store: Store, objects: ObjectStore, clock: Clock) -> None:
        self.store = store
        self.objects = objects
        self.clock = clock
        self._ops: list[_Cut | _Done] = []
        self._writer: asyncio.Task[None] | None = None

    async def cut(self, session: SessionRef, cut: Cut) -> None:
        """Record a new batch (in a transaction shared with the other rows written meanwhile).

        Raises:
            SessionMoved: a batch of that number exists (another processor cut it).
            StoreUnavailable: the database failed.
        """
        await self._queue(_Cut(session, cut))

    async def write(self, session: SessionRef, cut: Cut) -> float:
        """Atomize, write and record one batch.

        Returns:
            How long it took, in milliseconds.

        Raises:
            SessionCancelled: the session was cancelled meanwhile.
            ObjectStoreUnavailable, StoreUnavailable, OSError: a retry may succeed.
        """
        started = self.clock.monotonic()
        key = session.key(cut.seq)
        digest, segment = await asyncio.to_thread(atomize, cut.data)
        await self.objects.put(key, segment)
        elapsed_ms = (self.clock.monotonic() - started) * 1000
        values = {
            "state": BatchState.PROCESSED.value,
            "segment_key": key,
            "atoms_digest": digest,
            "processing_ms": elapsed_ms,
            "finished_at": self.clock.now(),
            "last_error": None,
        }
        await self._queue(_Done(session, cut.seq, values))
        return elapsed_ms

    async def _queue(self, op: _Cut | _Done) -> None:
        self._ops.append(op)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        await op.future

    async def _write(self) -> None:
        """Write the rows queued meanwhile, those of every session, in one transaction (a
        group commit); when a cut is refused, each row again on its own, to tell which."""
        try:
            while self._ops:
                pending, self._ops = self._ops, []
                try:
                    await self._commit(pending)
                except StoreConflict:
                    for op in pending:
                        try:
                            await self._commit([op])
                        except StoreConflict:
                            op.fail(SessionMoved(op.session.id))
                        except Exception as exc:
                            op.fail(exc)
                except Exception as exc:
                    for op in pending:
                        op.fail(exc)
        finally:
            self._writer = None

    async def _commit(self, ops: list[_Cut | _Done]) -> None:
        cuts = [op for op in ops if isinstance(op, _Cut)]
        done = [op for op in ops if isinstance(op, _Done)]
        now = self.clock.now()
        alive: set[str] = set()
        async with self.store.session() as db:
            if cuts:
                db.add_all([op.row(now) for op in cuts])
                await db.flush()
            if done:
                # Updating the session rows first locks them (PostgreSQL), so a cancel waits
                # for this transaction, or this one sees the cancel.
                alive = set(
                    (
                        await db.execute(
                            update(IngestSessionRow)
                            .where(
                                IngestSessionRow.id.in_({op.session.id for op in done}),
                                IngestSessionRow.state != SessionState.CANCELLED.value,
                            )
                            .values(last_activity_at=now)
                            .returning(IngestSessionRow.id)
                        )
                    )
                    .scalars()
                    .all()
                )
                rows = [op.params() for op in done if op.session.id in alive]
                if rows:
                    table = cast("Table", BatchRow.__table__)
                    await db.execute(
                        table.update()
                        .where(table.c.session_id == bindparam("s"), table.c.seq == bindparam("q"))
                        .values({name: bindparam(f"v_{name}") for name in done[0].values}),
                        rows,
                    )
        for cut in cuts:
            cut.succeed()
        for stored in done:
            if stored.session.id in alive:
                stored.succeed()
            else:
                stored.fail(SessionCancelled(stored.session.id))

    async def mark(self, session: SessionRef, seq: int, state: BatchState, **values: Any) -> None:
        """Set a batch's state (dead, queued again), best effort: the database may be what failed."""
        try:
            async with self.store.session() as db:
                await db.execute(
                    update(BatchRow)
                    .where(
                        BatchRow.session_id == session.id,
                        BatchRow.seq == seq,
                        BatchRow.state != BatchState.PROCESSED.value,
                    )
                    .values(state=state.value, **values)
                )
        except Exception as exc:
            log.warning("could not record batch %s as %s: %s", batch_id(session.id, seq), state.value, exc)
