"""The spool log: session logs as files in one process's data folder, with group commits.

Layout under the folder (``<data dir>/log``; folders 0o700, files 0o600)::

    id                      a random identity, made once: ``identity`` is ``spool:<id>``
    lock                    flock'ed from open() to close(): the folder is one process's
    logs/<name>+log/        one folder per log; a name's "/" make nested folders, and
                            "+log" (no name holds "+") keeps "a" and "a/b" apart
        <seq>_<total>_<bytes>_<appended ms|none>_<state>.seg
                            segments of frames (:mod:`.frames`), appended to with
                            O_APPEND; the name holds the log's counters and state
                            when the segment was begun
        trim                "<seq> <offset> <index>": the first byte still retained
    trash/                  logs being created (renamed into place whole) or deleted
                            (renamed away at once, then removed)

A log's counters and state are its last segment's name plus what its frames add, so a
restart knows them even when every entry was trimmed. A new segment begins past
``segment_bytes`` (64 MiB), and when a trim covers everything written and the last
segment holds 8 MiB or more (the old segments are then deleted whole); any other trim
is only recorded in ``trim``: data is never rewritten. The trim file is written outside
the lock that appends wait for, and trims that come while one is being written are
written together. The seal's mark is never trimmed. A position is ``<seq>:<offset>:<index>``:
the segment, the byte after the entry, and the index after its records. A log is loaded
on first use: the frames of its last segment are decoded and a torn tail (a crash
mid-write) is cut off.

Acknowledgement: an append returns once the group commit that holds it is written (one
``writev`` of the headers and the appenders' own bytes, nothing copied) and, with
``fsync`` on for its log, ``fdatasync``'ed (a new segment, a rename, a trim point are
made durable with a ``fsync`` of their folder): it survives a power loss. With ``fsync``
off it survives the death of the process, not of the machine.

Group commit: appends to a log queue in a batch while the previous write is in flight
(in a worker thread), and one task per log writes each batch whole, like the spool of
the spool of earlier versions. Consecutive appends with the same ``meta``
share one entry. A write that fails (a full disk, an I/O error) is cut back to where it
began, every append of its batch raises :class:`LogError`, and the next append tries again.

State: one process holds the folder, so the state in memory is authoritative.
:meth:`SpoolLog.set_state` changes it at once (later appends are refused) and queues its
mark after the appends already queued. If the mark's write fails, the state goes back to
what is written, and the batch queued behind it (accepted under the new state) fails too.

Followers read the files up to the end when they start, then take each group commit's
entries from memory as it lands: no re-reading of what this process just wrote. A
follower more than 16 MiB behind drops what waits for it and reads the files again from
where it was.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import TYPE_CHECKING

from sluicegate.engines.locks import NameLocks
from sluicegate.engines.log import (
    Appended,
    LogClosed,
    LogEntry,
    LogEntryTooLarge,
    LogError,
    LogHead,
    LogNotFound,
    LogState,
    LogUnavailable,
)
from sluicegate.engines.log import spool_files as files
from sluicegate.engines.log.frames import check_meta
from sluicegate.engines.log.spool_read import scan
from sluicegate.engines.log.spool_state import Batch, Follower, Group, Log, OpenFiles
from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping
    from pathlib import Path

    from sluicegate.clock import Clock

__all__ = ["MAX_APPEND", "SEGMENT_BYTES", "SpoolLog"]

#: Where a new segment begins.
SEGMENT_BYTES = 64 << 20
#: A trim of everything starts a new segment (to give the disk back) once the last one
#: holds this much; below it, the trimmed bytes stay until the segment fills.
ROLL_TRIMMED_BYTES = 8 << 20
#: The largest append.
MAX_APPEND = 64 << 20
#: Logs that keep a file open for appends (the least recently written idle ones close).
OPEN_FILES = 128

_ONE_PROCESS = (
    "SLUICEGATE_LOG_URL: the spool (spool://) belongs to one process, and another one (or another "
    "spool of this process) holds its folder; several workers or servers need "
    "SLUICEGATE_LOG_URL=redis://... or nats://..."
)


def _error(what: str, exc: OSError) -> LogError:
    """An engine error for a failed file operation, without the file's path."""
    return LogError(f"{what}: {exc.strerror or type(exc).__name__}")


