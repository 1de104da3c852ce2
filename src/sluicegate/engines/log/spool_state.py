"""The spool log's memory: one loaded log's counters, the batch being assembled, followers.

In one process the memory is authoritative: the files are written from it and read back
into it only when a log is first used (:func:`.spool_files.load`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import OrderedDict
from typing import TYPE_CHECKING

from sluicegate.engines.log import LogEntry, LogError, LogHead, LogNotFound, LogState, LogUnavailable
from sluicegate.engines.log.frames import entry_header, mark_frame
from sluicegate.engines.log.spool_files import Point, Segment

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from sluicegate.engines.log.spool_files import Loaded

__all__ = ["Batch", "Follower", "Group", "Log", "OpenFiles"]

#: Bytes of records a follower may have waiting in memory; past it, it drops them and
#: reads the files again from where it is (a slow follower never grows memory).
FOLLOWER_BACKLOG = 16 << 20


class Group:
    """Consecutive appends with the same ``meta``: one entry of a batch."""

    __slots__ = ("count", "meta", "parts", "size")

    def __init__(self, meta: bytes, records: bytes, count: int) -> None:
        self.meta = meta
        self.parts = [records]
        self.count = count
        self.size = len(records)


class Batch:
    """What arrived while the previous group commit was being written: written next, at once.

    Attributes:
        items: entries (groups of records, or the states of marks), in order.
        waiters: one per append; each is given the index of the batch's first record.
        marks: one per state change: its future, and the records and bytes before it.
        count, size: records and bytes of the batch.
        state: the state its last mark sets (``None`` if it has none).
        group: the last item, while it is a group later appends with its meta may join.
        done: made for whoever waits for the batch to land or fail.
    """

    __slots__ = ("count", "done", "group", "items", "marks", "size", "state", "waiters")

    def __init__(self) -> None:
        self.items: list[Group | LogState] = []
        self.waiters: list[asyncio.Future[int]] = []
        self.marks: list[tuple[asyncio.Future[LogHead], int, int, LogState]] = []
        self.count = 0
        self.size = 0
        self.state: LogState | None = None
        self.group: Group | None = None
        self.done: asyncio.Future[None] | None = None

    def fail(self, error: Callable[[], LogError]) -> None:
        """Refuse every append and state change of the batch."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error())
        for mark, _, _, _ in self.marks:
            if not mark.done():
                mark.set_exception(error())
        self.finish()

    def finish(self) -> None:
        """Tell whoever waits for the batch that it is over."""
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def frames(self, stamp: int) -> tuple[list[bytes], list[bytes]]:
        """The batch's bytes, as buffers to write one after the other (records are not copied),
        and each item's header (for a mark, its whole frame)."""
        buffers: list[bytes] = []
        heads: list[bytes] = []
        for item in self.items:
            if isinstance(item, Group):
                head = entry_header(item.count, item.size, stamp, item.meta)
                buffers.append(head)
                buffers.extend(item.parts)
            else:
                head = mark_frame(item, stamp)
                buffers.append(head)
            heads.append(head)
        return buffers, heads

    def entries(self, heads: list[bytes], stamp: int, base: int, seq: int, offset: int) -> list[LogEntry]:
        """The entries of the batch once it landed at ``offset`` of segment ``seq``, its first
        record at index ``base`` (``heads``: from :meth:`frames`)."""
        entries: list[LogEntry] = []
        at = stamp / 1000
        index = base
        for item, head in zip(self.items, heads, strict=True):
            offset += len(head)
            if isinstance(item, Group):
                offset += item.size
                end = index + item.count
                data = item.parts[0] if len(item.parts) == 1 else b"".join(item.parts)
                entries.append(LogEntry(index, item.count, data, item.meta, at, f"{seq}:{offset}:{end}"))
                index = end
            else:
                entries.append(LogEntry(index, 0, b"", b"", at, f"{seq}:{offset}:{index}", item))
        return entries


class Follower:
    """The entries committed since a follower last looked, bounded by :data:`FOLLOWER_BACKLOG`."""

    __slots__ = ("backlog", "behind", "entries", "wake")

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.backlog = 0
        self.behind = False
        self.wake = asyncio.Event()

    def take(self) -> list[LogEntry]:
        """What is waiting, now no longer waiting."""
        entries, self.entries, self.backlog = self.entries, [], 0
        return entries


