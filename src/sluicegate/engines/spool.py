"""A durable spool: an append-only file of lines in a folder, written with group commits.

Acknowledge only what is durable: race points and ingestion records are appended here
before the client hears "yes". Layout, per spool folder:

- ``active.jsonl``: where lines are appended;
- ``<seq>.pending.jsonl``: a closed batch (see :meth:`SessionSpool.rotate`), waiting for
  whoever archives it; deleted only once the archive is recorded.

:meth:`SessionSpool.append` returns only when its lines are written (and, with
``fsync`` on, forced to disk). Concurrent appends wait for the same write: while one
batch is being written in a worker thread, the next accumulates, so one ``write`` and
one ``fsync`` cover everything that arrived meanwhile (a group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from typing import TYPE_CHECKING

from sluicegate.errors import SluicegateError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SessionSpool", "SpoolError"]

ACTIVE = "active.jsonl"
_PENDING = re.compile(r"^(\d{6,})\.pending\.jsonl$")


class SpoolError(SluicegateError, OSError):
    """A point could not be made durable (disk full, permissions, ...)."""


def _count_lines(path: Path) -> tuple[int, int]:
    """Lines and bytes of a spool file, ignoring a torn last line (a crash mid-write)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):  # keep only whole lines
        with path.open("r+b") as handle:
            handle.truncate(end)
    return data.count(b"\n", 0, end), end


class SessionSpool:
    """The spool files of one session.

    Args:
        directory: the session's spool folder (created if missing).
        fsync: force every group commit to disk before acknowledging it.
        total: points of this session already durable elsewhere (archived).
    """

    def __init__(self, directory: Path, *, fsync: bool, total: int = 0) -> None:
        self.directory = directory
        self.fsync = fsync
        #: Points of the session acknowledged so far, archived or not.
        self.total = total
        #: Points and bytes in ``active.jsonl``.
        self.active_points = 0
        self.active_bytes = 0
        #: Points and bytes of each pending file, by sequence.
        self.pending: dict[int, tuple[int, int]] = {}
        self._batch: list[bytes] = []
        self._counts: list[int] = []
        self._waiters: list[asyncio.Future[int]] = []
        self._committer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._fd: int | None = None

    @property
    def spooled_points(self) -> int:
        """Points durable in the spool and not archived yet."""
        return self.active_points + sum(points for points, _ in self.pending.values())

    def recover(self) -> None:
        """Read back what a previous process left (blocking: call it in a thread)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            match = _PENDING.match(entry.name)
            if match:
                self.pending[int(match.group(1))] = _count_lines(entry)
        active = self.directory / ACTIVE
        if active.exists():
            self.active_points, self.active_bytes = _count_lines(active)
        self.total += self.spooled_points

    def pending_path(self, seq: int) -> Path:
        """Where batch ``seq`` waits to be archived."""
        return self.directory / f"{seq:06d}.pending.jsonl"

    async def append(self, line: bytes, count: int = 1) -> int:
        """Make lines durable: one (a JSON line ending in ``\\n``), or ``count`` of them joined.

        Returns:
            The number of lines acknowledged so far, these included.

        Raises:
            SpoolError: the lines could not be written.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch.append(line)
        self._counts.append(count)
        self._waiters.append(future)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit())
        return await future

    @property
    def busy(self) -> bool:
        """Whether appends are waiting for (or in) a write."""
        return self._committer is not None

    async def drain(self) -> None:
        """Wait until every append made so far has been written (or has failed)."""
        while self._committer is not None:
            await asyncio.shield(self._committer)

    async def _commit(self) -> None:
        try:
            while self._batch:
                batch, counts, waiters = self._batch, self._counts, self._waiters
                self._batch, self._counts, self._waiters = [], [], []
                data = b"".join(batch)
                try:
                    async with self._lock:
                        try:
                            await asyncio.to_thread(self._write, data)
                        except OSError:
                            # Leave no half batch behind: its points are refused, so the file
                            # must not keep any of them.
                            await asyncio.to_thread(self._truncate, self.active_bytes)
                            raise
                except OSError as exc:
                    error = SpoolError(f"cannot write the spool of {self.directory.name}: {exc.strerror or exc}")
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(error)
                    continue
                lines = sum(counts)
                done = self.total
                self.total += lines
                self.active_points += lines
                self.active_bytes += len(data)
                for count, waiter in zip(counts, waiters, strict=True):
                    done += count
                    if not waiter.done():
                        waiter.set_result(done)
        finally:
            self._committer = None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.directory / ACTIVE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fdatasync(self._fd)

    def _truncate(self, size: int) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.directory / ACTIVE, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)

    async def rotate(self, seq: int) -> bool:
        """Close the active file as pending batch ``seq`` (if it holds anything).

        Returns:
            Whether a batch was closed.
        """
        async with self._lock:
            if not self.active_points:
                return False
            await asyncio.to_thread(self._rotate, seq)
            self.pending[seq] = (self.active_points, self.active_bytes)
            self.active_points = self.active_bytes = 0
            return True

    def _rotate(self, seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.replace(self.directory / ACTIVE, self.pending_path(seq))
        if self.fsync:  # make the rename itself durable
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def archived(self, seq: int) -> tuple[int, int]:
        """Forget batch ``seq`` once its archive is recorded (blocking file removal is tiny).

        Returns:
            Its points and bytes.
        """
        points, size = self.pending.pop(seq)
        self.pending_path(seq).unlink(missing_ok=True)
        return points, size

    def read_active(self) -> bytes:
        """What the active file holds (blocking: call it in a thread)."""
        path = self.directory / ACTIVE
        return path.read_bytes()[: self.active_bytes] if path.exists() else b""

    async def reset_active(self) -> int:
        """Empty the active file, once everything in it is safe elsewhere.

        Returns:
            The bytes it held, counted as active until the moment this returns (so a
            reader adding them to a total of its own never sees them twice).
        """
        async with self._lock:
            await asyncio.to_thread(self._reset_active)
            return self.release_active()

    def release_active(self) -> int:
        """Stop counting the active file's points and bytes (the caller now counts them).

        Returns:
            The bytes it held.
        """
        size = self.active_bytes
        self.active_points = self.active_bytes = 0
        return size

    def _reset_active(self) -> None:
        self.close()
        (self.directory / ACTIVE).unlink(missing_ok=True)

    def close(self) -> None:
        """Release the open file (the spool stays on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the session's spool folder once everything is archived."""
        self.close()
        for entry in self.directory.iterdir():
            entry.unlink()
        self.directory.rmdir()