class SpoolLog:
    """Session logs in files of a folder of this process (``spool://``).

    Args:
        folder: the spool's folder (created if missing).
        fsync: ``fdatasync`` each group commit before acknowledging it; a mapping decides by
            the start of a log's name (the longest that matches: ``{"races/": False}``), and
            any other log is forced.
        clock: timestamps of appends.
        segment_bytes: where a new segment begins.
        roll_trimmed: how full the last segment must be for a trim of everything to start
            a new one (and delete it).
    """

    name = "log"

    def __init__(
        self,
        folder: Path,
        *,
        fsync: bool | Mapping[str, bool],
        clock: Clock,
        segment_bytes: int = SEGMENT_BYTES,
        roll_trimmed: int = ROLL_TRIMMED_BYTES,
    ) -> None:
        self._folder = folder
        self._root = folder / "logs"
        self._trash = folder / "trash"
        self._fsync = fsync if isinstance(fsync, bool) else dict(fsync)
        self._clock = clock
        self._segment_bytes = segment_bytes
        self._roll_trimmed = min(roll_trimmed, segment_bytes)
        self._lock_fd: int | None = None
        self._id = ""
        self._logs: dict[str, Log] = {}
        self._guards = NameLocks()
        self._files = OpenFiles(OPEN_FILES)

    @property
    def identity(self) -> str:
        """``spool:<id of the folder>`` (known once opened)."""
        return f"spool:{self._id}"

    @property
    def shared(self) -> bool:
        """Always ``False``: the folder is one process's."""
        return False

    async def open(self) -> None:
        """Take the folder for this process (an exclusive ``flock``) and read its identity.

        Raises:
            ConfigurationError: another process holds the folder, or it cannot be set up.
        """
        if self._lock_fd is not None:
            return
        try:
            self._lock_fd, self._id = await asyncio.to_thread(files.lock_folder, self._folder, self._fsync is not False)
        except BlockingIOError as exc:
            raise ConfigurationError(_ONE_PROCESS) from exc
        except OSError as exc:
            raise ConfigurationError(
                f"SLUICEGATE_LOG_URL: cannot set up the spool in {self._folder}: {exc.strerror or exc}"
            ) from exc

    async def close(self) -> None:
        """Finish the writes in flight, end followers, release the files and the folder."""
        fd, self._lock_fd = self._lock_fd, None
        logs = list(self._logs.values())
        self._logs.clear()
        for log in logs:
            while log.committer is not None:
                await asyncio.wait([log.committer])  # (its appends hear how it went)
            async with log.lock:
                self._files.close(log)
            log.end(LogUnavailable)
        if fd is not None:
            os.close(fd)

    async def check(self) -> None:
        """Return if the spool is open and its folder writable.

        Raises:
            LogUnavailable: the spool is not open.
            LogError: the folder is not writable.
        """
        self._require_open()
        if not await asyncio.to_thread(os.access, self._root, os.W_OK):
            raise LogError("the spool's folder is not writable")

    async def create(self, log: str) -> None:
        """Make an empty, open log; creating one that exists does nothing.

        Raises:
            ValueError: not a log name.
            LogError: the files could not be made.
        """
        if log not in self._logs:
            await self._load(log, create=True)

    async def append(self, log: str, records: bytes, count: int, *, meta: bytes = b"") -> Appended:
        """Append ``count`` records; returns once the group commit holding them is written
        (and, with ``fsync`` on, forced to disk).

        Raises:
            ValueError: ``meta`` a frame cannot carry.
            LogNotFound: no such log.
            LogClosed: the log is paused or sealed; nothing was appended.
            LogEntryTooLarge: more than :data:`MAX_APPEND` bytes.
            LogError: the write failed; nothing of it was kept.
        """
        if meta:  # (nothing to check in b"")
            check_meta(meta)
        entry = self._logs.get(log) or await self._load(log, create=False)
        if entry.state is not LogState.OPEN:
            raise LogClosed(log, entry.state)
        if len(records) > MAX_APPEND:
            raise LogEntryTooLarge(f"an append of {len(records)} bytes is larger than the spool takes ({MAX_APPEND})")
        batch = self._batch(entry)
        first = batch.count
        group = batch.group
        if group is not None and group.meta == meta:
            group.parts.append(records)
            group.count += count
            group.size += len(records)
        else:
            group = batch.group = Group(meta, records, count)
            batch.items.append(group)
        batch.count += count
        batch.size += len(records)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        base = await waiter
        return Appended(base + first, base + batch.count)

    async def set_state(self, log: str, state: LogState) -> LogHead:
        """Change the state at once (appends after this call are checked against it); returns
        once its mark, written after the appends already queued, is durable.

        Raises:
            LogNotFound: no such log.
            LogClosed: the log is sealed and ``state`` is not ``sealed``.
            LogError: the mark could not be written (the state is what it was).
        """
        state = LogState(state)
        entry = await self._get(log)
        while entry.state == state:
            await self._settle(entry)  # a mark of this state may still be on its way
            if entry.deleted:
                raise LogNotFound(f"no log named {log}")
            if entry.state == state:
                return entry.head()
        if entry.state is LogState.SEALED:
            raise LogClosed(log, LogState.SEALED)
        entry.state = state
        batch = self._batch(entry)
        batch.items.append(state)
        batch.group = None
        batch.state = state
        landed: asyncio.Future[LogHead] = asyncio.get_running_loop().create_future()
        batch.marks.append((landed, batch.count, batch.size, state))
        return await landed

    async def head(self, log: str) -> LogHead:
        """The log's counters (of what is written) and state.

        Raises:
            LogNotFound: no such log.
        """
        return (await self._get(log)).head()

    async def read(self, log: str, *, start: int = 0) -> AsyncGenerator[list[LogEntry], None]:
        """The retained entries holding index ``start`` or after, read from the files up to
        what was written when reading began.

        Raises:
            LogNotFound: no such log (or deleted on the way).
            LogError: the files could not be read.
        """
        entry = await self._get(log)
        async for entries in scan(entry, None, entry.segments[-1].seq, entry.size, start):
            yield entries

    async def follow(self, log: str, *, reader: str) -> AsyncGenerator[list[LogEntry], None]:
        """Every retained entry (from the files), then each group commit's entries as it lands
        (from memory), until the seal's mark.

        ``reader`` is not kept: the spool has no readers of its own to forget.

        Raises:
            LogNotFound: no such log, or it was deleted.
            LogUnavailable: the spool was closed.
            LogError: the files could not be read.
        """
        entry = await self._get(log)
        cursor: files.Point | None = None
        while True:
            if entry.ended is not None:
                raise entry.error()
            follower = Follower()
            entry.followers.add(follower)  # with the end read below taken at once: what lands later comes here
            try:
                sealed = entry.durable_state is LogState.SEALED
                async for entries in scan(entry, cursor, entry.segments[-1].seq, entry.size, 0):
                    cursor = files.Point.parse(entries[-1].position)
                    yield entries
                    if entries[-1].mark is LogState.SEALED:
                        return
                if sealed:  # (its mark was not retained: written before marks were kept)
                    return
                while not follower.behind:
                    await follower.wake.wait()
                    follower.wake.clear()
                    if entry.ended is not None:
                        raise entry.error()
                    entries = follower.take()
                    if entries:
                        cursor = files.Point.parse(entries[-1].position)
                        yield entries
                        if entries[-1].mark is LogState.SEALED:
                            return
            finally:
                entry.followers.discard(follower)

    async def trim(self, log: str, position: str) -> None:
        """Forget the entry at ``position`` and all before it (never the seal's mark): whole
        segments are deleted, a point inside one is recorded.

        Raises:
            ValueError: not a position of this log.
            LogNotFound: no such log.
            LogError: the files could not be changed.
        """
        point = files.Point.parse(position)
        entry = await self._get(log)
        async with entry.lock:  # held briefly: appends wait for it
            if entry.deleted:
                raise LogNotFound(f"no log named {log}")
            if entry.seal_at is not None and point[:2] > entry.seal_at[:2]:
                point = entry.seal_at  # the seal's mark stays: a follower of a sealed log always ends
            if point[:2] <= entry.trim[:2]:
                return
            active = entry.segments[-1]
            if point.seq > active.seq or (point.seq == active.seq and point.offset > entry.size):
                raise ValueError(f"{position!r} is not a position of the log {log}")
            try:
                if point.seq == active.seq and point.offset == entry.size and entry.size >= self._roll_trimmed:
                    await self._roll(entry)  # everything, and much of it: a new segment keeps the counters
                    point = files.Point(entry.segments[-1].seq, 0, entry.total)
            except OSError as exc:
                raise _error(f"cannot trim the log {log}", exc) from exc
            entry.trim = point  # readers skip what is before it from now on
            entry.dropped.extend(s for s in entry.segments if s.seq < point.seq)
            entry.segments = [s for s in entry.segments if s.seq >= point.seq]
        await self._persist_trim(entry)

    async def _persist_trim(self, entry: Log) -> None:
        """Write the log's trim point and delete the segments before it, outside the lock that
        appends need; trims that arrive meanwhile are written together, the latest point once.

        Raises:
            LogError: the files could not be changed.
        """
        async with entry.trim_lock:
            point = entry.trim
            if point[:2] <= entry.trim_written[:2] or entry.deleted:
                return  # a trim that came later wrote this one too
            dropped, entry.dropped = entry.dropped, []
            try:
                await asyncio.to_thread(files.write_trim, entry.path, point, dropped, entry.fsync)
            except OSError as exc:
                entry.dropped.extend(dropped)
                raise _error(f"cannot trim the log {entry.name}", exc) from exc
            entry.trim_written = point

    async def delete(self, log: str) -> None:
        """Remove the log's folder; its followers raise :class:`LogNotFound`.

        Raises:
            ValueError: not a log name.
            LogError: the files could not be removed.
        """
        files.check_name(log)
        async with self._guards.hold(log):
            self._require_open()
            entry = self._logs.pop(log, None)
            if entry is not None:
                entry.deleted = True
                queued, entry.batch = entry.batch, None
                if queued is not None:
                    queued.fail(lambda: LogNotFound(f"no log named {log}"))
                async with entry.lock:  # the write in flight ends first
                    self._files.close(entry)
                entry.end(LogNotFound)
            try:
                await asyncio.to_thread(files.remove, self._path(log), self._trash, self._fsync_of(log))
            except OSError as exc:
                raise _error(f"cannot delete the log {log}", exc) from exc

    # -- loading ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._lock_fd is None:
            raise LogUnavailable("the spool is not open")

    def _fsync_of(self, log: str) -> bool:
        if isinstance(self._fsync, bool):
            return self._fsync
        prefixes = [prefix for prefix in self._fsync if log.startswith(prefix)]
        return self._fsync[max(prefixes, key=len)] if prefixes else True

    def _path(self, log: str) -> Path:
        return self._root / f"{log}{files.SUFFIX}"

    async def _get(self, log: str) -> Log:
        entry = self._logs.get(log)
        return entry if entry is not None else await self._load(log, create=False)

    async def _load(self, log: str, *, create: bool) -> Log:
        files.check_name(log)
        async with self._guards.hold(log):
            self._require_open()
            entry = self._logs.get(log)
            if entry is not None:
                return entry
            path = self._path(log)
            try:
                fsync = self._fsync_of(log)
                loaded = await asyncio.to_thread(files.load, path, fsync)
                if loaded is None and create:
                    loaded = await asyncio.to_thread(files.create, path, self._trash, fsync)
            except OSError as exc:
                raise _error(f"cannot open the log {log}", exc) from exc
            if loaded is None:
                raise LogNotFound(f"no log named {log}")
            self._require_open()
            entry = self._logs[log] = Log(log, path, loaded, fsync=fsync)
            return entry

    # -- writing ----------------------------------------------------------------------------

    def _batch(self, log: Log) -> Batch:
        batch = log.batch
        if batch is None:
            batch = log.batch = Batch()
            if log.committer is None:
                log.committer = asyncio.create_task(self._commit(log))
        return batch

    async def _settle(self, log: Log) -> None:
        """Wait until what is queued now has landed or failed."""
        batch = log.batch or log.inflight
        if batch is None:
            return
        if batch.done is None:
            batch.done = asyncio.get_running_loop().create_future()
        await asyncio.shield(batch.done)

    async def _commit(self, log: Log) -> None:
        """Write the log's batches one after the other until none is waiting."""
        try:
            while log.batch is not None:
                async with log.lock:
                    batch, log.batch = log.batch, None
                    if batch is None:
                        break
                    log.inflight = batch
                    if log.deleted:
                        batch.fail(lambda: LogNotFound(f"no log named {log.name}"))
                    else:
                        await self._land(log, batch)
                    log.inflight = None
        finally:
            if log.inflight is not None:  # cancelled (the loop is going away): nobody waits forever
                log.inflight.fail(lambda: LogError(f"the log {log.name} was not written"))
                log.inflight = None
            log.committer = None

    async def _land(self, log: Log, batch: Batch) -> None:
        stamp = int(self._clock.now().timestamp() * 1000)
        buffers, heads = batch.frames(stamp)
        size = sum(map(len, heads)) + batch.size
        try:
            if log.torn:  # what an earlier failure left could not be cut then
                await asyncio.to_thread(self._truncate, log)
                if log.torn:
                    raise OSError(errno.EIO, "cannot cut back a failed write")
            if log.size and log.size + size > self._segment_bytes:
                await self._roll(log)
            await asyncio.to_thread(self._write, log, buffers)
        except OSError as exc:
            await asyncio.to_thread(self._truncate, log)
            log.refuse(batch, str(_error(f"cannot write the log {log.name}", exc)))
            return
        log.landed(batch, stamp, size, heads)
        self._files.keep(log)

    async def _roll(self, log: Log) -> None:
        """Begin a new segment named with the log's counters (the log's lock is held)."""
        seq = log.segments[-1].seq + 1
        name = files.segment_name(seq, log.total, log.bytes, log.appended_ms, log.durable_state)
        segment = files.Segment(seq, log.total, name)
        fd = await asyncio.to_thread(files.new_segment, log.path, segment, log.fsync)
        self._files.close(log)
        log.fd = fd
        log.segments.append(segment)
        log.size = 0
        self._files.keep(log)

    def _write(self, log: Log, buffers: list[bytes]) -> None:
        """One group commit's bytes at the end of the last segment (in a worker thread)."""
        if log.fd is None:
            log.fd = os.open(log.path / log.segments[-1].name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        files.write_all(log.fd, buffers, log.fsync)

    def _truncate(self, log: Log) -> None:
        """Cut the last segment back to what is acknowledged (in a worker thread)."""
        try:
            if log.fd is None:
                log.fd = os.open(log.path / log.segments[-1].name, os.O_WRONLY | os.O_APPEND)
            files.truncate(log.fd, log.size, log.fsync)
            log.torn = False
        except OSError:
            log.torn = True
