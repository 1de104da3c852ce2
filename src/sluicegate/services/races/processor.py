"""The processor of one race session: follows its log, archives after inactivity, closes it.

It runs on the node that holds the session's lease (:mod:`sluicegate.services.processing`)
and holds, in memory, the points of the log not archived yet. After ``idle_seconds``
without a new point (or once ``max_buffer_bytes`` are waiting), they become archive
number *seq*: first the cut is recorded in the session's row (``cut_seq``, ``cut_end``:
which points archive *seq* holds), then the archive is compressed and written, then
the row records it (``archived_keys``, ``archived_points``) and the log is trimmed. A
processor that takes over finds a recorded cut and writes the same archive again, the
same bytes under the same key, so a takeover mid-archive archives nothing twice; each
step is a compare-and-set on the row, so a processor that lost its lease without
knowing it changes nothing.

Failed writes (object store, database) are retried with exponential backoff for as long
as it takes; ``last_error`` and ``failed_attempts`` say so meanwhile. When the log's
seal mark arrives (the session was closed, on any node), everything before it is
archived, the log is deleted and the session is ``closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zstandard
from sqlalchemy import update

from sluicegate.edge import api_error
from sluicegate.engines.log import LogError, LogNotFound, LogState
from sluicegate.engines.objects import ObjectStoreUnavailable
from sluicegate.engines.store import StoreUnavailable
from sluicegate.services.processing import follow_into
from sluicegate.services.races.models import RaceSessionRow, SessionState

if TYPE_CHECKING:
    from sluicegate.engines.log import LogEntry
    from sluicegate.services.processing import Lease
    from sluicegate.services.races.service import RaceService

__all__ = ["RaceProcessor", "log_name", "session_channel"]

log = logging.getLogger("sluicegate.races")


def log_name(session_id: str) -> str:
    """The name of a race session's log."""
    return f"races/{session_id}"


def session_channel(tenant: int, session_id: str) -> str:
    """The broker channel of a session's notices (``archived``, ``closed``)."""
    return f"races/t{tenant}/{session_id}"


class SessionMoved(Exception):
    """The session's row changed under this processor: another one holds it now."""


def skip_lines(data: bytes, count: int) -> bytes:
    """``data`` without its first ``count`` lines."""
    cut = 0
    for _ in range(count):
        cut = data.index(b"\n", cut) + 1
    return data[cut:]


@dataclass
class Pending:
    """Points of the log not archived yet, in order."""

    start: int  # the index of the first
    parts: list[bytes] = field(default_factory=list)
    count: int = 0
    size: int = 0
    position: str | None = None  # of the last entry taken

    @property
    def end(self) -> int:
        return self.start + self.count

    def take(self, entry: LogEntry) -> None:
        """Add an entry's points that are not archived already."""
        if entry.end <= self.end:
            return
        data = entry.data if entry.first >= self.end else skip_lines(entry.data, self.end - entry.first)
        self.parts.append(data)
        self.count += entry.end - max(entry.first, self.end)
        self.size += len(data)
        self.position = entry.position

    def clear(self) -> None:
        self.start, self.parts, self.count, self.size = self.end, [], 0, 0


_IDLE = object()


