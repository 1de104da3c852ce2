"""Race sessions: points appended to the session's log on any node, archived by one.

A session's life: ``open`` (a stream ID maps to it; points are accepted by every node)
→ ``closing`` (no more points: its log is sealed; what is left is being archived) →
``closed`` (everything archived, the log deleted). A point is acknowledged once the
session's log has it (:mod:`sluicegate.engines.log`); the answer's ``data_points`` is
the log's count after it, exact across nodes. Archiving is the work of the session's
processor (:mod:`.processor`), which runs on whichever node holds the session's lease:
the one that opened it, or, if that node dies, the next one to find the lease expired.

Archives are ``races/<stream>/<session>/<seq:06d>.jsonl.zst``; reading a session back
gives its archives, then what its log still holds, in the order points were received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import zstandard
from sqlalchemy import select, update

from sluicegate.engines.log import LogClosed, LogError, LogNotFound, LogState, LogUnavailable
from sluicegate.engines.store import StoreConflict
from sluicegate.errors import APIError
from sluicegate.security.tenancy import owned_by
from sluicegate.services.notify import wait_until, wakeups
from sluicegate.services.processing import Processors
from sluicegate.services.races.models import RaceSessionRow, SessionIn, SessionOut, SessionState
from sluicegate.services.races.processor import RaceProcessor, log_name, session_channel, skip_lines

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.clock import Clock
    from sluicegate.engines.broker import Broker
    from sluicegate.engines.log import LogHead, SessionLog
    from sluicegate.engines.objects import ObjectStore
    from sluicegate.engines.store import Store
    from sluicegate.engines.store.leases import Leases
    from sluicegate.observability.metrics import Metrics
    from sluicegate.security.identity import Identity
    from sluicegate.services.processing import Lease

__all__ = ["RaceConfig", "RaceService", "point_line"]

log = logging.getLogger("sluicegate.races")

#: Streams whose open session a node remembers.
STREAM_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class RaceConfig:
    """Options of the race service (from settings)."""

    idle_seconds: float = 30.0
    zstd_level: int = 3
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    close_wait_seconds: float = 10.0
    max_buffer_bytes: int = 64 * 1024 * 1024


def _out(row: RaceSessionRow, head: LogHead | None = None) -> SessionOut:
    points = max(head.total, row.archived_points) if head is not None else row.archived_points
    return SessionOut(
        id=row.id,
        stream=row.stream,
        metadata=row.metadata_,
        state=SessionState(row.state),
        data_points=points,
        bytes=max(head.bytes, row.archived_bytes) if head is not None else row.archived_bytes,
        spooled_points=points - row.archived_points,
        archived_keys=list(row.archived_keys),
        created_at=row.created_at,
        closed_at=row.closed_at,
        last_error=row.last_error,
        failed_attempts=row.failed_attempts,
    )


class RaceService:
    """Race sessions over the database (state), a session log (points), the object store
    (archives) and the broker (notices between nodes).

    Args:
        store: the database.
        objects: where archives go.
        session_log: where points are appended.
        broker: carries the processors' notices to requests waiting on other nodes.
        leases: this process's leases (one processor per session).
        clock: time for idle detection, backoff and timestamps.
        config: the service's options.
        metrics: the app's metrics.
    """

    name = "races"

    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        session_log: SessionLog,
        broker: Broker,
        leases: Leases,
        clock: Clock,
        config: RaceConfig,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.objects = objects
        self.log = session_log
        self.broker = broker
        self.clock = clock
        self.config = config
        self.metrics = metrics
        self.leases = leases
        self.processors = Processors(
            "races", leases, clock, candidates=self._candidates, run=self._process, fence=session_log.shared
        )
        self.buffered: dict[str, int] = {}  # points waiting for an archive, by session processed here
        self._streams: dict[str, str] = {}  # stream -> its open session (this node's memory of the database)

    # -- life --------------------------------------------------------------------------

    async def open(self) -> None:
        """Start processing: the sessions this node opens, and any whose processor stopped."""
        await self.processors.open()

    async def close(self) -> None:
        """Stop processing here (another node, or the next start, takes over)."""
        await self.processors.close()

    async def check(self) -> None:
        return None

    async def _candidates(self, limit: int) -> list[str]:
        async with self.store.session() as db:
            found = await db.scalars(
                select(RaceSessionRow.id)
                .where(
                    RaceSessionRow.state != SessionState.CLOSED.value,
                    RaceSessionRow.log == self.log.identity,
                    self.leases.free("races", RaceSessionRow.id),
                )
                .limit(limit)
            )
            return list(found.all())

    async def _process(self, lease: Lease) -> None:
        async with self.store.session() as db:
            row = await db.get(RaceSessionRow, lease.key)
        if row is None or row.state == SessionState.CLOSED.value or row.log != self.log.identity:
            return  # nothing to do, or its points are in a log this node does not reach
        if row.archived_points or row.cut_seq is not None:
            log.info("race session %s: processing from point %d", row.id, row.archived_points)
        await RaceProcessor(self, lease, row).run()

    def set_spooled_gauge(self) -> None:
        self.metrics.race_spooled_points.set(sum(self.buffered.values()))

    async def save_failure(self, session_id: str, reason: str, attempts: int) -> None:
        """Record why the last archive attempt failed."""
        async with self.store.session() as db:
            await db.execute(
                update(RaceSessionRow)
                .where(RaceSessionRow.id == session_id)
                .values(last_error=reason, failed_attempts=attempts)
            )

    async def notify(self, tenant: int, session_id: str, body: dict[str, Any]) -> None:
        """Tell whoever waits on a session (on any node) that it moved on."""
        await self.broker.publish(session_channel(tenant, session_id), orjson.dumps(body))

    # -- sessions ----------------------------------------------------------------------

    async def _row(self, identity: Identity, session_id: str) -> RaceSessionRow:
        async with self.store.session() as db:
            row = await db.get(RaceSessionRow, session_id)
        return owned_by(identity, row, "Race session not found")

    async def create(self, identity: Identity, body: SessionIn) -> SessionOut:
        """Open the session of a stream.

        Raises:
            APIError: 409 when the stream already has an open session.
        """
        session_id = uuid.uuid4().hex
        now = self.clock.now()
        await self.log.create(log_name(session_id))
        row = RaceSessionRow(
            id=session_id,
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
            log=self.log.identity,
        )
        epoch = await self.leases.acquire("races", session_id)  # a new id: nobody else holds it
        try:
            async with self.store.session() as db:
                db.add(row)
        except StoreConflict:
            await self.leases.forget("races", session_id)
            await self.log.delete(log_name(session_id))
            raise APIError.already_exists("A session is already open for this stream", stream=body.stream) from None
        self._streams[body.stream] = session_id
        if epoch is not None:
            self.processors.adopt(session_id, epoch)
        return _out(row, await self.log.head(log_name(session_id)))

    async def describe(self, identity: Identity, session_id: str) -> SessionOut:
        """A session's state, counts and archives.

        Raises:
            APIError: 404 for an unknown session or another tenant's.
        """
        row = await self._row(identity, session_id)
        return _out(row, await self._head(row))

    async def _head(self, row: RaceSessionRow) -> LogHead | None:
        if row.state == SessionState.CLOSED.value or row.log != self.log.identity:
            return None
        try:
            return await self.log.head(log_name(row.id))
        except LogNotFound:
            return None

    async def close_session(self, identity: Identity, session_id: str) -> tuple[SessionOut, bool]:
        """Stop accepting points, archive what the log holds, and close.

        Returns:
            The session, and whether it is fully archived (else it keeps retrying).

        Raises:
            APIError: 404 for an unknown session or another tenant's.
        """
        row = await self._row(identity, session_id)
        if row.state == SessionState.CLOSED.value:
            return _out(row), True
        if row.log is None:  # an earlier version's: its spool is not read by this one
            async with self.store.session() as db:
                await db.execute(
                    update(RaceSessionRow)
                    .where(RaceSessionRow.id == row.id)
                    .values(state=SessionState.CLOSED.value, closed_at=row.closed_at or self.clock.now())
                )
            self._streams.pop(row.stream, None)
            return _out(await self._row(identity, session_id)), True
        _same_log(row.log, self.log.identity)
        async with wakeups(self.broker, session_channel(row.tenant, row.id)) as wake:
            if row.state == SessionState.OPEN.value:
                async with self.store.session() as db:
                    await db.execute(
                        update(RaceSessionRow)
                        .where(RaceSessionRow.id == row.id, RaceSessionRow.state == SessionState.OPEN.value)
                        .values(state=SessionState.CLOSING.value, closed_at=self.clock.now())
                    )
                self._streams.pop(row.stream, None)
            with contextlib.suppress(LogNotFound):  # deleted: archived already
                await self.log.set_state(log_name(row.id), LogState.SEALED)  # no node takes a point now
            await self.processors.ensure(row.id)  # if its holder is gone, archive it here

            async def closed() -> RaceSessionRow | None:
                found = await self._row(identity, session_id)
                return found if found.state == SessionState.CLOSED.value else None

            done = await wait_until(closed, wake, self.config.close_wait_seconds)
        if done is not None:
            return _out(done), True
        row = await self._row(identity, session_id)
        return _out(row, await self._head(row)), row.state == SessionState.CLOSED.value

    # -- ingest ------------------------------------------------------------------------

    async def _open_session(self, stream: str) -> str:
        """The open session of ``stream``, from this node's memory or the database.

        Raises:
            APIError: 400 ``No session present for the stream ID``; 503 when the session's
                points are in a log this node does not reach.
        """
        async with self.store.session() as db:
            found = (
                await db.execute(
                    select(RaceSessionRow.id, RaceSessionRow.log).where(
                        RaceSessionRow.stream == stream, RaceSessionRow.state == SessionState.OPEN.value
                    )
                )
            ).first()
        if found is None:
            raise APIError.invalid_argument("No session present for the stream ID")
        session_id, session_log = found
        _same_log(session_log, self.log.identity)
        if len(self._streams) >= STREAM_CACHE_SIZE:
            self._streams.clear()
        self._streams[stream] = session_id
        return str(session_id)

    async def ingest(self, stream: str, line: bytes) -> int:
        """Make one point of ``stream`` durable, through whichever node this is.

        Returns:
            The session's number of acknowledged points up to this one, in the log's
            order (points acknowledged together with it on other connections may follow).

        Raises:
            APIError: 400 ``No session present for the stream ID``; 500 ``Failed to set up
                stream handler`` when the point cannot be made durable; 503 when the log
                cannot be reached.
        """
        session_id = self._streams.get(stream) or await self._open_session(stream)
        for attempt in (1, 2):
            try:
                appended = await self.log.append(log_name(session_id), line, 1)
                break
            except (LogClosed, LogNotFound):
                # Closed (on some node) since this node last looked: the stream may have a new session.
                self._streams.pop(stream, None)
                if attempt == 2:
                    raise APIError.invalid_argument("No session present for the stream ID") from None
                session_id = await self._open_session(stream)
            except LogUnavailable:
                raise APIError.unavailable("The session log is unavailable; retry shortly") from None
            except LogError as exc:
                log.error("race session %s: %s", session_id, exc)
                raise APIError.internal("Failed to set up stream handler") from None
        self.metrics.race_points.inc()
        return appended.first + 1  # this point is the session's n-th, in the log's order

    # -- read back ---------------------------------------------------------------------

    async def read(self, identity: Identity, session_id: str) -> AsyncIterator[bytes]:
        """Every point of a session as JSON Lines, archived then still in its log, in order.

        An archive written while this runs is picked up: what the log no longer holds is
        in an archive the session's row names by then.

        Raises:
            APIError: 404 for an unknown session or another tenant's.
        """
        row = await self._row(identity, session_id)
        cursor = _Cursor()
        while True:
            async for chunk in self._archives(row, cursor):
                yield chunk
            if row.state == SessionState.CLOSED.value or row.log != self.log.identity:
                return
            async for chunk in self._logged(row, cursor):
                yield chunk
            if cursor.complete:
                return
            row = await self._row(identity, session_id)

    async def _archives(self, row: RaceSessionRow, cursor: _Cursor) -> AsyncIterator[bytes]:
        """The archives ``cursor`` has not sent, without the points it sent from the log."""
        skip = cursor.sent - cursor.base
        for key in row.archived_keys[cursor.keys :]:
            async for chunk in self._read_archive(key):
                if skip:
                    chunk, skip = _drop_lines(chunk, skip)
                if chunk:
                    yield chunk
        cursor.keys, cursor.base = len(row.archived_keys), row.archived_points
        cursor.sent = max(cursor.sent, cursor.base)

    async def _logged(self, row: RaceSessionRow, cursor: _Cursor) -> AsyncIterator[bytes]:
        """What the log holds after the points sent; ``cursor.complete`` says whether it
        all was there (else some were archived meanwhile)."""
        cursor.complete = False
        try:
            async with contextlib.aclosing(self.log.read(log_name(row.id), start=cursor.sent)) as pages:
                async for entries in pages:
                    for entry in entries:
                        if entry.mark is not None or entry.end <= cursor.sent:
                            continue
                        if entry.first > cursor.sent:  # archived meanwhile: the row names it now
                            return
                        skip = cursor.sent - entry.first
                        yield skip_lines(entry.data, skip) if skip else entry.data
                        cursor.sent = entry.end
        except LogNotFound:
            return  # archived and deleted meanwhile
        cursor.complete = True

    async def _read_archive(self, key: str) -> AsyncIterator[bytes]:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        async for chunk in self.objects.stream(key):
            data = await asyncio.to_thread(decompressor.decompress, chunk)
            if data:
                yield data


def _same_log(session_log: str | None, ours: str) -> None:
    """Refuse to work on a session whose points are in a log this node does not reach.

    Raises:
        APIError: 503, naming the setting.
    """
    if session_log != ours:
        raise APIError.unavailable(
            "This race session keeps its points in another session log than this node's "
            "(SLUICEGATE_LOG_URL differs between nodes, or an earlier version opened it)"
        )


@dataclass(slots=True)
class _Cursor:
    """How far a read-back got: archives sent, where the next one starts, points sent."""

    keys: int = 0
    base: int = 0
    sent: int = 0
    complete: bool = False


def _drop_lines(chunk: bytes, count: int) -> tuple[bytes, int]:
    """``chunk`` without its first ``count`` lines, and how many are left to drop after it."""
    found = chunk.count(b"\n")
    if found <= count:
        return b"", count - found
    return skip_lines(chunk, count), 0


def point_line(received_at: str, kind: Any, platform: Any, data: Any) -> bytes:
    """One archive line: ``received_at``, ``type``, ``platform``, ``data``."""
    point = {"received_at": received_at, "type": kind, "platform": platform, "data": data}
    return orjson.dumps(point, option=orjson.OPT_APPEND_NEWLINE)
