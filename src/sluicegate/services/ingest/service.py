"""Ingestion sessions and their jobs, through any node: commands, uploads, what a session looks like.

The life of a record:

1. **upload**: decoded (msgspec), checked (timestamps, the session's schema, frames'
   and buffers' base64 and format) and made canonical (:mod:`.prepare`, in worker
   processes for large bodies), then appended to the session's log
   (:mod:`sluicegate.engines.log`) on whichever node took the request. The upload is
   answered once the log acknowledges it: a 2xx survives ``kill -9`` of that node.
2. **batching, atomization, storage**: the work of the session's processor
   (:mod:`.processor`), on the node that holds the session's lease: batches of
   ``batchSize`` (or fewer after ``maxBatchDelayMs``), each record an atom named by the
   SHA-256 of its canonical bytes, each batch one zstd segment in the object store
   (``ingest/t<tenant>/<session>/<seq>.jsonl.zst``) and one database row.
3. **completion**: ``end`` seals the log (no node takes another record); once every
   batch is stored, the job's ``finalHash`` is computed and the session completes.

Canonical bytes of a record: its JSON as sent, without whitespace outside strings.
``finalHash`` = SHA-256 of the concatenated 32-byte SHA-256 digests of every atom, in
the order the log acknowledged the records. A client can recompute it from what it
sent (in the order it was acknowledged).

State lives in the database (the session's row and its batches' rows) and the log (its
counters and whether it takes data), so every node answers every request the same:
there is no per-node session state, only a cache of what never changes (a session's
tenant, type and schema).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import func, select, update

from sluicegate.engines.log import LogClosed, LogNotFound, LogState
from sluicegate.errors import APIError
from sluicegate.services.ingest.archiver import Archiver, SessionRef
from sluicegate.services.ingest.errors import session_not_found, state_conflict
from sluicegate.services.ingest.models import (
    FINAL_STATES,
    TRANSITIONS,
    BatchRow,
    BatchState,
    IngestSessionRow,
    SessionState,
    SessionType,
    StartRequest,
)
from sluicegate.services.ingest.processor import IngestProcessor, log_name
from sluicegate.services.ingest.schemas import schema_definition
from sluicegate.services.ingest.uploads import Uploads
from sluicegate.services.media.config import AUDIO_FIELDS, VIDEO_FIELDS, parse_audio_config, parse_video_config
from sluicegate.services.notify import wait_until, wakeups
from sluicegate.services.processing import Processors

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.broker import Broker
    from sluicegate.engines.log import SessionLog
    from sluicegate.engines.objects import ObjectStore
    from sluicegate.engines.store import Store
    from sluicegate.engines.store.leases import Leases
    from sluicegate.security.identity import Identity
    from sluicegate.services.processing import Lease

__all__ = ["IngestConfig", "IngestService", "SessionInfo", "SessionView", "iso", "media_config"]

log = logging.getLogger("sluicegate.ingest")

#: Start fields that are not the session's batch configuration (the media ones are kept checked, apart).
_NOT_CONFIG = {"sessionType", "sessionName", "metadata", "tenantId", *VIDEO_FIELDS, *AUDIO_FIELDS}


def media_config(body: StartRequest) -> dict[str, Any]:
    """``{"video": {...}}`` or ``{"audio": {...}}``: the session type's media fields checked, with
    their defaults, under the seed's names (docs/media.md); ``{}`` for telemetry. Fields of the
    other media type are ignored.

    Raises:
        APIError: 400 naming the field, for an unknown mode or a value out of range.
    """
    fields = body.model_dump(include={*VIDEO_FIELDS, *AUDIO_FIELDS}, exclude_none=True)
    if body.sessionType == SessionType.VIDEO:
        return {"video": parse_video_config(fields).as_fields()}
    if body.sessionType == SessionType.AUDIO:
        return {"audio": parse_audio_config(fields).as_fields()}
    return {}


#: Sessions whose unchanging facts a node remembers.
INFO_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Options of the ingestion service (from settings)."""

    max_batch_size: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    session_ttl_seconds: float = 86_400.0
    max_queued_records: int = 2_000_000
    workers: int = 0  # processes preparing large uploads; 0 prepares them in this process


