"""How the NATS log lays a log out in JetStream messages: pure, headers and bytes in,
messages or entries out, no I/O.

Every message of a log's subject carries, in its headers, the log's head as it stands
once that message is in the log, so the subject's last message *is* the head:

- ``Sg-Kind``: ``begin`` (the log was created), ``data`` (entries), ``part`` (one piece
  of an entry too large for one message), ``mark`` (a state change), ``trim``;
- ``Sg-First``: the index of the message's first record (for anything but data: the
  log's total before it);
- ``Sg-Total`` and ``Sg-Bytes``: records and bytes in the log with this message;
- ``Sg-State``: ``open``, ``paused`` or ``sealed``;
- ``Sg-At``: the last append's time in milliseconds (``-`` for none);
- ``Sg-Trim``: ``<seq> <end>``, what is trimmed: every message before sequence ``seq``,
  and in message ``seq`` the entries ending at or before record ``end``;
- ``Sg-Part`` (parts only): ``<entry id> <i> <n>``.

Payloads are :mod:`~sluicegate.engines.log.frames`: a data message holds one or more
entries, a mark message one mark frame, a begin or trim message nothing. An entry too
large for one message is one frame cut in ``n`` consecutive ``part`` messages; only the
last advances ``Sg-Total`` and ``Sg-Bytes``, and a reader yields the entry only when
its ``n`` parts follow each other in the subject (:class:`Reassembler`), so an entry
interrupted by another node's message, or left incomplete by a node that died, is
neither read nor counted.

A position is ``<seq>.<end>.<last>``: the message's sequence, the index after the
entry's last record, and ``1`` when the entry is the last of its message (then trimming
it drops the whole message), ``0`` otherwise (then the message stays, and readers skip
its entries up to ``end``, as ``Sg-Trim`` says).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sluicegate.engines.log import LogEntry, LogError, LogHead, LogState
from sluicegate.engines.log.frames import decode, entry_header

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "Head",
    "Kind",
    "Message",
    "Reassembler",
    "Split",
    "Stored",
    "headers",
    "pack",
    "parse_position",
    "position",
    "stored",
]

KIND = "Sg-Kind"
FIRST = "Sg-First"
TOTAL = "Sg-Total"
BYTES = "Sg-Bytes"
STATE = "Sg-State"
AT = "Sg-At"
TRIM = "Sg-Trim"
PART = "Sg-Part"

#: An upper bound of a records frame's header beyond its meta (three numbers, spaces, "@", "\n").
HEADER_BOUND = 64

_STATES = {state.value: state for state in LogState}


class Kind(enum.StrEnum):
    """What a message of a log's subject is."""

    BEGIN = "begin"
    DATA = "data"
    PART = "part"
    MARK = "mark"
    TRIM = "trim"


_KINDS = {kind.value: kind for kind in Kind}


