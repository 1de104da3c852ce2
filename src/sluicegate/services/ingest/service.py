"""Ingestion sessions and their jobs: durable uploads, batching, atomization, storage, events.

The life of a record:

1. **upload**: decoded (msgspec), checked (timestamps, the session's schema, frames'
   and buffers' base64 and format), re-serialised canonically and hashed
   (:mod:`.prepare`, in worker processes for large bodies), and appended to the
   session's spool (:mod:`sluicegate.engines.spool`, group commits with ``fdatasync``)
   before the upload is answered: a 2xx survives ``kill -9``.
2. **batching**: records queue in order and are cut into batches of ``batchSize``, or
   after ``maxBatchDelayMs`` when fewer arrived; up to ``maxConcurrentBatches`` are
   processed at once.
3. **atomization**: each record is an atom named by the SHA-256 of its canonical bytes.
4. **indexing and storage**: a batch is one zstd segment of JSON Lines in the object
   store (``ingest/t<tenant>/<session>/<seq>.jsonl.zst``) and one database row holding
   its place in the session, count, time range and digest. No row per record.
5. **completion**: when the session has ended and every batch is stored, the job's
   ``finalHash`` is computed and the session completes.

Canonical bytes of a record: compact JSON, object keys sorted, UTF-8 (msgspec's
``order="sorted"``). ``finalHash`` = SHA-256 of the concatenated 32-byte SHA-256 digests
of every atom, in the order records were acknowledged. A client can recompute it from
what it sent.

A failing batch (object store or database down) is retried ``maxRetries`` times, the
k-th retry after ``retryDelayMs * retryBackoffMultiplier ** (k - 1)``; then it goes to
the dead-letter queue, still in the spool, until retried by hand.

Restart: sessions not finished are reloaded; records of the spool not covered by a
stored batch are batched again. A batch stored before the crash is skipped, so every
acknowledged record is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import secrets
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import zstandard
from sqlalchemy import select

from sluicegate.engines.spool import SessionSpool, SpoolError
from sluicegate.errors import APIError, ErrCode
from sluicegate.services.ingest.atoms import line_digests
from sluicegate.services.ingest.models import (
    FINAL_STATES,
    TRANSITIONS,
    BatchRow,
    BatchState,
    IngestSessionRow,
    SchemaRow,
    SessionState,
    SessionType,
    StartRequest,
)
from sluicegate.services.ingest.prepare import Prepared, prepare
from sluicegate.services.ingest.validation import Schema, parse_schema, timestamp_us
from sluicegate.services.placement import ALONE, Placement

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from pathlib import Path

    from sluicegate.clock import Clock
    from sluicegate.engines.broker import Broker
    from sluicegate.engines.objects import ObjectStore
    from sluicegate.engines.store import Store
    from sluicegate.security.identity import Identity

__all__ = ["IngestConfig", "IngestService", "LiveSession"]

log = logging.getLogger("sluicegate.ingest")

_INLINE_BELOW = 64 * 1024  # smaller bodies are prepared on the event loop: no trip to a worker


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Options of the ingestion service (from settings)."""

    spool_dir: Path
    max_batch_size: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    fsync: bool = True
    session_ttl_seconds: float = 86_400.0
    max_queued_records: int = 2_000_000
    workers: int = 0  # processes preparing large uploads; 0 prepares them in this process
    placement: Placement = ALONE  # which process holds which session (several nodes or workers)


def iso(moment: datetime) -> str:
    """ISO-8601 with a ``Z``, as the seed writes times."""
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(eq=False)
class Batch:
    seq: int
    batch_id: str
    first_index: int
    data: bytes  # canonical records, one per line
    count: int
    digests: bytes  # 32 bytes per record
    min_ts: int
    max_ts: int
    state: BatchState = BatchState.QUEUED
    attempts: int = 0
    last_error: str | None = None
    failed_at: datetime | None = None
    task: asyncio.Task[None] | None = None
    has_row: bool = False  # whether the database holds a row for it already


@dataclass(slots=True)
class Chunk:
    """Consecutive records (one upload's, or part of one): lines, digests and time range."""

    data: bytes
    count: int
    digests: bytes
    min_ts: int
    max_ts: int

    def split(self, take: int) -> tuple[Chunk, Chunk]:
        """The first ``take`` records, and the rest (time ranges stay the chunk's: a superset)."""
        cut = 0
        for _ in range(take):
            cut = self.data.index(b"\n", cut) + 1
        return (
            Chunk(self.data[:cut], take, self.digests[: 32 * take], self.min_ts, self.max_ts),
            Chunk(self.data[cut:], self.count - take, self.digests[32 * take :], self.min_ts, self.max_ts),
        )