def iso(moment: datetime) -> str:
    """ISO-8601 with a ``Z``, as the seed writes times."""
    return moment.isoformat().replace("+00:00", "Z")


def channel_of(tenant: int, session_id: str) -> str:
    """The broker channel of a session's events."""
    return f"ingest/t{tenant}/{session_id}"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What never changes about a session: what a node needs to take its uploads."""

    id: str
    job_id: str
    tenant: int
    session_type: SessionType
    batch_size: int
    schema: dict[str, Any] | None
    log: str | None

    @property
    def channel(self) -> str:
        return channel_of(self.tenant, self.id)


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as any node sees it: its row, its batches and its log, at one moment."""

    row: IngestSessionRow
    records_received: int
    bytes_received: int
    batches_cut: int
    batches_processed: int
    atoms_created: int
    processing_ms_total: float
    last_activity_at: datetime

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def state(self) -> SessionState:
        return SessionState(self.row.state)

    @property
    def records_queued(self) -> int:
        return self.records_received - self.atoms_created


class IngestService:
    """The ``/api/streaming`` sessions over the database, a session log, the object store
    and the broker.

    Args:
        store: the database (sessions, batches, schemas, leases).
        objects: where segments go.
        broker: the sessions' events.
        session_log: where uploads are appended.
        leases: this process's leases (one processor per session).
        clock: time for timers, backoff and timestamps.
        config: the service's options.
    """

    name = "ingest"

    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        broker: Broker,
        session_log: SessionLog,
        leases: Leases,
        clock: Clock,
        config: IngestConfig,
    ) -> None:
        self.store = store
        self.objects = objects
        self.broker = broker
        self.log = session_log
        self.leases = leases
        self.clock = clock
        self.config = config
        self.archiver = Archiver(store, objects, clock)
        self.processors = Processors(
            "ingest", leases, clock, candidates=self._candidates, run=self._process, fence=session_log.shared
        )
        self.processing: dict[str, IngestProcessor] = {}  # the processors running here
        self._info: dict[str, SessionInfo] = {}
        self.uploads = Uploads(self)

    iso = staticmethod(iso)

    # -- life --------------------------------------------------------------------------

    async def open(self) -> None:
        """Start processing: the sessions started here, and any whose processor stopped."""
        self.uploads.open()
        await self.processors.open()

    async def close(self) -> None:
        await self.processors.close()
        self.uploads.close()

    async def check(self) -> None:
        return None

    async def _candidates(self, limit: int) -> list[str]:
        async with self.store.session() as db:
            found = await db.scalars(
                select(IngestSessionRow.id)
                .where(
                    IngestSessionRow.retired.is_(False),
                    IngestSessionRow.state != SessionState.FAILED.value,  # waits for a retry by hand
                    IngestSessionRow.log == self.log.identity,
                    self.leases.free("ingest", IngestSessionRow.id),
                )
                .limit(limit)
            )
            return list(found.all())

    async def _process(self, lease: Lease) -> None:
        async with self.store.session() as db:
            row = await db.get(IngestSessionRow, lease.key)
            rows = (
                await db.scalars(select(BatchRow).where(BatchRow.session_id == lease.key).order_by(BatchRow.seq))
            ).all()
        if row is None or row.retired or row.log != self.log.identity:
            return  # nothing to do, or its records are in a log this node does not reach
        state = SessionState(row.state)
        if state in (SessionState.COMPLETED, SessionState.CANCELLED):
            await self.retire(row.id)  # finished, but its log was not deleted yet
            return
        if state == SessionState.FAILED:
            return
        if rows:
            log.info("ingestion session %s: processing after batch %d", row.id, max(r.seq for r in rows))
        processor = IngestProcessor(self, lease, row, list(rows))
        self.processing[row.id] = processor
        await processor.run()

    # -- the database and the log, as the processor and the routes use them ----------

    async def row(self, session_id: str) -> IngestSessionRow | None:
        async with self.store.session() as db:
            return await db.get(IngestSessionRow, session_id)

    async def emit(self, session: SessionRef | SessionInfo, event: str, **fields: Any) -> None:
        """Publish a session event (with its ``timestamp``) on the session's channel."""
        fields["timestamp"] = iso(self.clock.now())
        await self.broker.publish(channel_of(session.tenant, session.id), orjson.dumps({"type": event, **fields}))

    async def transition(
        self, session_id: str, source: SessionState | tuple[SessionState, ...], to: SessionState, **changes: Any
    ) -> bool:
        """Move a session from ``source`` to ``to`` if it is there now (compare-and-set).

        Returns:
            Whether it moved.
        """
        sources = (source,) if isinstance(source, SessionState) else source
        async with self.store.session() as db:
            moved = await db.execute(
                update(IngestSessionRow)
                .where(IngestSessionRow.id == session_id, IngestSessionRow.state.in_([s.value for s in sources]))
                .values(state=to.value, last_activity_at=self.clock.now(), **changes)
            )
        return bool(moved.rowcount)  # type: ignore[attr-defined]

    async def counters(self, session_id: str) -> dict[str, int]:
        """The log's counters as the session's row keeps them (none if the log is gone)."""
        try:
            head = await self.log.head(log_name(session_id))
        except LogNotFound:
            return {}
        return {"records_received": head.total, "bytes_received": head.bytes}

    async def retire(self, session_id: str) -> None:
        """A finished session's log goes; its counters stay in its row."""
        name = log_name(session_id)
        try:
            head = await self.log.head(name)
        except LogNotFound:
            head = None
        async with self.store.session() as db:
            values: dict[str, Any] = {"retired": True}
            if head is not None:
                values |= {"records_received": head.total, "bytes_received": head.bytes}
            await db.execute(update(IngestSessionRow).where(IngestSessionRow.id == session_id).values(**values))
        with contextlib.suppress(LogNotFound):
            await self.log.delete(name)
        self.uploads.forget(session_id)

    async def view(self, row: IngestSessionRow) -> SessionView:
        """What a session looks like now: its row, its batches' counts and its log's."""
        stored = BatchRow.state == BatchState.PROCESSED.value
        async with self.store.session() as db:
            cut, processed, atoms, total_ms = (
                await db.execute(
                    select(
                        func.count(BatchRow.id),
                        func.count(BatchRow.id).filter(stored),
                        func.coalesce(func.sum(BatchRow.record_count).filter(stored), 0),
                        func.coalesce(func.sum(BatchRow.processing_ms).filter(stored), 0.0),
                    ).where(BatchRow.session_id == row.id)
                )
            ).one()
        received, size, last = row.records_received, row.bytes_received, row.last_activity_at
        if not row.retired and row.log == self.log.identity:
            try:
                head = await self.log.head(log_name(row.id))
            except LogNotFound:  # retired meanwhile: its counters were written first
                again = await self.row(row.id)
                if again is not None:
                    received, size = again.records_received, again.bytes_received
            else:
                received, size = head.total, head.bytes
                if head.appended_at is not None:
                    last = max(last, _from_timestamp(head.appended_at))
        return SessionView(row, received, size, int(cut), int(processed), int(atoms), float(total_ms or 0), last)

    # -- finding sessions ----------------------------------------------------------------

    async def find(self, identity: Identity, session_id: str) -> IngestSessionRow:
        """A session of the caller's tenant.

        Raises:
            APIError: 404 with the seed's "Session not found" body.
        """
        row = await self.row(session_id)
        if row is None or row.tenant != identity.tenant:
            raise session_not_found(session_id)
        return row

    async def find_job(self, identity: Identity, job_id: str) -> IngestSessionRow:
        """The session of a job.

        Raises:
            APIError: 404.
        """
        async with self.store.session() as db:
            row = await db.scalar(select(IngestSessionRow).where(IngestSessionRow.job_id == job_id))
        if row is None or row.tenant != identity.tenant:
            raise APIError.not_found("Job not found", jobId=job_id)
        return row

    def own(self, row: IngestSessionRow, *, legacy_ok: bool = False) -> None:
        """Refuse to act on an unfinished session whose records are in another log.

        Raises:
            APIError: 503 when another log holds it; 409 for a session an earlier version
                started (its records are in a spool this version does not read), unless
                ``legacy_ok`` (cancelling it is allowed).
        """
        if row.log == self.log.identity or SessionState(row.state) in FINAL_STATES:
            return
        if row.log is None:
            if legacy_ok:
                return
            raise state_conflict(
                row.id,
                SessionState(row.state),
                "This session was started by an earlier version of Sluicegate and cannot take data or finish",
                "Cancel it and start a new session",
            )
        raise APIError.unavailable(
            "This session keeps its records in another session log than this node's "
            "(SLUICEGATE_LOG_URL differs between nodes)"
        )

    async def info(self, identity: Identity, session_id: str) -> SessionInfo:
        """What never changes about a session (remembered by this node).

        Raises:
            APIError: 404 with the seed's body.
        """
        found = self._info.get(session_id)
        if found is None:
            row = await self.find(identity, session_id)
            schema = None
            if row.config.get("schemaName"):
                with contextlib.suppress(APIError):  # deleted since: uploads are checked without it
                    schema = await schema_definition(self.store, row.tenant, row.config["schemaName"])
            found = SessionInfo(
                row.id,
                row.job_id,
                row.tenant,
                SessionType(row.session_type),
                int(row.config.get("batchSize", 1000)),
                schema,
                row.log,
            )
            if len(self._info) >= INFO_CACHE_SIZE:
                self._info.clear()
            self._info[session_id] = found
        if found.tenant != identity.tenant:
            raise session_not_found(session_id)
        return found

    # -- commands ------------------------------------------------------------------------

    async def start(self, identity: Identity, body: StartRequest) -> IngestSessionRow:
        """Create a session and its job, and start its processor here (its lease is taken
        before its row is written, so no other node's scan takes it first).

        Raises:
            APIError: 403 for a ``tenantId`` other than the token's; 404 for an unknown
                ``schemaName``; 400 for a schema on a non-telemetry session.
        """
        if body.tenantId is not None and body.tenantId != identity.tenant:
            raise APIError.permission_denied("tenantId does not match the token's tenant")
        media = media_config(body)  # a bad media field is a 400 before anything is created
        if body.schemaName is not None:
            if body.sessionType != SessionType.TELEMETRY:
                raise APIError.invalid_argument("Schemas apply to telemetry sessions only")
            await schema_definition(self.store, identity.tenant, body.schemaName)
        now = self.clock.now()
        session_id = f"stream-session-{secrets.token_hex(8)}"
        await self.log.create(log_name(session_id))
        row = IngestSessionRow(
            id=session_id,
            job_id=f"job-{secrets.token_hex(8)}",
            tenant=identity.tenant,
            session_type=body.sessionType.value,
            session_name=body.sessionName or f"{body.sessionType.value} session {iso(now)}",
            metadata_=body.metadata,
            config={**body.model_dump(exclude=_NOT_CONFIG), **media},
            state=SessionState.ACTIVE.value,  # initializing is over once the row and the log exist
            created_at=now,
            last_activity_at=now,
            records_received=0,
            bytes_received=0,
            log=self.log.identity,
            retired=False,
        )
        epoch = await self.leases.acquire("ingest", session_id)  # a new id: nobody else holds it
        try:
            async with self.store.session() as db:
                db.add(row)
        except BaseException:
            await self.leases.forget("ingest", session_id)
            raise
        await self.emit(SessionRef(row.id, row.tenant), "session-started", sessionId=row.id)
        if epoch is not None:
            self.processors.adopt(row.id, epoch)
        return row

    async def pause(self, identity: Identity, session_id: str) -> IngestSessionRow:
        return await self._gate(identity, session_id, SessionState.PAUSED, LogState.PAUSED, "session-paused")

    async def resume(self, identity: Identity, session_id: str) -> IngestSessionRow:
        return await self._gate(identity, session_id, SessionState.ACTIVE, LogState.OPEN, "session-resumed")

    async def _gate(
        self, identity: Identity, session_id: str, to: SessionState, gate: LogState, event: str
    ) -> IngestSessionRow:
        row = await self.find(identity, session_id)
        state = SessionState(row.state)
        if state in FINAL_STATES:
            raise state_conflict(row.id, state, "The session is finished")
        self.own(row)
        if to not in TRANSITIONS[state]:
            raise state_conflict(row.id, state, f"Cannot go from {state} to {to}")
        if not await self.transition(row.id, state, to):
            return await self._gate(identity, session_id, to, gate, event)  # it moved meanwhile: look again
        with contextlib.suppress(LogClosed, LogNotFound):  # ended meanwhile: the row says what it is now
            await self.log.set_state(log_name(row.id), gate)
        await self.emit(SessionRef(row.id, row.tenant), event, sessionId=row.id)
        return await self.find(identity, session_id)

    async def end(self, identity: Identity, session_id: str, *, wait: bool, timeout_ms: int) -> IngestSessionRow:
        """Stop taking data, process what is queued, complete (optionally waiting for it)."""
        row = await self.find(identity, session_id)
        if SessionState(row.state) in FINAL_STATES:
            return row  # ending a finished session is a no-op that reports it
        self.own(row)
        async with wakeups(self.broker, channel_of(row.tenant, row.id)) as wake:
            if SessionState(row.state) != SessionState.COMPLETING:
                sources = (SessionState.INITIALIZING, SessionState.ACTIVE, SessionState.PAUSED)
                await self.transition(row.id, sources, SessionState.COMPLETING, ended_at=self.clock.now())
            with contextlib.suppress(LogNotFound):
                await self.log.set_state(log_name(row.id), LogState.SEALED)  # no node takes a record now
            await self.processors.ensure(row.id)  # if its processor's node is gone, process it here

            async def finished() -> IngestSessionRow | None:
                found = await self.find(identity, session_id)
                return found if SessionState(found.state) in FINAL_STATES else None

            if wait:
                done = await wait_until(finished, wake, timeout_ms / 1000)
                if done is not None:
                    return done
        return await self.find(identity, session_id)

    async def cancel(self, identity: Identity, job_id: str) -> IngestSessionRow:
        """Cancel a session's job; what was stored stays, the rest is dropped."""
        row = await self.find_job(identity, job_id)
        state = SessionState(row.state)
        if state == SessionState.CANCELLED:
            return row
        if state in FINAL_STATES:
            raise state_conflict(row.id, state, "The job is finished")
        self.own(row, legacy_ok=True)
        await self.cancel_row(row)
        await self.processors.ensure(row.id)  # its processor retires it (here, if nobody else runs it)
        return await self.find_job(identity, job_id)

    async def cancel_row(self, row: IngestSessionRow, error: dict[str, Any] | None = None) -> None:
        """Cancel an unfinished session: its row first (nothing is stored after it), then its log."""
        sources = tuple(s for s in SessionState if s not in FINAL_STATES)
        now = self.clock.now()
        if not await self.transition(row.id, sources, SessionState.CANCELLED, finished_at=now, error=error):
            return
        with contextlib.suppress(LogNotFound):
            await self.log.set_state(log_name(row.id), LogState.SEALED)
        local = self.processing.get(row.id)
        if local is not None:  # a sealed log shows no new mark: tell it (elsewhere it looks every tick)
            local.poke()
        view = await self.view(row)
        await self.emit(
            SessionRef(row.id, row.tenant),
            "session-cancelled",
            sessionId=row.id,
            atomsCreated=view.atoms_created,
            reason=(error or {}).get("code", "CANCELLED"),
        )

    # -- uploads -----------------------------------------------------------------------

    async def upload(self, identity: Identity, session_id: str, body: bytes) -> dict[str, Any]:
        """Accept one upload; returns the seed's upload response once it is durable.

        Raises:
            APIError: the seed's 404, 413 and 400 bodies; 409 when the session does not
                take data; 503 when the log cannot be reached or too much is queued; 500
                when the records cannot be made durable.
        """
        started = self.clock.monotonic()
        return await self.uploads.accept(await self.info(identity, session_id), body, started)

    async def accept(self, info: SessionInfo, body: bytes, started: float) -> dict[str, Any]:
        """The upload path for a body (shared with the WebSocket)."""
        return await self.uploads.accept(info, body, started)


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