@dataclass(frozen=True, slots=True)
class Head:
    """A log's head as the headers of its last message carry it.

    Attributes:
        total: records appended so far.
        bytes: their size.
        state: whether the log takes appends.
        at_ms: the last append's time in milliseconds, ``None`` before the first.
        trim: ``(seq, end)``: messages before ``seq`` are trimmed, and the entries of
            message ``seq`` that end at or before record ``end``.
    """

    total: int = 0
    bytes: int = 0
    state: LogState = LogState.OPEN
    at_ms: int | None = None
    trim: tuple[int, int] = (0, 0)

    def appended(self, count: int, size: int, at_ms: int) -> Head:
        """The head once ``count`` records of ``size`` bytes are appended at ``at_ms``."""
        return replace(self, total=self.total + count, bytes=self.bytes + size, at_ms=at_ms)

    def public(self) -> LogHead:
        """The head as :class:`~sluicegate.engines.log.SessionLog` reports it."""
        at = self.at_ms / 1000 if self.at_ms is not None else None
        return LogHead(total=self.total, bytes=self.bytes, state=self.state, appended_at=at)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the headers of a stored message say.

    Attributes:
        seq: its stream sequence.
        kind: what it is.
        first: the index of its first record.
        head: the log's head with it.
        part: ``(entry id, i, n)`` for a part, else ``None``.
    """

    seq: int
    kind: Kind
    first: int
    head: Head
    part: tuple[str, int, int] | None = None


def headers(kind: Kind, first: int, head: Head, *, part: tuple[str, int, int] | None = None) -> dict[str, str]:
    """The headers of a message of ``kind`` whose first record is ``first``, leaving the log at ``head``."""
    built = {
        KIND: kind.value,
        FIRST: str(first),
        TOTAL: str(head.total),
        BYTES: str(head.bytes),
        STATE: head.state.value,
        AT: "-" if head.at_ms is None else str(head.at_ms),
        TRIM: f"{head.trim[0]} {head.trim[1]}",
    }
    if part is not None:
        built[PART] = f"{part[0]} {part[1]} {part[2]}"
    return built


def _number(text: str | None) -> int:
    if text is None or not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)


def stored(seq: int, found: Mapping[str, str] | None) -> Stored:
    """Read the headers of message ``seq``.

    Raises:
        LogError: headers no log message has (a message published by something else).
    """
    found = found or {}
    try:
        kind = _KINDS[found.get(KIND, "")]
        state = _STATES[found.get(STATE, "")]
        at = found.get(AT, "")
        trim_seq, _, trim_end = found.get(TRIM, "").partition(" ")
        head = Head(
            total=_number(found.get(TOTAL)),
            bytes=_number(found.get(BYTES)),
            state=state,
            at_ms=None if at == "-" else _number(at),
            trim=(_number(trim_seq), _number(trim_end)),
        )
        part = None
        if kind is Kind.PART:
            entry, i, n = found.get(PART, "").split(" ")
            part = (entry, _number(i), _number(n))
        return Stored(seq, kind, _number(found.get(FIRST)), head, part)
    except (KeyError, ValueError):
        raise LogError(f"message {seq} of the log's stream is not a log message") from None


def position(seq: int, end: int, last: bool) -> str:
    """The position of the entry ending before record ``end`` in message ``seq``."""
    return f"{seq}.{end}.{int(last)}"


def parse_position(text: str) -> tuple[int, int]:
    """The trim point (``Sg-Trim``) that trimming the entry at position ``text`` sets.

    Raises:
        LogError: not a position of this log.
    """
    parts = text.split(".")
    if len(parts) == 3 and all(p.isascii() and p.isdigit() and len(p) < 20 for p in parts) and parts[2] in ("0", "1"):
        seq, end = int(parts[0]), int(parts[1])
        if seq > 0:
            return (seq + 1, 0) if parts[2] == "1" else (seq, end)
    raise LogError(f"invalid log position {text[:40]!r}")


# -- writing: appends packed into messages -------------------------------------------------


@dataclass(slots=True)
class _Entry:
    meta: bytes
    chunks: list[bytes]
    count: int
    size: int


@dataclass(slots=True)
class Message:
    """One data message for several appends.

    Attributes:
        payload: its frames.
        count: records in it.
        size: their bytes.
        members: ``(index of the append, records before it in the message)``, in order.
    """

    payload: bytes
    count: int
    size: int
    members: list[tuple[int, int]]


@dataclass(slots=True)
class Split:
    """One append too large for a message: its frame, cut in consecutive parts.

    Attributes:
        chunks: the parts' payloads, in order.
        count: records in the append.
        size: their bytes.
        index: the index of the append.
    """

    chunks: list[bytes]
    count: int
    size: int
    index: int


def pack(appends: Sequence[tuple[bytes, int, bytes]], limit: int, at_ms: int) -> list[Message | Split]:
    """Group ``(records, count, meta)`` appends, in order, into messages of at most ``limit``
    bytes; consecutive appends with the same meta in one message share one entry."""
    units: list[Message | Split] = []
    entries: list[_Entry] = []
    members: list[tuple[int, int]] = []
    used = records_in = 0

    def flush() -> None:
        nonlocal entries, members, used, records_in
        if entries:
            payload = b"".join(entry_header(e.count, e.size, at_ms, e.meta) + b"".join(e.chunks) for e in entries)
            units.append(Message(payload, records_in, sum(e.size for e in entries), members))
        entries, members, used, records_in = [], [], 0, 0

    for index, (records, count, meta) in enumerate(appends):
        header = len(meta) + HEADER_BOUND
        if header + len(records) > limit:
            flush()
            frame = entry_header(count, len(records), at_ms, meta) + records
            units.append(Split([frame[i : i + limit] for i in range(0, len(frame), limit)], count, len(records), index))
            continue
        merge = bool(entries) and entries[-1].meta == meta
        extra = len(records) + (0 if merge else header)
        if used + extra > limit:
            flush()
            merge, extra = False, len(records) + header
        if merge:
            entry = entries[-1]
            entry.chunks.append(records)
            entry.count += count
            entry.size += len(records)
        else:
            entries.append(_Entry(meta, [records], count, len(records)))
        members.append((index, records_in))
        records_in += count
        used += extra
    flush()
    return units


# -- reading: messages back into entries ---------------------------------------------------


@dataclass(slots=True)
class _Partial:
    entry: str
    n: int
    first: int
    chunks: list[bytes] = field(default_factory=list)


class Reassembler:
    """Turns a subject's messages, fed in order, into its retained entries.

    Args:
        trim: the log's trim point (``Head.trim``) when reading began.
        start: leave out entries that hold only records before this index.
    """

    def __init__(self, trim: tuple[int, int], start: int = 0) -> None:
        self.trim = trim
        self.start = start
        #: Whether the seal's mark was among the entries returned.
        self.sealed = False
        self._partial: _Partial | None = None

    def feed(self, seq: int, found: Mapping[str, str] | None, data: bytes) -> list[LogEntry]:
        """The entries that message ``seq`` completes (none, for most parts).

        Raises:
            LogError: a message that is not a log message, or frames that are not frames.
        """
        message = stored(seq, found)
        if message.part is not None:  # set for parts, and only for them
            data = self._part(message.part, message.first, data)
            if not data:
                return []
        else:
            self._partial = None  # parts interrupted by another message are discarded
            if message.kind not in (Kind.DATA, Kind.MARK):
                return []
        if seq < self.trim[0]:
            return []
        entries, _ = decode(data, message.first, lambda end, last: position(seq, end, last))
        trimmed = self.trim[1] if seq == self.trim[0] else 0
        kept = [
            e
            for e in entries
            if (e.mark is not None or e.end > trimmed) and (e.first >= self.start or e.end > self.start)
        ]
        if any(e.mark is LogState.SEALED for e in kept):
            self.sealed = True
        return kept

    def _part(self, part: tuple[str, int, int], first: int, data: bytes) -> bytes:
        """The whole entry's frame once ``part`` is its last part, else ``b""``."""
        entry, i, n = part
        partial = self._partial
        if i == 1:
            partial = self._partial = _Partial(entry, n, first)
        elif partial is None or (partial.entry, partial.n, len(partial.chunks) + 1) != (entry, n, i):
            self._partial = None
            return b""
        partial.chunks.append(data)
        if len(partial.chunks) < n:
            return b""
        self._partial = None
        return b"".join(partial.chunks)
