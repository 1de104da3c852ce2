"""Reading a spool log's segments back, chunk by chunk in worker threads, as entries.

A reader copies the list of segments and the trim point when it begins and reads up
to a point given then (what was written at that moment). A segment deleted meanwhile
was trimmed: it is skipped; a folder gone means the log was deleted.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from sluicegate.engines.log import LogError, LogNotFound
from sluicegate.engines.log import spool_files as files

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.engines.log import LogEntry
    from sluicegate.engines.log.spool_state import Log

__all__ = ["scan"]


def _error(log: Log, exc: OSError) -> LogError:
    return LogError(f"cannot read the log {log.name}: {exc.strerror or type(exc).__name__}")


async def scan(
    log: Log, after: files.Point | None, until_seq: int, until_offset: int, start: int
) -> AsyncIterator[list[LogEntry]]:
    """The retained entries after ``after`` (from the first retained if ``None``) that hold
    index ``start`` or come after it, up to byte ``until_offset`` of segment ``until_seq``.

    Raises:
        LogNotFound: the log was deleted.
        LogError: the files could not be read, or hold what is not frames.
    """
    segments, trim = list(log.segments), log.trim
    begin = after if after is not None and after[:2] > trim[:2] else trim
    for i, segment in enumerate(segments):
        if segment.seq < begin.seq:
            continue
        if segment.seq > until_seq:
            return
        if i + 1 < len(segments) and segments[i + 1].base < start:
            continue  # wholly before ``start`` (a mark at ``start`` may end a segment)
        offset, index = (begin.offset, begin.next_index) if segment.seq == begin.seq else (0, segment.base)
        limit = until_offset if segment.seq == until_seq else None
        async for entries in _segment(log, segment, offset, limit, index, start):
            yield entries


async def _segment(
    log: Log, segment: files.Segment, offset: int, limit: int | None, index: int, start: int
) -> AsyncIterator[list[LogEntry]]:
    try:
        fd = await asyncio.to_thread(files.open_segment, log.path / segment.name)
    except OSError as exc:
        raise _error(log, exc) from exc
    if fd is None:
        if log.deleted:
            raise LogNotFound(f"no log named {log.name}")
        return
    try:
        done = limit is not None and offset >= limit
        while not done:
            try:
                entries, offset, index, done = await asyncio.to_thread(
                    files.read_chunk, fd, segment.seq, offset, limit, index, start
                )
            except OSError as exc:
                raise _error(log, exc) from exc
            if entries:
                yield entries
    finally:
        os.close(fd)
