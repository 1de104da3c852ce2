"""The processor of one ingestion session: its log in, stored batches out.

It runs on the node that holds the session's lease (:mod:`sluicegate.services.processing`).
It follows the session's log from the first record not yet stored, feeds the records to
a :class:`~.batcher.Batcher`, records each batch as it is cut, and stores up to
``maxConcurrentBatches`` at once (:mod:`.archiver`). A batch that fails is retried
``maxRetries`` times, the k-th retry after ``retryDelayMs * retryBackoffMultiplier **
(k - 1)``; then it goes to the dead-letter queue, its records still in the log, until it
is retried by hand. Once everything before a point is stored, the log is trimmed there.

Its events (``batch-received``, ``batch-processed``, ``progress``, ``error``,
``session-completed``, ``session-failed``) go to the session's channel on the broker, so
they reach subscribers on every node.

The session ends when its log's seal mark arrives (``end`` on any node seals it): the
open records become a last batch and, once every batch is stored, ``finalHash`` is
computed and the session completes; with batches in the dead-letter queue it fails
(and completes later, if they are retried and stored). A cancelled session (cancelled
on any node, or by this processor when it has been idle for the TTL) stops here, and
its log is deleted.

A takeover loses nothing: batches cut before are in the database with their records'
place, so the new processor gathers their records again from the log and stores those
not stored yet under the same keys; records after them are cut anew.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import zstandard
from sqlalchemy import select

from sluicegate.edge import api_error
from sluicegate.engines.log import LogError, LogState
from sluicegate.engines.objects import ObjectStoreUnavailable
from sluicegate.engines.store import StoreUnavailable
from sluicegate.services.ingest.archiver import SessionCancelled, SessionRef, batch_id
from sluicegate.services.ingest.atoms import line_digests
from sluicegate.services.ingest.batcher import Batcher, Cut, Known
from sluicegate.services.ingest.models import FINAL_STATES, BatchRow, BatchState, IngestSessionRow, SessionState
from sluicegate.services.processing import follow_into

if TYPE_CHECKING:
    from sluicegate.engines.log import LogEntry
    from sluicegate.services.ingest.service import IngestService
    from sluicegate.services.processing import Lease

__all__ = ["IngestProcessor", "log_name"]

log = logging.getLogger("sluicegate.ingest")


def log_name(session_id: str) -> str:
    """The name of an ingestion session's log."""
    return f"ingest/{session_id}"


def meta_of(min_ts: int, max_ts: int) -> bytes:
    """An upload's time range, as its log entry carries it."""
    return b"%d %d" % (min_ts, max_ts)


def _times(meta: bytes) -> tuple[int, int]:
    low, _, high = meta.partition(b" ")
    try:
        return int(low), int(high)
    except ValueError:  # pragma: no cover - every entry is appended with its range
        return 0, 0


@dataclass(eq=False)
class _Batch:
    cut: Cut
    state: BatchState = BatchState.QUEUED
    attempts: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None


_DELAY, _TTL, _POLL = "delay", "ttl", "poll"