class Log:
    """One log of this process: where its files are and what they hold.

    ``state`` is what appends are checked against: a state change moves it at once,
    while ``durable_state`` moves when the mark is written.
    """

    def __init__(self, name: str, path: Path, loaded: Loaded, *, fsync: bool) -> None:
        self.name = name
        self.path = path
        #: Whether its writes are forced to disk.
        self.fsync = fsync
        self.segments = loaded.segments
        #: Bytes of the last segment written so far (appends go there).
        self.size = loaded.size
        self.trim = loaded.trim
        #: The trim point on disk; segments wholly before ``trim`` not deleted yet; the
        #: lock of the trim file's writer (not the files' lock: appends go on meanwhile).
        self.trim_written = loaded.trim
        self.dropped: list[Segment] = []
        self.trim_lock = asyncio.Lock()
        self.total = loaded.total
        self.bytes = loaded.bytes
        self.appended_ms = loaded.appended_ms
        self.state = loaded.state
        self.durable_state = loaded.state
        self.seal_at = loaded.seal_at
        self.fd: int | None = None
        #: Bytes past ``size`` that a failed write left and no truncation removed yet.
        self.torn = False
        self.batch: Batch | None = None
        self.inflight: Batch | None = None
        self.committer: asyncio.Task[None] | None = None
        #: Held while the files change: a group commit, a new segment, a trim.
        self.lock = asyncio.Lock()
        self.followers: set[Follower] = set()
        self.deleted = False
        self.ended: type[LogError] | None = None

    def landed(self, batch: Batch, stamp: int, size: int, heads: list[bytes]) -> None:
        """Count a batch written at the end of the last segment (``size`` bytes, appended at
        ``stamp``), answer its appends and marks, and hand its entries to followers."""
        base, before, start, appended = self.total, self.bytes, self.size, self.appended_ms
        seq = self.segments[-1].seq
        self.size += size
        self.total += batch.count
        self.bytes += batch.size
        if batch.count or batch.size:
            self.appended_ms = stamp
        if batch.state is not None:
            self.durable_state = batch.state
            if batch.state is LogState.SEALED:  # its mark is the batch's last frame
                self.seal_at = Point(seq, self.size - len(heads[-1]), self.total)
        for waiter in batch.waiters:
            if not waiter.done():
                waiter.set_result(base)
        for landed, records, nbytes, state in batch.marks:  # with the records and bytes before it
            if not landed.done():
                at = stamp if records or nbytes else appended
                landed.set_result(LogHead(base + records, before + nbytes, state, None if at is None else at / 1000))
        if self.followers:
            self.deliver(batch.entries(heads, stamp, base, seq, start), batch.size)
        batch.finish()

    def refuse(self, batch: Batch, message: str) -> None:
        """Fail a batch that could not be written. If it held marks, the state goes back to
        what is written, and the batch queued behind it (accepted under them) fails too."""
        batch.fail(lambda: LogError(message))
        if batch.state is not None:
            later, self.batch = self.batch, None
            if later is not None:
                later.fail(lambda: LogError(message))
            self.state = self.durable_state

    def head(self) -> LogHead:
        """The counters of what is written, and the state appends are checked against."""
        stamp = None if self.appended_ms is None else self.appended_ms / 1000
        return LogHead(self.total, self.bytes, self.state, stamp)

    def deliver(self, entries: list[LogEntry], size: int) -> None:
        """Hand a group commit's entries to every follower (``size``: their records' bytes)."""
        for follower in self.followers:
            if follower.behind:
                continue
            follower.entries.extend(entries)
            follower.backlog += size
            if follower.backlog > FOLLOWER_BACKLOG:
                follower.behind = True
                follower.entries = []
            follower.wake.set()

    def end(self, error: type[LogError]) -> None:
        """Make every follower raise ``error`` (the log is deleted, or the spool closed)."""
        self.ended = error
        for follower in self.followers:
            follower.wake.set()

    def error(self) -> LogError:
        """What a follower of an ended log raises."""
        if self.ended is LogNotFound:
            return LogNotFound(f"no log named {self.name}")
        return LogUnavailable("the spool was closed")


class OpenFiles:
    """Logs whose last segment is open for appends, least recently written first; past
    ``limit``, the oldest idle ones close theirs (a process may hold thousands of logs)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._logs: OrderedDict[Log, None] = OrderedDict()

    def keep(self, log: Log) -> None:
        """Note that ``log`` has just written."""
        logs = self._logs
        logs[log] = None
        logs.move_to_end(log)
        if len(logs) > self.limit:
            for old in list(itertools.islice(logs, len(logs) - self.limit)):
                if old.committer is None and not old.lock.locked():
                    self.close(old)

    def close(self, log: Log) -> None:
        """Close the file of ``log`` (the log's lock is held, or the log is idle)."""
        self._logs.pop(log, None)
        if log.fd is not None:
            os.close(log.fd)
            log.fd = None