class RaceProcessor:
    """Processes one race session while this process holds its lease."""

    def __init__(self, service: RaceService, lease: Lease, row: RaceSessionRow) -> None:
        self.service = service
        self.lease = lease
        self.id = row.id
        self.tenant = row.tenant
        self.stream = row.stream
        self.name = log_name(row.id)
        self.state = SessionState(row.state)
        self.archived_keys = list(row.archived_keys)
        self.archived_points = row.archived_points
        self.archived_bytes = row.archived_bytes
        self.cut = (row.cut_seq, row.cut_end) if row.cut_seq is not None and row.cut_end is not None else None
        self.pending = Pending(row.archived_points)
        self.last_data = 0.0  # when the last point was appended (on any node)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._watcher: asyncio.Task[None] | None = None

    def key(self, seq: int) -> str:
        return f"races/{self.stream}/{self.id}/{seq:06d}.jsonl.zst"

    @property
    def next_seq(self) -> int:
        return len(self.archived_keys) + 1

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Archive until the session is closed (returns), or until cancelled."""
        service = self.service
        if self.state == SessionState.CLOSING:
            with contextlib.suppress(LogNotFound):  # a close that stopped between its two steps
                await service.log.set_state(self.name, LogState.SEALED)
        follower = asyncio.create_task(follow_into(self._queue, self.service.log, self.name, self.lease))
        try:
            while True:
                item = await self._queue.get()
                if item is _IDLE:
                    if self._now() - self.last_data >= service.config.idle_seconds:
                        await self._flush()
                    continue
                if isinstance(item, BaseException):
                    if isinstance(item, LogNotFound) and self.state == SessionState.CLOSING:
                        await self._closed()  # deleted after the last archive, before the row said so
                        return
                    raise item
                if await self._take(item):
                    await self._flush()
                    await self._closed()
                    return
        finally:
            follower.cancel()
            if self._watcher is not None:
                self._watcher.cancel()
            await asyncio.gather(follower, *(t for t in (self._watcher,) if t), return_exceptions=True)
            service.buffered.pop(self.id, None)
            service.set_spooled_gauge()

    async def _take(self, entries: list[LogEntry]) -> bool:
        """Buffer new points; returns whether the seal was reached."""
        if self.cut is not None:  # a takeover: first the archive the last holder had cut
            await self._finish_cut(entries)
        for entry in entries:
            if entry.mark == LogState.SEALED:
                return True
            if entry.mark is None and entry.count:
                self.pending.take(entry)
                self.last_data = max(self.last_data, entry.appended_at)
        self.service.buffered[self.id] = self.pending.count
        self.service.set_spooled_gauge()
        if self.pending.size >= self.service.config.max_buffer_bytes:
            await self._flush()
        elif self.pending.count and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch())
        return False

    def _now(self) -> float:
        return self.service.clock.now().timestamp()

    async def _watch(self) -> None:
        """Wake the loop once no point has been appended for ``idle_seconds`` (by the
        appends' own times, so that the wait does not depend on when they reached here)."""
        clock, idle = self.service.clock, self.service.config.idle_seconds
        while True:
            remaining = self.last_data + idle - self._now()
            if remaining <= 0:
                await self._queue.put(_IDLE)
                return
            await clock.sleep(remaining)

    # -- archiving -------------------------------------------------------------------------

    async def _finish_cut(self, entries: list[LogEntry]) -> None:
        """Take the points of the recorded cut from the first entries, and archive them."""
        assert self.cut is not None  # noqa: S101 -- checked by the caller
        seq, end = self.cut
        for entry in entries:
            if entry.mark is None and entry.count and self.pending.end < end:
                self.pending.take(entry)
        if self.pending.end < end:
            return  # more entries to come
        extra = self.pending.end - end
        data = b"".join(self.pending.parts)
        if extra:  # the cut ends inside the last entry taken: keep the rest for later
            lines = data.splitlines(keepends=True)
            data, rest = b"".join(lines[: len(lines) - extra]), b"".join(lines[len(lines) - extra :])
        else:
            rest = b""
        position = self.pending.position if not extra else None
        self.cut = None
        await self._archive(seq, self.pending.start, end, data, position)
        self.pending = Pending(end, [rest] if rest else [], extra, len(rest), None)

    async def _flush(self) -> None:
        """Archive every buffered point as the next archive."""
        pending = self.pending
        if not pending.count or self.cut is not None:  # a cut being finished comes first
            return
        seq, start, end = self.next_seq, pending.start, pending.end
        async with self.service.store.session() as db:
            cut = await db.execute(
                update(RaceSessionRow)
                .where(
                    RaceSessionRow.id == self.id,
                    RaceSessionRow.cut_seq.is_(None),
                    RaceSessionRow.archived_points == start,
                )
                .values(cut_seq=seq, cut_end=end)
            )
            if cut.rowcount != 1:  # type: ignore[attr-defined]
                raise SessionMoved(self.id)
        data = b"".join(pending.parts)
        position = pending.position
        pending.clear()
        await self._archive(seq, start, end, data, position)

    async def _archive(self, seq: int, start: int, end: int, data: bytes, position: str | None) -> None:
        service = self.service
        key = self.key(seq)
        delay = service.config.retry_initial_seconds
        failures = 0
        while True:
            try:
                compressed = await asyncio.to_thread(_compress, data, service.config.zstd_level)
                await service.objects.put(key, compressed)
                await self._record(seq, key, end, len(data))
                break
            except (ObjectStoreUnavailable, StoreUnavailable, OSError) as exc:
                failures += 1
                mapped = api_error(exc)
                reason = mapped.message if mapped is not None else type(exc).__name__
                service.metrics.race_archive_failures.inc()
                log.warning("archiving %s failed (attempt %d), retrying in %.1fs: %s", key, failures, delay, exc)
                with contextlib.suppress(StoreUnavailable):
                    await service.save_failure(self.id, reason, failures)
                await service.clock.sleep(delay)
                delay = min(delay * 2, service.config.retry_max_seconds)
        self.archived_keys.append(key)
        self.archived_points = end
        self.archived_bytes += len(data)
        service.metrics.race_archives.inc()
        service.metrics.race_archive_bytes.inc(len(compressed))
        service.buffered[self.id] = self.pending.count
        service.set_spooled_gauge()
        log.info("archived %d points of race session %s as %s", end - start, self.id, key)
        if position is not None:
            try:
                await service.log.trim(self.name, position)
            except LogError as exc:  # kept a little longer: the next archive trims it
                log.warning("could not trim the log of race session %s: %s", self.id, exc)
        with contextlib.suppress(Exception):  # a notice: the database is the truth
            await service.notify(self.tenant, self.id, {"type": "archived", "key": key, "archivedPoints": end})

    async def _record(self, seq: int, key: str, end: int, size: int) -> None:
        async with self.service.store.session() as db:
            row = await db.get(RaceSessionRow, self.id, with_for_update=True)
            if row is None or row.cut_seq != seq:
                raise SessionMoved(self.id)
            row.archived_keys = [*row.archived_keys, key]
            row.archived_points = end
            row.archived_bytes = row.archived_bytes + size
            row.cut_seq = row.cut_end = None
            row.last_error, row.failed_attempts = None, 0

    async def _closed(self) -> None:
        service = self.service
        with contextlib.suppress(LogNotFound):
            await service.log.delete(self.name)
        async with service.store.session() as db:
            await db.execute(
                update(RaceSessionRow)
                .where(RaceSessionRow.id == self.id, RaceSessionRow.state != SessionState.CLOSED.value)
                .values(state=SessionState.CLOSED.value)
            )
        self.state = SessionState.CLOSED
        log.info("race session %s closed: %d points in %d archives", self.id, self.archived_points, self.next_seq - 1)
        with contextlib.suppress(Exception):
            await service.notify(self.tenant, self.id, {"type": "closed"})


def _compress(data: bytes, level: int) -> bytes:
    # A compressor per call: zstandard's objects must not be shared between threads.
    return zstandard.ZstdCompressor(level=level).compress(data)