class IngestProcessor:
    """Processes one ingestion session while this process holds its lease."""

    def __init__(self, service: IngestService, lease: Lease, row: IngestSessionRow, rows: list[BatchRow]) -> None:
        self.service = service
        self.lease = lease
        self.ref = SessionRef(row.id, row.tenant)
        self.row = row
        self.name = log_name(row.id)
        self.config = row.config
        size = int(row.config.get("batchSize", 1000))
        cut_end = max((r.first_index + r.record_count for r in rows), default=0)
        self.batcher = Batcher(size, next_index=cut_end, next_seq=max((r.seq for r in rows), default=0) + 1)
        self.batches: dict[int, _Batch] = {}
        self._first_new_seq = self.batcher.next_seq  # batches from this one on are cut here
        known = [
            Known(r.seq, r.first_index, r.record_count, r.min_ts or 0, r.max_ts or 0)
            for r in rows
            if r.state != BatchState.PROCESSED.value
        ]
        self._known_dead = {r.seq: r for r in rows if r.state == BatchState.DEAD.value}
        self.batcher.resume(known)
        self.atoms = sum(r.record_count for r in rows if r.state == BatchState.PROCESSED.value)
        self.received = cut_end
        self.sealed = False
        self.semaphore = asyncio.Semaphore(int(row.config.get("maxConcurrentBatches", 5)))
        self.entries: list[tuple[int, str]] = []  # (end, position) of entries not trimmed yet
        self.last_activity: datetime = row.last_activity_at
        self.open_since = 0.0  # when the first record not in a batch was appended
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._timers: dict[str, asyncio.Task[None]] = {}

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Process until the session is finished (returns), or until cancelled."""
        follower = asyncio.create_task(follow_into(self._queue, self.service.log, self.name, self.lease))
        self._arm(_TTL, self._ttl_watch())
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, list):
                    if await self._take(item):
                        return
                elif item == _DELAY:
                    await self._start(self._flush_cut())
                elif item == _TTL:
                    if await self._expire():
                        return
                elif item == _POLL:
                    if await self._look():
                        return
                elif isinstance(item, _Batch) and await self._settled(item):
                    return
        finally:
            tasks = [follower, *self._timers.values(), *(b.task for b in self.batches.values() if b.task)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.service.processing.pop(self.ref.id, None)

    def poke(self) -> None:
        """The session changed in the database on this node (a retry, a cancel): look now."""
        self._queue.put_nowait(_POLL)

    def _arm(self, name: str, work: Any) -> None:
        old = self._timers.get(name)
        if old is not None and not old.done():
            work.close()
            return
        self._timers[name] = asyncio.create_task(work)

    async def _take(self, entries: list[LogEntry]) -> bool:
        """Cut what the entries complete; returns whether the session is over."""
        cuts: list[Cut] = []
        for entry in entries:
            if entry.mark == LogState.SEALED:
                self.sealed = True
            elif entry.mark is None and entry.count:
                low, high = _times(entry.meta)
                opened = self.batcher.open_count
                cuts.extend(self.batcher.feed(entry.first, entry.data, entry.count, low, high))
                if not opened and self.batcher.open_count:  # the open batch starts with this entry
                    self.open_since = entry.appended_at
                self.entries.append((entry.end, entry.position))
                self.received = max(self.received, entry.end)
                self.last_activity = max(self.last_activity, _from_timestamp(entry.appended_at))
        if self.sealed:
            self._arm(_POLL, self._poll())
            row = await self.service.row(self.ref.id)
            if row is None or SessionState(row.state) == SessionState.CANCELLED:
                await self.service.retire(self.ref.id)
                return True
            last = self.batcher.flush() if not self.batcher.gathering else None
            if last is not None:
                cuts.append(last)
        await self._start(cuts)
        if self.batcher.open_count and not self.sealed:
            self._arm(_DELAY, self._delay())
        return await self._maybe_finish()

    async def _start(self, cuts: list[Cut] | Cut | None) -> None:
        """Record new batches and store them (and known ones, whose records are gathered)."""
        if cuts is None:
            return
        if isinstance(cuts, Cut):
            cuts = [cuts]
        fresh = [c for c in cuts if c.seq >= self._first_new_seq]
        for cut in cuts:
            dead = self._known_dead.pop(cut.seq, None)
            batch = _Batch(cut)
            self.batches[cut.seq] = batch
            if dead is not None:  # in the dead-letter queue: kept until retried by hand
                batch.state, batch.attempts, batch.last_error = BatchState.DEAD, dead.attempts, dead.last_error
                continue
            batch.task = asyncio.create_task(self._store(batch, new=cut in fresh))

    async def _delay(self) -> None:
        """Wake the loop ``maxBatchDelayMs`` after the first open record was appended."""
        clock, delay = self.service.clock, int(self.config.get("maxBatchDelayMs", 5000)) / 1000
        while True:
            remaining = self.open_since + delay - clock.now().timestamp()
            if remaining <= 0:
                await self._queue.put(_DELAY)
                return
            await clock.sleep(remaining)

    def _flush_cut(self) -> Cut | None:
        return self.batcher.flush() if not self.batcher.gathering else None

    # -- storing -----------------------------------------------------------------------------

    async def _store(self, batch: _Batch, *, new: bool) -> None:
        """Store a batch (cut here first, when ``new``), retrying; then tell the loop."""
        service = self.service
        cut = batch.cut
        name = batch_id(self.ref.id, cut.seq)
        if new:
            try:
                await service.archiver.cut(self.ref, cut)  # its records are fixed before anything is stored
            except Exception as exc:  # another processor cut it (SessionMoved), or the database failed
                await self._queue.put(exc)
                return
            await service.emit(self.ref, "batch-received", batchId=name, recordCount=cut.count)
        delay = int(self.config.get("retryDelayMs", 1000)) / 1000
        multiplier = float(self.config.get("retryBackoffMultiplier", 2.0))
        retries = int(self.config.get("maxRetries", 3))
        while True:
            async with self.semaphore:
                batch.state = BatchState.PROCESSING
                try:
                    elapsed_ms = await service.archiver.write(self.ref, cut)
                    error = None
                except SessionCancelled:
                    return
                except (ObjectStoreUnavailable, StoreUnavailable, OSError) as exc:
                    log.debug("storing batch %s failed", name, exc_info=True)
                    mapped = api_error(exc)
                    error = f"{type(exc).__name__}: {mapped.message if mapped is not None else 'failed'}"
            if error is None:
                batch.state = BatchState.PROCESSED
                self.atoms += cut.count
                await service.emit(
                    self.ref,
                    "batch-processed",
                    batchId=name,
                    atomsCreated=cut.count,
                    processingTimeMs=round(elapsed_ms, 3),
                )
                await service.emit(
                    self.ref,
                    "progress",
                    totalRecordsReceived=self.received,
                    totalAtomsCreated=self.atoms,
                    elapsedMs=round((service.clock.now() - self.row.created_at).total_seconds() * 1000),
                )
                break
            batch.attempts += 1
            batch.last_error = error
            dead = batch.attempts > retries
            await service.emit(
                self.ref,
                "error",
                errorCode="BATCH_FAILED",
                message=f"Batch processing failed (attempt {batch.attempts}): {error}",
                batchId=name,
                retrying=not dead,
            )
            if dead:
                batch.state = BatchState.DEAD
                await service.archiver.mark(
                    self.ref,
                    cut.seq,
                    BatchState.DEAD,
                    attempts=batch.attempts,
                    last_error=error,
                    finished_at=service.clock.now(),
                )
                log.warning("batch %s moved to the dead-letter queue: %s", name, error)
                break
            batch.state = BatchState.RETRYING
            await service.clock.sleep(delay * multiplier ** (batch.attempts - 1))
        batch.task = None
        await self._queue.put(batch)

    async def _settled(self, batch: _Batch) -> bool:
        """A batch was stored or died: trim what is stored; returns whether the session is over."""
        if batch.state == BatchState.PROCESSED:
            self.batches.pop(batch.cut.seq, None)
            await self._trim()
        if batch.state == BatchState.DEAD:
            self._arm(_POLL, self._poll())
        return await self._maybe_finish()

    async def _trim(self) -> None:
        """Trim the log up to the first record not stored."""
        pending = [b.cut.first for b in self.batches.values()]
        stored = min([*pending, self.batcher.next_index]) if not self.batcher.gathering else 0
        through = None
        while self.entries and self.entries[0][0] <= stored:
            through = self.entries.pop(0)[1]
        if through is not None:
            try:
                await self.service.log.trim(self.name, through)
            except LogError as exc:  # kept a little longer: the next batch trims it
                log.warning("could not trim the log of ingestion session %s: %s", self.ref.id, exc)

    async def _poll(self) -> None:
        """While batches are dead, or the log is sealed, look at the database every tick: for a
        retry, or a cancel (which, once the log is sealed, leaves no mark in it), from any node."""
        while self.sealed or any(b.state == BatchState.DEAD for b in self.batches.values()):
            await self.service.clock.sleep(self.service.leases.seconds / 4)
            await self._queue.put(_POLL)

    async def _look(self) -> bool:
        """Act on what changed in the database; returns whether the session is over."""
        row = await self.service.row(self.ref.id)
        if row is None or SessionState(row.state) == SessionState.CANCELLED:
            await self.service.retire(self.ref.id)
            return True
        await self._requeued()
        return False

    async def _requeued(self) -> None:
        dead = {seq for seq, b in self.batches.items() if b.state == BatchState.DEAD}
        if not dead:
            return
        async with self.service.store.session() as db:
            queued = set(
                (
                    await db.scalars(
                        select(BatchRow.seq).where(
                            BatchRow.session_id == self.ref.id,
                            BatchRow.seq.in_(dead),
                            BatchRow.state == BatchState.QUEUED.value,
                        )
                    )
                ).all()
            )
        for seq in sorted(queued):
            batch = self.batches[seq]
            batch.state, batch.attempts = BatchState.QUEUED, 0
            batch.task = asyncio.create_task(self._store(batch, new=False))

    # -- the end -------------------------------------------------------------------------------

    async def _maybe_finish(self) -> bool:
        if not self.sealed or self.batcher.gathering or self.batcher.open_count:
            return False
        if any(b.state != BatchState.DEAD for b in self.batches.values()):
            return False
        service = self.service
        dead = sorted(self.batches)
        now = service.clock.now()
        if dead:
            names = [batch_id(self.ref.id, seq) for seq in dead]
            error = {
                "code": "BATCH_FAILED",
                "message": f"{len(dead)} batch(es) failed and are in the dead-letter queue",
                "details": ", ".join(names),
                "failedAt": service.iso(now),
            }
            if await service.transition(
                self.ref.id, SessionState.COMPLETING, SessionState.FAILED, finished_at=now, error=error
            ):
                await service.emit(self.ref, "session-failed", sessionId=self.ref.id, deadBatches=names)
            return True  # the log keeps the dead batches' records until they are retried
        final_hash = await self._final_hash()
        counters = await service.counters(self.ref.id)  # sealed: final
        if await service.transition(
            self.ref.id,
            SessionState.COMPLETING,
            SessionState.COMPLETED,
            finished_at=now,
            final_hash=final_hash,
            error=None,
            **counters,
        ):
            await service.emit(
                self.ref,
                "session-completed",
                sessionId=self.ref.id,
                totalRecords=self.received,
                totalAtoms=self.atoms,
                durationMs=round((now - self.row.created_at).total_seconds() * 1000),
            )
        await service.retire(self.ref.id)
        return True

    async def _final_hash(self) -> str:
        """SHA-256 over every atom's digest, in record order (from the stored segments)."""
        async with self.service.store.session() as db:
            keys = (
                await db.scalars(
                    select(BatchRow.segment_key)
                    .where(BatchRow.session_id == self.ref.id, BatchRow.state == BatchState.PROCESSED.value)
                    .order_by(BatchRow.first_index)
                )
            ).all()
        total = hashlib.sha256()
        for key in keys:
            if key is not None:
                total.update(await asyncio.to_thread(_rehash, await self.service.objects.get(key)))
        return total.hexdigest()

    async def _ttl_watch(self) -> None:
        """Wake the loop once the session has been idle for the TTL."""
        service = self.service
        while True:
            idle = (service.clock.now() - self.last_activity).total_seconds()
            remaining = service.config.session_ttl_seconds - idle
            if remaining <= 0:
                await self._queue.put(_TTL)
                return
            await service.clock.sleep(remaining)

    async def _expire(self) -> bool:
        """Cancel the session if it is still idle and takes data; returns whether it did."""
        service = self.service
        row = await service.row(self.ref.id)
        if row is None:
            return True
        self.last_activity = max(self.last_activity, row.last_activity_at)
        idle = (service.clock.now() - self.last_activity).total_seconds()
        if idle < service.config.session_ttl_seconds or SessionState(row.state) not in (
            SessionState.INITIALIZING,
            SessionState.ACTIVE,
            SessionState.PAUSED,
        ):
            if SessionState(row.state) not in FINAL_STATES:
                self._arm(_TTL, self._ttl_watch())
            return False
        now = service.clock.now()
        error = {"code": "SESSION_EXPIRED", "message": "No activity for too long", "failedAt": service.iso(now)}
        await service.cancel_row(row, error=error)
        await service.retire(self.ref.id)
        return True


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _rehash(segment: bytes) -> bytes:
    """The atoms' digests of a stored segment, in order."""
    return line_digests(zstandard.ZstdDecompressor().decompressobj().decompress(segment))