@dataclass(eq=False)
class LiveSession:
    """A session that is not finished, as this process holds it."""

    id: str
    job_id: str
    tenant: int
    session_type: SessionType
    session_name: str
    metadata: dict[str, Any]
    config: dict[str, Any]
    state: SessionState
    created_at: datetime
    last_activity_at: datetime
    spool: SessionSpool
    spool_base: int
    schema: dict[str, Any] | None = None  # the definition of the session's schema
    ended_at: datetime | None = None
    finished_at: datetime | None = None
    error: dict[str, Any] | None = None
    final_hash: str | None = None
    uploads_received: int = 0
    bytes_base: int = 0  # canonical bytes of the records no longer in the spool's active file
    batches_cut: int = 0
    batches_processed: int = 0
    atoms_created: int = 0
    processing_ms_total: float = 0.0
    next_index: int = 0  # index of the next record to join the queue
    next_seq: int = 1
    open_chunks: list[Chunk] = field(default_factory=list)  # durable records not in a batch yet, in order
    open_count: int = 0
    batches: dict[int, Batch] = field(default_factory=dict)  # not processed yet (queued ... dead)
    parked: dict[int, Prepared] = field(default_factory=dict)
    delay_timer: asyncio.Task[None] | None = None
    semaphore: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(5))
    finishing: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def channel(self) -> str:
        return f"ingest/t{self.tenant}/{self.id}"

    @property
    def records_received(self) -> int:
        return self.spool.total

    @property
    def bytes_received(self) -> int:
        """Canonical bytes of every record received (durable: counted from the spool)."""
        return self.bytes_base + self.spool.active_bytes

    @property
    def records_queued(self) -> int:
        return self.records_received - self.atoms_created

    def batch_id(self, seq: int) -> str:
        return f"batch-{seq:03d}-{self.id[-6:]}"

    def key(self, seq: int) -> str:
        return f"ingest/t{self.tenant}/{self.id}/{seq:06d}"


def _dlq_entry(
    batch_id: str, session_id: str, count: int, attempts: int, last_error: str | None, failed_at: datetime | None
) -> dict[str, Any]:
    """A batch as ``GET /dlq`` lists it."""
    return {
        "batchId": batch_id,
        "sessionId": session_id,
        "recordCount": count,
        "attempts": attempts,
        "lastError": last_error,
        "failedAt": iso(failed_at) if failed_at else None,
    }


def _atomize(data: bytes, digests: bytes, level: int) -> tuple[str, bytes]:
    """The batch's digest (over its atoms' digests) and its zstd segment."""
    return hashlib.sha256(digests).hexdigest(), zstandard.ZstdCompressor(level=level).compress(data)


def _rehash(segment: bytes) -> bytes:
    """The atoms' digests of a stored segment, in order."""
    return line_digests(zstandard.ZstdDecompressor().decompressobj().decompress(segment))


