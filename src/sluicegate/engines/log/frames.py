"""How log entries are written as bytes: one pure codec for every log implementation.

The spool writes frames to its files, JetStream carries them as message payloads and
Redis as a stream entry's field, so a log's bytes read the same everywhere:

- records: ``@<count> <bytes> <appended ms> <meta>\\n`` followed by ``<bytes>`` bytes
  holding ``count`` records, each ending in ``\\n``;
- a state change: ``!<state> <appended ms>\\n``.

Frames are self-delimiting (the header gives the size of what follows), so decoding
never scans records, and a torn last frame (a crash mid-write) is recognised and left
out. Bytes in, entries out: no I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.engines.log import LogEntry, LogError, LogState

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_META", "decode", "entry_header", "mark_frame"]

#: Longest ``meta`` an append may carry.
MAX_META = 200

_STATES = {state.value.encode(): state for state in LogState}


def entry_header(count: int, size: int, appended_ms: int, meta: bytes) -> bytes:
    """The header of a records frame (the records follow it)."""
    return b"@%d %d %d %s\n" % (count, size, appended_ms, meta)


def mark_frame(state: LogState, appended_ms: int) -> bytes:
    """A state-change frame."""
    return b"!%s %d\n" % (state.value.encode(), appended_ms)


def check_meta(meta: bytes) -> None:
    """Refuse ``meta`` that a frame header (or a message header) cannot carry.

    Raises:
        ValueError: too long, or not printable ASCII.
    """
    if len(meta) > MAX_META or not all(0x20 <= byte < 0x7F for byte in meta):
        raise ValueError(f"meta must be at most {MAX_META} printable ASCII bytes")


def decode(data: bytes, base: int, position: Callable[[int, bool], str]) -> tuple[list[LogEntry], int]:
    """The entries of ``data``, whose first record has index ``base``.

    Args:
        data: frames, one after the other; the last may be incomplete.
        base: the index of the first record in ``data``.
        position: the position of an entry, from the index after its last record and
            whether it is the last entry of ``data``.

    Returns:
        The complete entries, and how many bytes of ``data`` they take (less than
        ``len(data)`` when the last frame is incomplete).

    Raises:
        LogError: bytes that are not frames.
    """
    found: list[tuple[int, int, bytes, bytes, float, LogState | None]] = []
    offset, index, size = 0, base, len(data)
    while offset < size:
        newline = data.find(b"\n", offset)
        if newline < 0:
            break  # a torn header
        header = data[offset + 1 : newline]
        kind = data[offset : offset + 1]
        if kind == b"@":
            parts = header.split(b" ", 3)
            if len(parts) != 4 or not (parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit()):
                raise LogError(f"corrupt log frame at byte {offset}")
            count, length, stamp = int(parts[0]), int(parts[1]), int(parts[2])
            start = newline + 1
            if start + length > size:
                break  # torn records
            found.append((index, count, data[start : start + length], parts[3], stamp / 1000, None))
            index += count
            offset = start + length
        elif kind == b"!":
            state_text, _, stamp_text = header.partition(b" ")
            state = _STATES.get(state_text)
            if state is None or not stamp_text.isdigit():
                raise LogError(f"corrupt log frame at byte {offset}")
            found.append((index, 0, b"", b"", int(stamp_text) / 1000, state))
            offset = newline + 1
        else:
            raise LogError(f"corrupt log frame at byte {offset}")
    last = len(found) - 1
    entries = [
        LogEntry(first, count, records, meta, stamp, position(first + count, i == last), mark)
        for i, (first, count, records, meta, stamp, mark) in enumerate(found)
    ]
    return entries, offset
