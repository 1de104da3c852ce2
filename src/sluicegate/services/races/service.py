"""Race sessions: durable ingest, inactivity flush to zstd archives, recovery, read-back.

A session's life: ``open`` (a stream ID maps to it; points are accepted) →
``closing`` (no more points; its spool is being archived) → ``closed`` (everything
archived). Points go to the session's spool (:mod:`.spool`) before they are
acknowledged. After ``idle_seconds`` without a point, the spool's active file becomes a
numbered batch, which is compressed and uploaded to
``races/<stream>/<session>/<seq:06d>.jsonl.zst``; only once the upload and its record in
the database have succeeded is the batch removed from the spool. Failed uploads are
retried with exponential backoff for as long as it takes.

Restart recovery: sessions not ``closed`` are loaded, their spools re-read, and
every batch (and the active file) is archived at once. A batch whose key the database
already records (the process died between recording and deleting it) is dropped, not
uploaded twice. Uploading a batch again after a crash before its record is harmless:
the key is the same, so the archive holds every point exactly once.

Single-node by design for now: the stream-to-session map lives in this process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import zstandard
from sqlalchemy import select

from sluicegate.engines.spool import SessionSpool, SpoolError
from sluicegate.errors import APIError
from sluicegate.security.tenancy import owned_by
from sluicegate.services.placement import ALONE, Placement
from sluicegate.services.races.models import RaceSessionRow, SessionIn, SessionOut, SessionState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime
    from pathlib import Path

    from sluicegate.clock import Clock
    from sluicegate.engines.objects import ObjectStore
    from sluicegate.engines.store import Store
    from sluicegate.observability.metrics import Metrics
    from sluicegate.security.identity import Identity

__all__ = ["RaceConfig", "RaceService", "RaceSession"]

log = logging.getLogger("sluicegate.races")

_SEQ = re.compile(r"/(\d{6,})\.jsonl\.zst$")


#: How long a node remembers which other node holds a stream's session, and for how many streams.
HOLDER_CACHE_SECONDS = 1.0
HOLDER_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class RaceConfig:
    """Options of the race service (from settings)."""

    spool_dir: Path
    idle_seconds: float = 30.0
    zstd_level: int = 3
    fsync: bool = True
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    close_wait_seconds: float = 10.0
    placement: Placement = ALONE  # which process holds which session (several nodes or workers)


@dataclass(eq=False)
class RaceSession:
    """A session that is open or still being archived, as this process holds it."""

    id: str
    tenant: int
    stream: str
    metadata: dict[str, Any]
    state: SessionState
    created_at: datetime
    closed_at: datetime | None
    archived_points: int
    archived_bytes: int
    archived_keys: list[str]
    spool: SessionSpool
    last_error: str | None = None
    failed_attempts: int = 0
    last_data: float = 0.0
    watcher: asyncio.Task[None] | None = None
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def key(self, seq: int) -> str:
        return f"races/{self.stream}/{self.id}/{seq:06d}.jsonl.zst"

    def next_seq(self) -> int:
        seqs = [int(m.group(1)) for key in self.archived_keys if (m := _SEQ.search(key))]
        seqs.extend(self.spool.pending)
        return max(seqs, default=0) + 1

    def describe(self) -> SessionOut:
        spool = self.spool
        pending_bytes = sum(size for _, size in spool.pending.values())
        return SessionOut(
            id=self.id,
            stream=self.stream,
            metadata=self.metadata,
            state=self.state,
            data_points=self.archived_points + spool.spooled_points,
            bytes=self.archived_bytes + spool.active_bytes + pending_bytes,
            spooled_points=spool.spooled_points,
            archived_keys=list(self.archived_keys),
            created_at=self.created_at,
            closed_at=self.closed_at,
            last_error=self.last_error,
            failed_attempts=self.failed_attempts,
        )


def _row_out(row: RaceSessionRow) -> SessionOut:
    return SessionOut(
        id=row.id,
        stream=row.stream,
        metadata=row.metadata_,
        state=SessionState(row.state),
        data_points=row.archived_points,
        bytes=row.archived_bytes,
        spooled_points=0,
        archived_keys=list(row.archived_keys),
        created_at=row.created_at,
        closed_at=row.closed_at,
        last_error=row.last_error,
        failed_attempts=row.failed_attempts,
    )


class RaceService:
    """Race sessions over the store (state), the object store (archives) and a local spool.

    Args:
        store: the database.
        objects: where archives go.
        clock: time for idle detection, backoff and timestamps.
        config: the service's options.
        metrics: the app's metrics.
    """

    name = "races"

    def __init__(self, store: Store, objects: ObjectStore, clock: Clock, config: RaceConfig, metrics: Metrics) -> None:
        self.store = store
        self.objects = objects
        self.clock = clock
        self.config = config
        self.metrics = metrics
        self.by_stream: dict[str, RaceSession] = {}
        self.sessions: dict[str, RaceSession] = {}
        self._holders: dict[str, tuple[str | None, float]] = {}  # stream -> (other node, until)
        self._background: set[asyncio.Task[None]] = set()

    # -- life --------------------------------------------------------------------------

    async def open(self) -> None:
        """Load every session not yet closed, re-read its spool, and archive what it holds."""
        async with self.store.session() as db:
            rows = (
                await db.scalars(
                    select(RaceSessionRow).where(
                        RaceSessionRow.state != "closed",
                        # this node's own: another node's spool is on that node
                        RaceSessionRow.owner.is_(None)
                        if self.config.placement.owner is None
                        else RaceSessionRow.owner == self.config.placement.owner,
                    )
                )
            ).all()
        for row in rows:
            session = await self._load(row)
            if session.spool.spooled_points:
                log.info("recovering %d spooled points of race session %s", session.spool.spooled_points, session.id)
                self._spawn(self._flush_and_settle(session))
            elif session.state == SessionState.CLOSING:
                self._spawn(self._flush_and_settle(session))

    async def _load(self, row: RaceSessionRow) -> RaceSession:
        spool = SessionSpool(self.config.spool_dir / row.id, fsync=self.config.fsync, total=row.archived_points)
        await asyncio.to_thread(spool.recover)
        archived = set(row.archived_keys)
        session = RaceSession(
            id=row.id,
            tenant=row.tenant,
            stream=row.stream,
            metadata=row.metadata_,
            state=SessionState(row.state),
            created_at=row.created_at,
            closed_at=row.closed_at,
            archived_points=row.archived_points,
            archived_bytes=row.archived_bytes,
            archived_keys=list(row.archived_keys),
            spool=spool,
            last_error=row.last_error,
            failed_attempts=row.failed_attempts,
        )
        for seq in [s for s in spool.pending if session.key(s) in archived]:
            points, _ = spool.archived(seq)  # recorded before the crash: do not count or upload it again
            spool.total -= points
        self.sessions[row.id] = session
        if session.state == SessionState.OPEN:
            self.by_stream[row.stream] = session
        self._set_spooled_gauge()
        return session

    async def close(self) -> None:
        """Stop flushing (the spools stay on disk for the next start)."""
        tasks = [*self._background, *(s.watcher for s in self.sessions.values() if s.watcher is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in self.sessions.values():
            session.spool.close()

    async def check(self) -> None:
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _set_spooled_gauge(self) -> None:
        self.metrics.race_spooled_points.set(sum(s.spool.spooled_points for s in self.sessions.values()))

    # -- sessions ----------------------------------------------------------------------

    async def create(self, identity: Identity, body: SessionIn) -> SessionOut:
        """Open the session of a stream.

        Raises:
            APIError: 409 when the stream already has an open session.
        """
        existing = self.by_stream.get(body.stream)
        if existing is not None:
            raise APIError.already_exists("A session is already open for this stream", stream=body.stream)
        now = self.clock.now()
        row = RaceSessionRow(
            id=uuid.uuid4().hex,
            tenant=identity.tenant,
            stream=body.stream,
            metadata_=body.metadata,
            state=SessionState.OPEN.value,
            created_at=now,
            closed_at=None,
            archived_points=0,
            archived_bytes=0,
            archived_keys=[],
            last_error=None,
            failed_attempts=0,
            owner=self.config.placement.owner,
        )
        async with self.store.session() as db:
            db.add(row)
        session = await self._load(row)
        return session.describe()

    async def holder(self, identity: Identity, session_id: str) -> str | None:
        """The URL of the node holding a session that is not closed, when it is not this one;
        ``None`` when this node answers itself (unknown ids and other tenants' included)."""
        if session_id in self.sessions or not self.config.placement.coordinated:
            return None
        async with self.store.session() as db:
            row = await db.get(RaceSessionRow, session_id)
        if row is None or row.tenant != identity.tenant or row.state == SessionState.CLOSED.value:
            return None
        return self.config.placement.route(row.owner)

    async def stream_holder(self, stream: str) -> str | None:
        """The node holding the open session of ``stream``, when it is another one. Cached
        for a second: a stream posted to the wrong node is posted to it often."""
        if not self.config.placement.coordinated:
            return None
        now = self.clock.monotonic()
        cached = self._holders.get(stream)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.store.session() as db:
            owner = await db.scalar(
                select(RaceSessionRow.owner).where(RaceSessionRow.stream == stream, RaceSessionRow.state == "open")
            )
        node = self.config.placement.route(owner)
        if len(self._holders) > HOLDER_CACHE_SIZE:
            self._holders.clear()
        self._holders[stream] = (node, now + HOLDER_CACHE_SECONDS)
        return node

    async def describe(self, identity: Identity, session_id: str) -> SessionOut:
        """A session's state, counts and archives.

        Raises:
            APIError: 404 for an unknown session or another tenant's.
        """
        session = self.sessions.get(session_id)
        if session is not None:
            return owned_by(identity, session, "Race session not found").describe()
        async with self.store.session() as db:
            row = await db.get(RaceSessionRow, session_id)
        return _row_out(owned_by(identity, row, "Race session not found"))

    async def close_session(self, identity: Identity, session_id: str) -> tuple[SessionOut, bool]:
        """Stop accepting points, archive the spool and close.

        Returns:
            The session, and whether it is fully archived (else it keeps retrying).

        Raises:
            APIError: 404 for an unknown session or another tenant's.
        """
        session = self.sessions.get(session_id)
        if session is None:  # closed already, or unknown
            return await self.describe(identity, session_id), True
        owned_by(identity, session, "Race session not found")
        if session.state == SessionState.OPEN:
            self.by_stream.pop(session.stream, None)
            session.state = SessionState.CLOSING
            session.closed_at = self.clock.now()
            await self._save(session)
        settle = asyncio.create_task(self._flush_and_settle(session))
        self._background.add(settle)
        settle.add_done_callback(self._background.discard)
        # A request's wait, in real time (like any HTTP timeout), not the archive's schedule.
        done, _ = await asyncio.wait({settle}, timeout=self.config.close_wait_seconds)
        if not done:
            return session.describe(), False
        settle.result()
        return session.describe(), session.state == SessionState.CLOSED

    async def _save(self, session: RaceSession, **changes: Any) -> None:
        """Write the session's row; ``changes`` override the in-memory values (to record
        something before the session itself shows it)."""
        values = {
            "state": session.state.value,
            "closed_at": session.closed_at,
            "archived_points": session.archived_points,
            "archived_bytes": session.archived_bytes,
            "archived_keys": list(session.archived_keys),
            "last_error": session.last_error,
            "failed_attempts": session.failed_attempts,
            **changes,
        }
        async with self.store.session() as db:
            row = await db.get(RaceSessionRow, session.id)
            if row is None:  # pragma: no cover - rows are never deleted
                return
            for name, value in values.items():
                setattr(row, name, value)

    # -- ingest ------------------------------------------------------------------------

    async def ingest(self, stream: str, line: bytes) -> int:
        """Make one point of ``stream`` durable.

        Returns:
            The session's number of acknowledged points.

        Raises:
            APIError: 400 ``No session present for the stream ID``; 500 ``Failed to set up
                stream handler`` when the point cannot be made durable.
        """
        session = self.by_stream.get(stream)
        if session is None:
            raise APIError.invalid_argument("No session present for the stream ID")
        try:
            total = await session.spool.append(line)
        except SpoolError as exc:
            log.error("race session %s: %s", session.id, exc)
            raise APIError.internal("Failed to set up stream handler") from None
        self.metrics.race_points.inc()
        session.last_data = self.clock.monotonic()
        if session.watcher is None:
            session.watcher = asyncio.create_task(self._watch(session))
        return total

    async def _watch(self, session: RaceSession) -> None:
        """Flush the session once it has been idle for ``idle_seconds``."""
        try:
            while session.state == SessionState.OPEN:
                remaining = session.last_data + self.config.idle_seconds - self.clock.monotonic()
                if remaining > 0:
                    await self.clock.sleep(remaining)
                    continue
                session.watcher = None  # a point arriving from now on starts a new watch
                await self._flush(session)
                return
        finally:
            if session.watcher is asyncio.current_task():
                session.watcher = None

    # -- archiving ---------------------------------------------------------------------

    async def _flush_and_settle(self, session: RaceSession) -> None:
        await self._flush(session)
        # A closing session takes no new points, but one accepted just before the close
        # may still be on its way to the spool: wait for it, and archive it too.
        while session.state == SessionState.CLOSING and (session.spool.busy or session.spool.spooled_points):
            await session.spool.drain()
            await self._flush(session)
        if session.state != SessionState.CLOSING:
            return
        if self.sessions.pop(session.id, None) is None:
            return  # another settle got here first
        session.state = SessionState.CLOSED
        await self._save(session)
        await asyncio.to_thread(session.spool.remove)
        self._set_spooled_gauge()

    async def _flush(self, session: RaceSession) -> None:
        """Close the active batch and archive every pending batch, in order, retrying failures."""
        async with session.flush_lock:
            await session.spool.rotate(session.next_seq())
            for seq in sorted(session.spool.pending):
                await self._archive(session, seq)

    async def _archive(self, session: RaceSession, seq: int) -> None:
        key = session.key(seq)
        path = session.spool.pending_path(seq)
        delay = self.config.retry_initial_seconds
        while True:
            try:
                compressed = await asyncio.to_thread(self._compress, path)
                await self.objects.put(key, compressed)
                points, size = session.spool.pending[seq]
                await self._save(
                    session,
                    archived_keys=[*session.archived_keys, key],
                    archived_points=session.archived_points + points,
                    archived_bytes=session.archived_bytes + size,
                    last_error=None,
                    failed_attempts=0,
                )
                # Recorded: move the batch from the spool to the archives in one step, so
                # that a reader never sees it in both or in neither.
                session.archived_keys.append(key)
                session.archived_points += points
                session.archived_bytes += size
                session.failed_attempts, session.last_error = 0, None
                session.spool.archived(seq)
                self.metrics.race_archives.inc()
                self.metrics.race_archive_bytes.inc(len(compressed))
                self._set_spooled_gauge()
                log.info("archived %d points of race session %s as %s", points, session.id, key)
                return
            except (OSError, APIError) as exc:  # the object store, the database or the disk
                session.failed_attempts += 1
                session.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.race_archive_failures.inc()
                log.warning(
                    "archiving %s failed (attempt %d), retrying in %.1fs: %s",
                    key,
                    session.failed_attempts,
                    delay,
                    exc,
                )
                await self.clock.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_seconds)

    def _compress(self, path: Path) -> bytes:
        # A compressor per call: zstandard's objects must not be shared between threads.
        return zstandard.ZstdCompressor(level=self.config.zstd_level).compress(path.read_bytes())

    # -- read back ---------------------------------------------------------------------

    async def read(self, identity: Identity, session_id: str) -> AsyncIterator[bytes]:
        """Every point of a session as JSON Lines, archived then spooled, in order.

        Archiving waits while this runs, so no batch moves under the reader's feet.

        Raises:
            APIError: 404 for an unknown session or another tenant's.
        """
        session = self.sessions.get(session_id)
        if session is None:
            out = await self.describe(identity, session_id)
            async for chunk in self._read_archives(out.archived_keys):
                yield chunk
            return
        owned_by(identity, session, "Race session not found")
        async with session.flush_lock:
            async for chunk in self._read_archives(list(session.archived_keys)):
                yield chunk
            spool = session.spool
            for seq in sorted(spool.pending):
                yield await asyncio.to_thread(spool.pending_path(seq).read_bytes)
            if spool.active_bytes:
                size = spool.active_bytes
                active = spool.directory / "active.jsonl"
                yield await asyncio.to_thread(_read_prefix, active, size)

    async def _read_archives(self, keys: list[str]) -> AsyncIterator[bytes]:
        for key in keys:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            async for chunk in self.objects.stream(key):
                data = await asyncio.to_thread(decompressor.decompress, chunk)
                if data:
                    yield data


def _read_prefix(path: Path, size: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def point_line(received_at: str, kind: Any, platform: Any, data: Any) -> bytes:
    """One archive line: ``received_at``, ``type``, ``platform``, ``data``."""
    point = {"received_at": received_at, "type": kind, "platform": platform, "data": data}
    return orjson.dumps(point, option=orjson.OPT_APPEND_NEWLINE)