class IngestService:
    """The ``/api/streaming`` sessions over the store, the object store, the broker and a spool."""

    name = "ingest"

    def __init__(self, store: Store, objects: ObjectStore, broker: Broker, clock: Clock, config: IngestConfig) -> None:
        self.store = store
        self.objects = objects
        self.broker = broker
        self.clock = clock
        self.config = config
        self.live: dict[str, LiveSession] = {}
        self.by_job: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._rows: list[tuple[LiveSession, Batch, BatchState, dict[str, Any], asyncio.Future[None]]] = []
        self._row_writer: asyncio.Task[None] | None = None

    # -- life --------------------------------------------------------------------------

    async def open(self) -> None:
        """Reload unfinished sessions and re-batch what their spools hold."""
        async with self.store.session() as db:
            rows = (
                await db.scalars(
                    select(IngestSessionRow).where(
                        IngestSessionRow.state.not_in([s.value for s in FINAL_STATES]),
                        # this node's own: another node's spool is on that node
                        IngestSessionRow.owner.is_(None)
                        if self.config.placement.owner is None
                        else IngestSessionRow.owner == self.config.placement.owner,
                    )
                )
            ).all()
        for row in rows:
            await self._recover(row)
        if self.config.workers > 0:
            self._pool = ProcessPoolExecutor(self.config.workers, mp_context=multiprocessing.get_context("spawn"))
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        tasks = [*self._tasks]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for session in self.live.values():
            tasks.extend(b.task for b in session.batches.values() if b.task is not None)
            if session.delay_timer is not None:
                tasks.append(session.delay_timer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in self.live.values():
            session.spool.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def check(self) -> None:
        return None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sweep(self) -> None:
        """Cancel sessions idle for longer than the TTL (the seed: 24 hours)."""
        while True:
            await self.clock.sleep(min(60.0, self.config.session_ttl_seconds / 4))
            now = self.clock.now()
            for session in list(self.live.values()):
                idle = (now - session.last_activity_at).total_seconds()
                if idle > self.config.session_ttl_seconds and session.state in (
                    SessionState.INITIALIZING,
                    SessionState.ACTIVE,
                    SessionState.PAUSED,
                ):
                    error = {"code": "SESSION_EXPIRED", "message": "No activity for too long", "failedAt": iso(now)}
                    await self._cancel(session, error=error)

    # -- events ------------------------------------------------------------------------

    async def _emit(self, session: LiveSession, event: str, **fields: Any) -> None:
        fields["timestamp"] = iso(self.clock.now())
        await self.broker.publish(session.channel, orjson.dumps({"type": event, **fields}))

    # -- sessions ----------------------------------------------------------------------

    async def start(self, identity: Identity, body: StartRequest) -> LiveSession:
        """Create a session and its job.

        Raises:
            APIError: 403 for a ``tenantId`` other than the token's; 404 for an unknown
                ``schemaName``; 400 for a schema on a non-telemetry session.
        """
        if body.tenantId is not None and body.tenantId != identity.tenant:
            raise APIError.permission_denied("tenantId does not match the token's tenant")
        schema = None
        if body.schemaName is not None:
            if body.sessionType != SessionType.TELEMETRY:
                raise APIError.invalid_argument("Schemas apply to telemetry sessions only")
            schema = await self._schema_definition(identity.tenant, body.schemaName)
        now = self.clock.now()
        session_id = f"stream-session-{secrets.token_hex(8)}"
        config = body.model_dump(exclude={"sessionType", "sessionName", "metadata", "tenantId"})
        row = IngestSessionRow(
            id=session_id,
            job_id=f"job-{secrets.token_hex(8)}",
            tenant=identity.tenant,
            session_type=body.sessionType.value,
            session_name=body.sessionName or f"{body.sessionType.value} session {iso(now)}",
            metadata_=body.metadata,
            config=config,
            state=SessionState.INITIALIZING.value,
            created_at=now,
            last_activity_at=now,
            records_received=0,
            uploads_received=0,
            bytes_received=0,
            spool_base=0,
            owner=self.config.placement.owner,
        )
        async with self.store.session() as db:
            db.add(row)
        session = self._live_from_row(row, schema)
        await asyncio.to_thread(session.spool.recover)
        self.live[session.id] = session
        self.by_job[session.job_id] = session.id
        await self._transition(session, SessionState.ACTIVE)
        await self._emit(session, "session-started", sessionId=session.id)
        return session

    def _live_from_row(self, row: IngestSessionRow, schema: dict[str, Any] | None) -> LiveSession:
        spool = SessionSpool(self.config.spool_dir / row.id, fsync=self.config.fsync, total=row.spool_base)
        session = LiveSession(
            id=row.id,
            job_id=row.job_id,
            tenant=row.tenant,
            session_type=SessionType(row.session_type),
            session_name=row.session_name,
            metadata=row.metadata_,
            config=row.config,
            state=SessionState(row.state),
            created_at=row.created_at,
            last_activity_at=row.last_activity_at,
            spool=spool,
            spool_base=row.spool_base,
            schema=schema,
            ended_at=row.ended_at,
            finished_at=row.finished_at,
            error=row.error,
            uploads_received=row.uploads_received,
            bytes_base=row.bytes_received,
            next_index=row.spool_base,
        )
        session.semaphore = asyncio.Semaphore(int(row.config.get("maxConcurrentBatches", 5)))
        return session

    async def _recover(self, row: IngestSessionRow) -> None:
        schema = None
        if row.config.get("schemaName"):
            with contextlib.suppress(APIError):
                schema = await self._schema_definition(row.tenant, row.config["schemaName"])
        session = self._live_from_row(row, schema)
        spool = session.spool
        await asyncio.to_thread(spool.recover)
        lines = (await asyncio.to_thread(spool.read_active)).splitlines()
        async with self.store.session() as db:
            batch_rows = (await db.scalars(select(BatchRow).where(BatchRow.session_id == row.id))).all()
        stored = [b for b in batch_rows if b.state == BatchState.PROCESSED]
        session.batches_processed = len(stored)
        session.batches_cut = len(batch_rows)
        session.atoms_created = sum(b.record_count for b in stored)
        session.processing_ms_total = sum(b.processing_ms or 0.0 for b in stored)
        session.next_seq = max((b.seq for b in batch_rows), default=0) + 1
        base = session.spool_base
        covered = [False] * len(lines)
        for batch_row in batch_rows:
            lo, hi = batch_row.first_index - base, batch_row.first_index + batch_row.record_count - base
            for i in range(max(lo, 0), min(hi, len(lines))):
                covered[i] = True
            if batch_row.state != BatchState.PROCESSED:  # dead, or put back in the queue by hand
                kept = _recovered_batch(batch_row.seq, batch_row.batch_id, batch_row.first_index, lines[lo:hi])
                kept.attempts, kept.last_error, kept.has_row = batch_row.attempts, batch_row.last_error, True
                if batch_row.state == BatchState.DEAD:
                    kept.state, kept.failed_at = BatchState.DEAD, batch_row.finished_at
                session.batches[batch_row.seq] = kept
        self.live[session.id] = session
        self.by_job[session.job_id] = session.id
        # Records acknowledged but in no stored batch (in flight or queued at the crash)
        # are batched again, run by run, in their original order.
        size = int(session.config.get("batchSize", 1000))
        i = 0
        while i < len(lines):
            if covered[i]:
                i += 1
                continue
            j = i
            while j < len(lines) and not covered[j] and j - i < size:
                j += 1
            seq = session.next_seq
            session.next_seq += 1
            session.batches[seq] = _recovered_batch(seq, session.batch_id(seq), base + i, lines[i:j])
            session.batches_cut += 1
            i = j
        session.next_index = base + len(lines)
        pending = [b for b in session.batches.values() if b.state == BatchState.QUEUED]
        if pending:
            log.info("recovering %d batches of ingestion session %s", len(pending), session.id)
        for batch in pending:
            self._start_batch(session, batch)
        if session.state == SessionState.COMPLETING:
            self._spawn(self._maybe_finish(session))

    async def find(self, identity: Identity, session_id: str) -> LiveSession | IngestSessionRow:
        """A session of the caller's tenant, live or finished.

        Raises:
            APIError: 404 with the seed's "Session not found" body.
        """
        session = self.live.get(session_id)
        if session is not None and session.tenant == identity.tenant:
            return session
        async with self.store.session() as db:
            row = await db.get(IngestSessionRow, session_id)
        if row is None or row.tenant != identity.tenant:
            raise session_not_found(session_id)
        return row

    async def holder(
        self,
        identity: Identity,
        session_id: str | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
    ) -> str | None:
        """Where the process that holds a session (by id, by job, or by a dead batch of it)
        is reached, when it is not this one and the session is not finished; ``None`` when
        this process answers itself (including for unknown ids, which it answers with a 404)."""
        if session_id in self.live or job_id in self.by_job or not self.config.placement.coordinated:
            return None
        if session_id is not None:
            condition = IngestSessionRow.id == session_id
        elif job_id is not None:
            condition = IngestSessionRow.job_id == job_id
        elif batch_id is not None:
            if self._local_dead(identity, batch_id) is not None:
                return None
            dead = select(BatchRow.session_id).where(
                BatchRow.batch_id == batch_id,
                BatchRow.tenant == identity.tenant,
                BatchRow.state == BatchState.DEAD.value,
            )
            condition = IngestSessionRow.id.in_(dead)
        else:
            return None
        async with self.store.session() as db:
            row = await db.scalar(
                select(IngestSessionRow)
                .where(condition, IngestSessionRow.state.not_in([s.value for s in FINAL_STATES]))
                .limit(1)
            )
        if row is None or row.tenant != identity.tenant or SessionState(row.state) in FINAL_STATES:
            return None
        return self.config.placement.route(row.owner)

    async def find_job(self, identity: Identity, job_id: str) -> LiveSession | IngestSessionRow:
        """The session of a job.

        Raises:
            APIError: 404.
        """
        session_id = self.by_job.get(job_id)
        if session_id is None:
            async with self.store.session() as db:
                row = await db.scalar(select(IngestSessionRow).where(IngestSessionRow.job_id == job_id))
            if row is None or row.tenant != identity.tenant:
                raise APIError.not_found("Job not found", jobId=job_id)
            session_id = row.id
        try:
            return await self.find(identity, session_id)
        except APIError:
            raise APIError.not_found("Job not found", jobId=job_id) from None

    async def live_session(self, identity: Identity, session_id: str) -> LiveSession:
        """A session that is not finished.

        Raises:
            APIError: 404 (unknown, another tenant's), 409 (finished).
        """
        found = await self.find(identity, session_id)
        if isinstance(found, IngestSessionRow):
            raise state_conflict(found.id, SessionState(found.state), "The session is finished")
        return found

    async def _transition(self, session: LiveSession, to: SessionState, **changes: Any) -> None:
        if to not in TRANSITIONS[session.state]:
            raise state_conflict(session.id, session.state, f"Cannot go from {session.state} to {to}")
        session.state = to
        session.last_activity_at = self.clock.now()
        for name, value in changes.items():
            setattr(session, name, value)
        await self._save(session)

    async def _save(self, session: LiveSession) -> None:
        async with self.store.session() as db:
            row = await db.get(IngestSessionRow, session.id)
            if row is None:  # pragma: no cover - rows are never deleted
                return
            row.state = session.state.value
            row.last_activity_at = session.last_activity_at
            row.ended_at = session.ended_at
            row.finished_at = session.finished_at
            row.error = session.error
            row.final_hash = session.final_hash
            row.records_received = session.records_received
            row.uploads_received = session.uploads_received
            row.bytes_received = session.bytes_base
            row.spool_base = session.spool_base

    async def pause(self, identity: Identity, session_id: str) -> LiveSession:
        session = await self.live_session(identity, session_id)
        await self._transition(session, SessionState.PAUSED)
        await self._emit(session, "session-paused", sessionId=session.id)
        return session

    async def resume(self, identity: Identity, session_id: str) -> LiveSession:
        session = await self.live_session(identity, session_id)
        await self._transition(session, SessionState.ACTIVE)
        await self._emit(session, "session-resumed", sessionId=session.id)
        return session

    async def end(
        self, identity: Identity, session_id: str, *, wait: bool, timeout_ms: int
    ) -> LiveSession | IngestSessionRow:
        """Stop taking data, process what is queued, complete (optionally waiting for it)."""
        found = await self.find(identity, session_id)
        if isinstance(found, IngestSessionRow) or found.state in FINAL_STATES:
            return found  # ending a finished session is a no-op that reports it
        session = found
        if session.state not in (SessionState.COMPLETING,):
            await self._transition(session, SessionState.COMPLETING, ended_at=self.clock.now())
            self._cut(session, force=True)
            self._spawn(self._maybe_finish(session))
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_ms / 1000):
                    await session.finished.wait()
        return session

    async def cancel(self, identity: Identity, job_id: str) -> LiveSession | IngestSessionRow:
        """Cancel a session's job; what was stored stays, the rest is dropped."""
        found = await self.find_job(identity, job_id)
        if isinstance(found, IngestSessionRow):
            if found.state == SessionState.CANCELLED:
                return found
            raise state_conflict(found.id, SessionState(found.state), "The job is finished")
        await self._cancel(found)
        return found

    async def _cancel(self, session: LiveSession, error: dict[str, Any] | None = None) -> None:
        for batch in session.batches.values():
            if batch.task is not None:
                batch.task.cancel()
        if session.delay_timer is not None:
            session.delay_timer.cancel()
        now = self.clock.now()
        await self._transition(session, SessionState.CANCELLED, finished_at=now, error=error)
        await self._emit(
            session,
            "session-cancelled",
            sessionId=session.id,
            atomsCreated=session.atoms_created,
            reason=(error or {}).get("code", "CANCELLED"),
        )
        await self._retire(session)

    async def _retire(self, session: LiveSession) -> None:
        """A finished session leaves memory; its spool goes once nothing in it is needed."""
        session.bytes_base += session.spool.release_active()
        await self._save(session)
        if session.delay_timer is not None:
            session.delay_timer.cancel()
        session.finished.set()
        self.live.pop(session.id, None)
        self.by_job.pop(session.job_id, None)
        await asyncio.to_thread(session.spool.remove)

    # -- uploads -----------------------------------------------------------------------

    async def upload(self, identity: Identity, session_id: str, body: bytes) -> dict[str, Any]:
        """Accept one upload; returns the seed's upload response once it is durable.

        Raises:
            APIError: the seed's 404, 413 and 400 bodies; 409 when the session does not
                take data; 500 when the records cannot be made durable.
        """
        started = self.clock.monotonic()
        session = await self.live_session(identity, session_id)
        return await self.accept(session, body, started)

    async def accept(self, session: LiveSession, body: bytes, started: float) -> dict[str, Any]:
        """The upload path for a body (shared with the WebSocket)."""
        self._check_accepting(session)
        kind = session.session_type.value
        if self._pool is not None and len(body) >= _INLINE_BELOW:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                self._pool, prepare, kind, body, self.config.max_batch_size, session.schema
            )
        else:
            prepared = prepare(kind, body, self.config.max_batch_size, session.schema)
        batch_id = session.batch_id(session.next_seq)
        if not prepared.ok:
            raise _refusal(prepared, batch_id, self.config.max_batch_size)
        self._check_accepting(session)  # it may have been paused while the body was prepared
        if session.records_queued + prepared.count > self.config.max_queued_records:
            raise APIError.unavailable("Too many records are waiting to be processed; retry shortly")
        try:
            end = await session.spool.append(prepared.lines, count=prepared.count)
        except SpoolError as exc:
            log.error("ingestion session %s: %s", session.id, exc)
            raise APIError.internal("Failed to store the upload") from None
        if session.state not in FINAL_STATES:
            self._enqueue(session, end - prepared.count, prepared)
        session.uploads_received += 1
        session.last_activity_at = self.clock.now()
        return {
            "sessionId": session.id,
            "recordsReceived": prepared.count,
            "recordsProcessed": 0,  # batches are processed after the answer
            "recordsQueued": prepared.count,
            "batchId": batch_id,
            "processingTimeMs": round((self.clock.monotonic() - started) * 1000, 3),
            "status": session.state.value,
        }

    @staticmethod
    def _check_accepting(session: LiveSession) -> None:
        if session.state != SessionState.ACTIVE:
            hint = (
                "Resume the session to upload data" if session.state == SessionState.PAUSED else "Start a new session"
            )
            raise state_conflict(session.id, session.state, "Session is not accepting data", hint)

    def _enqueue(self, session: LiveSession, start: int, prepared: Prepared) -> None:
        """Queue durable records in spool order (uploads may finish their writes out of order)."""
        session.parked[start] = prepared
        while session.next_index in session.parked:
            ready = session.parked.pop(session.next_index)
            session.open_chunks.append(Chunk(ready.lines, ready.count, ready.digests, ready.min_ts, ready.max_ts))
            session.open_count += ready.count
            session.next_index += ready.count
        self._cut(session)

    # -- batching ----------------------------------------------------------------------

    def _cut(self, session: LiveSession, *, force: bool = False) -> None:
        """Cut full batches; with ``force``, the remainder too; else arm the delay timer."""
        size = int(session.config.get("batchSize", 1000))
        while session.open_count >= size or (force and session.open_count):
            take = min(size, session.open_count)
            first = session.next_index - session.open_count
            parts = _take(session.open_chunks, take)
            session.open_count -= take
            seq = session.next_seq
            session.next_seq += 1
            data = parts[0].data if len(parts) == 1 else b"".join([p.data for p in parts])
            digests = parts[0].digests if len(parts) == 1 else b"".join([p.digests for p in parts])
            low, high = min(p.min_ts for p in parts), max(p.max_ts for p in parts)
            batch = Batch(seq, session.batch_id(seq), first, data, take, digests, low, high)
            session.batches[seq] = batch
            session.batches_cut += 1
            self._start_batch(session, batch, announce=True)
        if session.open_count and session.delay_timer is None:
            session.delay_timer = asyncio.create_task(self._delay_cut(session))

    async def _delay_cut(self, session: LiveSession) -> None:
        try:
            await self.clock.sleep(int(session.config.get("maxBatchDelayMs", 5000)) / 1000)
        finally:
            session.delay_timer = None
        self._cut(session, force=True)

    def _start_batch(self, session: LiveSession, batch: Batch, *, announce: bool = False) -> None:
        batch.state = BatchState.QUEUED
        batch.task = asyncio.create_task(self._run_batch(session, batch, announce))

    async def _run_batch(self, session: LiveSession, batch: Batch, announce: bool) -> None:
        if announce:
            await self._emit(session, "batch-received", batchId=batch.batch_id, recordCount=batch.count)
        delay = int(session.config.get("retryDelayMs", 1000)) / 1000
        multiplier = float(session.config.get("retryBackoffMultiplier", 2.0))
        retries = int(session.config.get("maxRetries", 3))
        while True:
            async with session.semaphore:
                batch.state = BatchState.PROCESSING
                error = await self._process(session, batch)
            if error is None:
                break
            batch.attempts += 1
            batch.last_error = error
            dead = batch.attempts > retries
            await self._emit(
                session,
                "error",
                errorCode="BATCH_FAILED",
                message=f"Batch processing failed (attempt {batch.attempts}): {error}",
                batchId=batch.batch_id,
                retrying=not dead,
            )
            if dead:
                batch.state = BatchState.DEAD
                batch.failed_at = self.clock.now()
                await self._write_row(session, batch, BatchState.DEAD, finished_at=batch.failed_at)
                log.warning("batch %s of %s moved to the dead-letter queue: %s", batch.batch_id, session.id, error)
                break
            batch.state = BatchState.RETRYING
            await self.clock.sleep(delay * multiplier ** (batch.attempts - 1))
        batch.task = None
        await self._after_batch(session)

    async def _write_row(self, session: LiveSession, batch: Batch, state: BatchState, **values: Any) -> None:
        """Insert or update the batch's row (best effort for failures: the database may be what is down).

        Rows of concurrent batches share one transaction (a group commit, as the spool does).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rows.append((session, batch, state, values, future))
        if self._row_writer is None:
            self._row_writer = asyncio.create_task(self._write_rows())
        try:
            await future
        except APIError as exc:
            if state == BatchState.PROCESSED:
                raise
            log.warning("could not record batch %s: %s", batch.batch_id, exc.message)

    async def _write_rows(self) -> None:
        try:
            while self._rows:
                pending, self._rows = self._rows, []
                try:
                    async with self.store.session() as db:
                        for session, batch, state, values, _ in pending:
                            row = None
                            if batch.has_row:
                                row = await db.scalar(
                                    select(BatchRow).where(BatchRow.session_id == session.id, BatchRow.seq == batch.seq)
                                )
                            if row is None:
                                row = BatchRow(
                                    batch_id=batch.batch_id,
                                    session_id=session.id,
                                    tenant=session.tenant,
                                    seq=batch.seq,
                                    first_index=batch.first_index,
                                    record_count=batch.count,
                                    created_at=self.clock.now(),
                                )
                                db.add(row)
                            row.state = state.value
                            row.attempts = batch.attempts
                            row.last_error = batch.last_error
                            row.min_ts, row.max_ts = batch.min_ts, batch.max_ts
                            for name, value in values.items():
                                setattr(row, name, value)
                except APIError as exc:
                    for *_, future in pending:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, batch, *_, future in pending:
                    batch.has_row = True
                    if not future.done():
                        future.set_result(None)
        finally:
            self._row_writer = None

    async def _process(self, session: LiveSession, batch: Batch) -> str | None:
        """Store and index one batch; returns the error, or ``None`` on success."""
        started = self.clock.monotonic()
        key = session.key(batch.seq) + ".jsonl.zst"
        try:
            digest, segment = await asyncio.to_thread(_atomize, batch.data, batch.digests, 3)
            await self.objects.put(key, segment)
            elapsed_ms = (self.clock.monotonic() - started) * 1000
            await self._write_row(
                session,
                batch,
                BatchState.PROCESSED,
                segment_key=key,
                atoms_digest=digest,
                processing_ms=elapsed_ms,
                finished_at=self.clock.now(),
                last_error=None,
            )
        except (OSError, APIError) as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
        session.batches.pop(batch.seq, None)
        batch.state = BatchState.PROCESSED
        session.batches_processed += 1
        session.atoms_created += batch.count
        session.processing_ms_total += elapsed_ms
        session.last_activity_at = self.clock.now()
        await self._emit(
            session,
            "batch-processed",
            batchId=batch.batch_id,
            atomsCreated=batch.count,
            processingTimeMs=round(elapsed_ms, 3),
        )
        await self._emit(
            session,
            "progress",
            totalRecordsReceived=session.records_received,
            totalAtomsCreated=session.atoms_created,
            elapsedMs=round((self.clock.now() - session.created_at).total_seconds() * 1000),
        )
        return None

    async def _after_batch(self, session: LiveSession) -> None:
        if session.state in FINAL_STATES:
            return
        await self._compact(session)
        if session.state == SessionState.COMPLETING:
            await self._maybe_finish(session)

    async def _compact(self, session: LiveSession) -> None:
        """Empty the spool once every record in it is stored."""
        spool = session.spool
        if session.batches or session.open_count or session.parked or spool.busy or not spool.active_points:
            return
        dropped = await spool.reset_active()
        session.bytes_base += dropped
        session.spool_base = session.next_index
        await self._save(session)

    async def _maybe_finish(self, session: LiveSession) -> None:
        if session.state != SessionState.COMPLETING or session.finishing:
            return
        session.finishing = True
        try:
            await self._finish(session)
        finally:
            session.finishing = False

    async def _finish(self, session: LiveSession) -> None:
        await session.spool.drain()
        self._cut(session, force=True)
        if any(b.state != BatchState.DEAD for b in session.batches.values()) or session.open_count:
            return  # the last batch to finish calls again
        now = self.clock.now()
        dead = [b.batch_id for b in session.batches.values()]
        if dead:
            error = {
                "code": "BATCH_FAILED",
                "message": f"{len(dead)} batch(es) failed and are in the dead-letter queue",
                "details": ", ".join(dead),
                "failedAt": iso(now),
            }
            await self._transition(session, SessionState.FAILED, finished_at=now, error=error)
            session.finished.set()
            return
        session.final_hash = await self._final_hash(session)
        await self._transition(session, SessionState.COMPLETED, finished_at=now)
        await self._emit(
            session,
            "session-completed",
            sessionId=session.id,
            totalRecords=session.records_received,
            totalAtoms=session.atoms_created,
            durationMs=round((now - session.created_at).total_seconds() * 1000),
        )
        await self._retire(session)

    async def _final_hash(self, session: LiveSession) -> str:
        async with self.store.session() as db:
            rows = (
                await db.scalars(
                    select(BatchRow).where(BatchRow.session_id == session.id).order_by(BatchRow.first_index)
                )
            ).all()
        total = hashlib.sha256()
        for row in rows:
            if row.segment_key is not None:
                total.update(await asyncio.to_thread(_rehash, await self.objects.get(row.segment_key)))
        return total.hexdigest()

    # -- dead-letter queue -------------------------------------------------------------

    async def dead_letters(self, identity: Identity) -> list[dict[str, Any]]:
        """The tenant's batches in the dead-letter queue: those of the sessions this process
        holds (from memory), and, with several nodes or workers, those the others hold (from
        their rows: a batch's row is written when it dies)."""
        found = [
            _dlq_entry(b.batch_id, s.id, b.count, b.attempts, b.last_error, b.failed_at)
            for s, b in self._dead_batches(identity)
        ]
        if self.config.placement.coordinated:
            async with self.store.session() as db:
                rows = await db.scalars(
                    select(BatchRow)
                    .join(IngestSessionRow, IngestSessionRow.id == BatchRow.session_id)
                    .where(
                        BatchRow.tenant == identity.tenant,
                        BatchRow.state == BatchState.DEAD.value,
                        IngestSessionRow.state.not_in([s.value for s in FINAL_STATES]),
                        IngestSessionRow.id.not_in(list(self.live)),  # this process's own: memory is exact
                    )
                )
                found.extend(
                    _dlq_entry(r.batch_id, r.session_id, r.record_count, r.attempts, r.last_error, r.finished_at)
                    for r in rows
                )
        return sorted(found, key=lambda item: item["batchId"])

    def _dead_batches(self, identity: Identity) -> Iterator[tuple[LiveSession, Batch]]:
        for session in self.live.values():
            if session.tenant == identity.tenant:
                for batch in session.batches.values():
                    if batch.state == BatchState.DEAD:
                        yield session, batch

    def _local_dead(self, identity: Identity, batch_id: str) -> tuple[LiveSession, Batch] | None:
        return next(((s, b) for s, b in self._dead_batches(identity) if b.batch_id == batch_id), None)

    async def retry_dead(self, identity: Identity, batch_id: str) -> dict[str, Any]:
        """Put a dead batch back in the queue.

        Raises:
            APIError: 404 when no batch of the tenant's DLQ has this id.
        """
        found = self._local_dead(identity, batch_id)
        if found is None:
            raise APIError.not_found("Batch not found in the dead-letter queue", batchId=batch_id)
        session, batch = found
        batch.attempts = 0
        await self._write_row(session, batch, BatchState.QUEUED)
        self._start_batch(session, batch)
        return {"batchId": batch_id, "sessionId": session.id, "status": "queued"}

    # -- schemas -----------------------------------------------------------------------

    async def put_schema(self, identity: Identity, definition: dict[str, Any]) -> tuple[Schema, bool]:
        """Register (or replace) a schema; returns it and whether it is new."""
        schema = parse_schema(definition)
        async with self.store.session() as db:
            row = await db.scalar(
                select(SchemaRow).where(SchemaRow.tenant == identity.tenant, SchemaRow.name == schema.name)
            )
            created = row is None
            if row is None:
                db.add(
                    SchemaRow(
                        tenant=identity.tenant, name=schema.name, definition=definition, created_at=self.clock.now()
                    )
                )
            else:
                row.definition = definition
        return schema, created

    async def get_schema(self, identity: Identity, name: str) -> Schema:
        """A registered schema of the tenant.

        Raises:
            APIError: 404.
        """
        return parse_schema(await self._schema_definition(identity.tenant, name))

    async def _schema_definition(self, tenant: int, name: str) -> dict[str, Any]:
        async with self.store.session() as db:
            row = await db.scalar(select(SchemaRow).where(SchemaRow.tenant == tenant, SchemaRow.name == name))
        if row is None:
            raise APIError.not_found("Schema not found", schemaName=name)
        return row.definition

    # -- reading back ------------------------------------------------------------------

    async def records(
        self, identity: Identity, session_id: str, *, start: int | None, end: int | None, limit: int
    ) -> Any:
        """Stored records with ``start <= timestamp <= end`` (µs), in timestamp order, as NDJSON lines.

        Raises:
            APIError: 404.
        """
        found = await self.find(identity, session_id)
        query = select(BatchRow).where(BatchRow.session_id == found.id, BatchRow.state == BatchState.PROCESSED.value)
        if start is not None:
            query = query.where(BatchRow.max_ts >= start)
        if end is not None:
            query = query.where(BatchRow.min_ts <= end)
        async with self.store.session() as db:
            rows = list((await db.scalars(query.order_by(BatchRow.min_ts, BatchRow.seq))).all())
        return self._merge(rows, start, end, limit)

    async def _merge(self, rows: list[BatchRow], start: int | None, end: int | None, limit: int) -> Any:
        """k-way merge of the segments overlapping the range, each sorted by time."""
        import heapq

        heap: list[tuple[int, int, int, bytes]] = []
        sent = 0
        counter = 0
        for i, row in enumerate([*rows, None]):
            bound = row.min_ts if row is not None else None
            while heap and (bound is None or heap[0][0] <= bound) and sent < limit:
                _, _, _, line = heapq.heappop(heap)
                yield line + b"\n"
                sent += 1
            if sent >= limit or row is None:
                return
            assert row.segment_key is not None  # noqa: S101 -- set for every processed batch
            data = await self.objects.get(row.segment_key)
            text = await asyncio.to_thread(zstandard.ZstdDecompressor().decompressobj().decompress, data)
            for line in text.splitlines():
                stamp = _line_time(line)
                if (start is None or stamp >= start) and (end is None or stamp <= end):
                    counter += 1
                    heapq.heappush(heap, (stamp, i, counter, line))


def _recovered_batch(seq: int, batch_id: str, first: int, lines: list[bytes]) -> Batch:
    times = [_line_time(line) for line in lines] or [0]
    data = b"".join([line + b"\n" for line in lines])
    return Batch(seq, batch_id, first, data, len(lines), line_digests(data), min(times), max(times))


def _take(chunks: list[Chunk], take: int) -> list[Chunk]:
    """Remove the first ``take`` records from ``chunks``, splitting one if needed."""
    parts: list[Chunk] = []
    while take > 0:
        chunk = chunks[0]
        if chunk.count <= take:
            parts.append(chunks.pop(0))
            take -= chunk.count
        else:
            head, chunks[0] = chunk.split(take)
            parts.append(head)
            take = 0
    return parts


def _refusal(prepared: Prepared, batch_id: str, limit: int) -> APIError:
    if prepared.too_many is not None:
        return batch_too_large(limit, prepared.too_many)
    if prepared.problems:
        return invalid_data(batch_id, prepared.problems)
    if prepared.field_name:
        fields = [{"field": prepared.field_name, "message": prepared.error, "type": "value_error"}]
        return APIError.invalid_argument(prepared.error or "Invalid upload", fields=fields)
    return APIError.invalid_argument(prepared.error or "Invalid upload")


def _line_time(line: bytes) -> int:
    try:
        return timestamp_us(orjson.loads(line).get("timestamp")) or 0
    except (orjson.JSONDecodeError, AttributeError):
        return 0


# -- the seed's error bodies ----------------------------------------------------------------


def session_not_found(session_id: str) -> APIError:
    return APIError(
        ErrCode.NOT_FOUND,
        "Session not found",
        details={
            "sessionId": session_id,
            "message": "No active session found with this ID",
            "suggestions": [
                "Verify session ID is correct",
                "Check if session expired (max 24 hours)",
                "Start a new session",
            ],
        },
    )


def batch_too_large(limit: int, received: int) -> APIError:
    return APIError(
        ErrCode.PAYLOAD_TOO_LARGE,
        "Batch size exceeded",
        details={
            "maxBatchSize": limit,
            "receivedBatchSize": received,
            "message": "Batch exceeds maximum allowed size",
            "suggestion": "Split data into smaller batches",
        },
    )


def invalid_data(batch_id: str, problems: list[dict[str, Any]]) -> APIError:
    return APIError(
        ErrCode.INVALID_ARGUMENT,
        "Invalid data format",
        details={
            "batchId": batch_id,
            "invalidRecords": problems,
            "suggestion": "Fix invalid records and resubmit batch",
        },
    )


def state_conflict(session_id: str, state: SessionState, message: str, suggestion: str | None = None) -> APIError:
    details: dict[str, Any] = {"sessionId": session_id, "status": state.value, "message": message}
    if suggestion:
        details["suggestion"] = suggestion
    return APIError(ErrCode.CONFLICT, "Session state conflict", details=details)
