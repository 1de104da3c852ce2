"""The spool log's files: naming, recovery, segments, the trim point, reads (all blocking).

Everything here runs in a worker thread (:func:`asyncio.to_thread`); :mod:`.spool`
decides when. The layout under the spool's folder is described there. Two rules hold
every function together:

- a segment's name carries the log's counters and state at the moment it was created,
  so a log keeps them when every entry before is deleted;
- the trim file (``<seq> <offset> <index>``) names the first retained byte; segments
  before it are leftovers of a trim and are never read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from sluicegate.engines.log import LogEntry, LogError, LogState
from sluicegate.engines.log.frames import decode, entry_header, mark_frame

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "Loaded",
    "Point",
    "Segment",
    "check_name",
    "create",
    "fsync_dir",
    "load",
    "lock_folder",
    "new_segment",
    "open_segment",
    "read_chunk",
    "remove",
    "segment_name",
    "truncate",
    "write_all",
    "write_trim",
]

#: What ends a log's folder name: a character no log name holds, so ``a`` and ``a/b``
#: never share a folder.
SUFFIX = "+log"
TRIM = "trim"
_SEGMENT = re.compile(r"^(\d{8,})_(\d+)_(\d+)_(\d+|none)_(open|paused|sealed)\.seg$")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*")
_CHUNK = 1 << 20
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


class Segment(NamedTuple):
    """One file of a log: its sequence number, the index of its first record, its name."""

    seq: int
    base: int
    name: str


class Point(NamedTuple):
    """A place in a log: a segment, a byte offset in it, the index of the next record there.

    As a string (an entry's position, the end of the entry), ``<seq>:<offset>:<index>``.
    """

    seq: int
    offset: int
    next_index: int

    @classmethod
    def parse(cls, position: str) -> Point:
        """The point a position names.

        Raises:
            ValueError: not a position of a spool log.
        """
        parts = position.split(":")
        if len(parts) != 3 or not all(part.isdigit() for part in parts):
            raise ValueError(f"{position!r} is not a position of a spool log")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))


@dataclass(slots=True)
class Loaded:
    """What a log's folder holds, once its last segment is decoded."""

    segments: list[Segment]
    size: int
    trim: Point
    total: int
    bytes: int
    appended_ms: int | None
    state: LogState
    #: Where the seal's mark begins (it is never trimmed), for a sealed log.
    seal_at: Point | None = None


def check_name(name: str) -> None:
    """Refuse a log name that is not a plain relative path of the allowed characters.

    Raises:
        ValueError: empty segments, ``.`` or ``..``, other characters, over 120 characters.
    """
    if len(name) > 120 or not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
        raise ValueError(f"{name!r} is not a log name (letters, digits, '/', '-', '_', '.'; at most 120)")


def segment_name(seq: int, total: int, size: int, appended_ms: int | None, state: LogState) -> str:
    """The file name of segment ``seq`` begun when the log had these counters and state."""
    stamp = "none" if appended_ms is None else str(appended_ms)
    return f"{seq:08d}_{total}_{size}_{stamp}_{state.value}.seg"


def fsync_dir(path: Path) -> None:
    """Make the creations, renames and removals in a folder durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, buffers: list[bytes], fsync: bool) -> None:
    """Write ``buffers`` one after the other, whole (a write may take part of them), with
    one ``writev`` as a rule, and, if asked, force them to disk."""
    if len(buffers) > _IOV_MAX:
        buffers = [b"".join(buffers)]
    pending: list[bytes | memoryview] = list(buffers)
    while pending:
        written = os.writev(fd, pending)
        done = 0
        while done < len(pending) and written >= len(pending[done]):
            written -= len(pending[done])
            done += 1
        del pending[:done]
        if written:
            pending[0] = memoryview(pending[0])[written:]
    if fsync:
        os.fdatasync(fd)


def truncate(fd: int, size: int, fsync: bool) -> None:
    """Cut a segment back to ``size`` bytes (a refused batch leaves nothing behind)."""
    os.ftruncate(fd, size)
    if fsync:
        os.fdatasync(fd)


def _private_file(path: Path, data: bytes, fsync: bool) -> None:
    """Write a small file whole, atomically (a temporary file renamed over it)."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, [data], fsync)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if fsync:
        fsync_dir(path.parent)


def lock_folder(folder: Path, fsync: bool) -> tuple[int, str]:
    """Take the spool's folder for this process and read (or make) its identity.

    Returns:
        The descriptor holding the lock (closing it releases the folder), and the id.

    Raises:
        BlockingIOError: another process (or another spool of this one) holds it.
        OSError: the folder cannot be set up.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for sub in ("logs", "trash"):
            (folder / sub).mkdir(mode=0o700, exist_ok=True)
        for left in os.listdir(folder / "trash"):  # deletions a crash interrupted
            shutil.rmtree(folder / "trash" / left, ignore_errors=True)
        try:
            identity = (folder / "id").read_text().strip()
        except FileNotFoundError:
            identity = ""
        if not identity:
            identity = secrets.token_hex(16)
            _private_file(folder / "id", identity.encode() + b"\n", fsync)
    except BaseException:
        os.close(fd)
        raise
    return fd, identity


def _unplaced(end: int, last: bool) -> str:
    return ""


def _placed(entries: list[LogEntry], seq: int, offset: int, start: int) -> tuple[list[LogEntry], int]:
    """``entries`` (decoded from ``offset`` of segment ``seq``) with their positions, keeping
    those that hold index ``start`` or come after it; and the offset after the last."""
    kept = []
    for entry in entries:
        stamp = round(entry.appended_at * 1000)
        if entry.mark is None:
            offset += len(entry_header(entry.count, len(entry.data), stamp, entry.meta)) + len(entry.data)
        else:
            offset += len(mark_frame(entry.mark, stamp))
        if entry.end > start or entry.first >= start:
            kept.append(
                LogEntry(
                    entry.first,
                    entry.count,
                    entry.data,
                    entry.meta,
                    entry.appended_at,
                    f"{seq}:{offset}:{entry.end}",
                    entry.mark,
                )
            )
    return kept, offset


def _decode_tail(data: bytes, base: int) -> tuple[list[LogEntry], int]:
    """The entries of a last segment and how many bytes they take; what follows them is a
    torn write (or, on file systems that extend a file before its data lands, zeros)."""
    try:
        return decode(data, base, _unplaced)
    except LogError:
        stripped = data.rstrip(b"\0")
        if len(stripped) == len(data):
            raise
        return decode(stripped, base, _unplaced)


def _segments(path: Path) -> tuple[list[Segment], Point | None]:
    segments = []
    trim = None
    for name in os.listdir(path):
        match = _SEGMENT.match(name)
        if match:
            segments.append(Segment(int(match.group(1)), int(match.group(2)), name))
        elif name == TRIM:
            parts = (path / TRIM).read_bytes().split()
            if len(parts) != 3 or not all(part.isdigit() for part in parts):
                raise LogError("a log of the spool has a corrupt trim point")
            trim = Point(int(parts[0]), int(parts[1]), int(parts[2]))
    segments.sort()
    return segments, trim


def load(path: Path, fsync: bool) -> Loaded | None:
    """Read back a log's folder: its segments, its trim point, its counters and state from
    the name and frames of its last segment, whose torn tail (a crash mid-write) is cut off.

    Returns:
        ``None`` if the log has no folder.

    Raises:
        LogError: a folder without segments, or frames that are not frames.
        OSError: the files cannot be read.
    """
    try:
        segments, trim = _segments(path)
    except FileNotFoundError:
        return None
    if trim is not None:
        for old in [s for s in segments if s.seq < trim.seq]:  # a trim a crash interrupted
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path / old.name)
        segments = [s for s in segments if s.seq >= trim.seq]
    if not segments:
        raise LogError("a log of the spool has no segment")
    last = segments[-1]
    _, total, size, stamp, state = _SEGMENT.match(last.name).groups()  # type: ignore[union-attr]
    first = Point(segments[0].seq, 0, segments[0].base)
    appended_ms = None if stamp == "none" else int(stamp)
    loaded = Loaded(segments, 0, trim or first, int(total), int(size), appended_ms, LogState(state))
    fd = os.open(path / last.name, os.O_RDWR)
    try:
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        entries, used = _decode_tail(data, last.base)
        if used < len(data):
            truncate(fd, used, fsync)
    finally:
        os.close(fd)
    loaded.size = used
    for entry in entries:
        if entry.mark is None:
            loaded.total += entry.count
            loaded.bytes += len(entry.data)
            loaded.appended_ms = round(entry.appended_at * 1000)
        else:
            loaded.state = entry.mark
    if entries and entries[-1].mark is LogState.SEALED:
        frame = mark_frame(LogState.SEALED, round(entries[-1].appended_at * 1000))
        loaded.seal_at = Point(last.seq, used - len(frame), loaded.total)
    if loaded.trim.seq not in {s.seq for s in segments}:
        loaded.trim = first
    elif loaded.trim.seq == last.seq and loaded.trim.offset > used:  # a trim outlived unsynced data
        loaded.trim = Point(last.seq, used, loaded.total)
    return loaded


def _makedirs(path: Path, fsync: bool) -> None:
    if path.is_dir():
        return
    _makedirs(path.parent, fsync)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
        if fsync:
            fsync_dir(path.parent)


def create(path: Path, trash: Path, fsync: bool) -> Loaded:
    """Make an empty, open log: its folder is prepared aside and renamed into place, so a
    log exists whole or not at all.

    Raises:
        OSError: the files cannot be made.
    """
    first = Segment(1, 0, segment_name(1, 0, 0, None, LogState.OPEN))
    aside = trash / f"new-{secrets.token_hex(8)}"
    os.mkdir(aside, 0o700)
    os.close(os.open(aside / first.name, os.O_WRONLY | os.O_CREAT, 0o600))
    if fsync:
        fsync_dir(aside)
    _makedirs(path.parent, fsync)
    try:
        os.rename(aside, path)
    except OSError as exc:
        shutil.rmtree(aside, ignore_errors=True)
        existing = load(path, fsync) if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) else None
        if existing is None:
            raise
        return existing
    if fsync:
        fsync_dir(path.parent)
    return Loaded([first], 0, Point(1, 0, 0), 0, 0, None, LogState.OPEN)


def remove(path: Path, trash: Path, fsync: bool) -> None:
    """Delete a log: its folder is renamed away (at once), then removed."""
    gone = trash / f"gone-{secrets.token_hex(8)}"
    try:
        os.rename(path, gone)
    except FileNotFoundError:
        return
    if fsync:
        fsync_dir(path.parent)
    shutil.rmtree(gone, ignore_errors=True)


def new_segment(path: Path, segment: Segment, fsync: bool) -> int:
    """Create a segment for appends.

    Returns:
        Its descriptor, open for appending.
    """
    fd = os.open(path / segment.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if fsync:
            fsync_dir(path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path / segment.name)
        raise
    return fd


def write_trim(path: Path, point: Point, dropped: list[Segment], fsync: bool) -> None:
    """Record the first retained byte, then delete the segments wholly before it (a crash
    in between leaves segments that :func:`load` knows to delete)."""
    _private_file(path / TRIM, b"%d %d %d\n" % point, fsync)
    for segment in dropped:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / segment.name)


def open_segment(path: Path) -> int | None:
    """A descriptor for reading a segment; ``None`` if it is gone (trimmed meanwhile)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def read_chunk(
    fd: int, seq: int, offset: int, limit: int | None, index: int, start: int
) -> tuple[list[LogEntry], int, int, bool]:
    """The next entries of segment ``seq`` from ``offset`` (where the record index is
    ``index``) up to ``limit`` (or its end), those holding ``start`` or after.

    Returns:
        The entries, the offset and index after them, and whether the segment is done.

    Raises:
        LogError: bytes that are not frames.
    """
    want = _CHUNK
    while True:
        size = want if limit is None else min(want, limit - offset)
        data = os.pread(fd, size, offset)
        entries, used = decode(data, index, _unplaced)
        if entries:
            break
        if len(data) < size or (limit is not None and size == limit - offset):  # the end (or a torn tail)
            return [], offset, index, True
        want *= 2  # one frame larger than what was read
    kept, end = _placed(entries, seq, offset, start)
    if end != offset + used:
        raise LogError("corrupt log frame in the spool")
    return kept, end, entries[-1].end, limit is not None and end >= limit
