"""How the Redis session log lays a log out in keys and stream entries: pure helpers of
:mod:`sluicegate.engines.log.redis` (URL options, key names, positions, what a group
commit writes, decoding), no I/O.

A log named *N* under the prefix *P* is four keys, all with the hash tag ``{N}`` so that
they share one cluster slot and one Lua script may touch them all:

- ``P:log:{N}``: the stream; each entry holds ``d`` (frames, :mod:`.frames`), ``f`` (the
  index of its first record) and ``n`` (its records; 0 for a state change's mark);
- ``P:log:{N}:h``: the head hash: ``state``, ``total``, ``bytes``, ``at`` (the last
  append, gateway milliseconds), and after a partial trim ``tid`` / ``tend``: in the
  stream entry ``tid``, frames ending at or before index ``tend`` are trimmed;
- ``P:log:{N}:c`` and ``P:log:{N}:cz``: recent group commits (id -> ``"first total"``)
  and when each may be forgotten, so that a retried commit is not appended twice.

A position is the stream entry's id (``<ms>-<seq>``) when the entry is the last frame of
its stream entry (trimming it drops the stream entry), else ``<ms>-<seq>/<end>`` with
``end`` the index after the entry's last record (trimming it records a partial trim).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sluicegate.engines.log import LogEntry, LogError, LogHead, LogState, split_query
from sluicegate.engines.log.frames import decode, entry_header
from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping

    from sluicegate.engines.log import Appended

__all__ = [
    "LogKeys",
    "PendingAppend",
    "RedisLogOptions",
    "TrimPoint",
    "commit_frames",
    "entries_of",
    "head_of",
    "load_script",
    "log_keys",
    "parse_options",
    "parse_position",
    "take_commit",
    "trim_point",
]

_SETTING = "SLUICEGATE_LOG_URL"
_NAME = re.compile(r"[A-Za-z0-9/_.\-]{1,120}")
_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})(?:/(\d{1,20}))?")
_DB = re.compile(r"/?(\d{0,5})")
_STATES = {state.value.encode(): state for state in LogState}


@dataclass(frozen=True, slots=True)
class RedisLogOptions:
    """What ``SLUICEGATE_LOG_URL`` says.

    Attributes:
        url: the connection URL (the log's own parameters removed).
        db: the database number.
        prefix: what every key starts with.
        wait: replicas that must acknowledge each append (``WAIT``); 0: none.
        wait_timeout_ms: how long ``WAIT`` waits for them.
    """

    url: str
    db: int
    prefix: str
    wait: int
    wait_timeout_ms: int


def _number(params: dict[str, str], name: str, default: int, least: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < least:
        raise ConfigurationError(f"{_SETTING}: {name} must be a whole number of at least {least}")
    return int(text)


def parse_options(url: str) -> RedisLogOptions:
    """The options of a ``redis://`` or ``rediss://`` log URL.

    Raises:
        ConfigurationError: an unknown parameter or a bad value (names the setting).
    """
    base, params = split_query(url, {"prefix", "wait", "wait_timeout_ms"})
    parts = urlsplit(base)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"{_SETTING}: the scheme must be redis:// or rediss://")
    try:
        parts.port  # noqa: B018 (a bad port raises here, at start-up)
    except ValueError:
        raise ConfigurationError(f"{_SETTING}: the port must be a number") from None
    db = _DB.fullmatch(parts.path)
    if db is None:
        raise ConfigurationError(f"{_SETTING}: the path must be a database number, like /0")
    prefix = params.get("prefix", "sluicegate")
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", prefix):
        raise ConfigurationError(f"{_SETTING}: the prefix must be 1 to 64 letters, digits, '_', '.', ':' or '-'")
    return RedisLogOptions(
        url=base,
        db=int(db[1] or 0),
        prefix=prefix,
        wait=_number(params, "wait", 0, 0),
        wait_timeout_ms=_number(params, "wait_timeout_ms", 1000, 1),
    )


@dataclass(frozen=True, slots=True)
class LogKeys:
    """The keys of one log (see the module docstring)."""

    stream: str
    head: str
    commits: str
    expiries: str

    @property
    def all(self) -> list[str]:
        """Every key, in the order the append script takes them."""
        return [self.stream, self.head, self.commits, self.expiries]


def log_keys(prefix: str, log: str) -> LogKeys:
    """The keys of ``log``.

    Raises:
        LogError: a name a log cannot have (it would break the hash tag).
    """
    if not _NAME.fullmatch(log):
        raise LogError("a log name is 1 to 120 letters, digits, '/', '-', '_' or '.'")
    stream = f"{prefix}:log:{{{log}}}"
    return LogKeys(stream, f"{stream}:h", f"{stream}:c", f"{stream}:cz")


def load_script(name: str) -> str:
    """The text of a Lua script shipped in ``redis_scripts/``."""
    return resources.files(__package__).joinpath("redis_scripts", f"{name}.lua").read_text(encoding="utf-8")


def parse_position(position: str) -> tuple[str, str, str]:
    """A position as the trim script takes it: the stream id's milliseconds and sequence,
    and ``""`` (the whole stream entry) or the index up to which its frames are trimmed.

    Raises:
        LogError: a position this log never handed out.
    """
    match = _POSITION.fullmatch(position)
    if match is None:
        raise LogError("not a position of a Redis log")
    return match[1], match[2], match[3] or ""


#: A partial trim: a stream id (as an order key) and the index up to which its frames are gone.
TrimPoint = tuple[tuple[int, int], int]


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


def trim_point(entry_id: bytes | None, end: bytes | None) -> TrimPoint | None:
    """The partial trim the head hash records (``tid``, ``tend``), if any."""
    if not entry_id or not end:
        return None
    return _order(entry_id), int(end)


def entries_of(
    entry_id: bytes, fields: Mapping[bytes, bytes], *, start: int = 0, trimmed: TrimPoint | None = None
) -> list[LogEntry]:
    """The log entries of one stream entry that hold records at or after ``start`` (marks
    at or after it too), leaving out frames a partial trim forgot.

    Raises:
        LogError: a stream entry that is not a log's.
    """
    try:
        data, first, count = fields[b"d"], int(fields[b"f"]), int(fields[b"n"])
    except (KeyError, ValueError):
        raise LogError("a stream entry of the log is not a log entry") from None
    if count and first + count <= start:
        return []  # wholly before start: no need to decode it
    skip = -1
    if trimmed is not None:
        order = _order(entry_id)
        if order < trimmed[0]:
            return []
        if order == trimmed[0]:
            skip = trimmed[1]
    ident = entry_id.decode()
    entries, used = decode(data, first, lambda end, last: ident if last else f"{ident}/{end}")
    if used != len(data):
        raise LogError("a stream entry of the log holds an incomplete frame")
    return [e for e in entries if (e.end > start or (not e.count and e.first >= start)) and e.end > skip]


def head_of(fields: Mapping[bytes, bytes]) -> LogHead | None:
    """A head from the head hash's fields (or the set-state script's reply); ``None``
    when the log does not exist."""
    state = _STATES.get(fields.get(b"state", b""))
    if state is None:
        return None
    at = fields.get(b"at")
    return LogHead(
        total=int(fields.get(b"total") or 0),
        bytes=int(fields.get(b"bytes") or 0),
        state=state,
        appended_at=int(at) / 1000 if at else None,
    )


class PendingAppend:
    """An append waiting for its group commit."""

    __slots__ = ("count", "done", "meta", "records")

    def __init__(self, records: bytes, count: int, meta: bytes, done: asyncio.Future[Appended]) -> None:
        self.records, self.count, self.meta, self.done = records, count, meta, done


def take_commit(pending: list[PendingAppend], limit: int) -> list[PendingAppend]:
    """Remove and return the appends the next group commit carries: in order, up to
    ``limit`` bytes of records (at least one append, however large)."""
    size, n = len(pending[0].records), 1
    while n < len(pending) and size + len(pending[n].records) <= limit:
        size += len(pending[n].records)
        n += 1
    batch = pending[:n]
    del pending[:n]
    return batch


def commit_frames(batch: list[PendingAppend], appended_ms: int) -> bytes:
    """A group commit's stream entry data: one frame per run of consecutive appends with
    the same ``meta``."""
    parts: list[bytes] = []
    run: list[bytes] = []
    count = size = 0
    for i, item in enumerate(batch):
        run.append(item.records)
        count += item.count
        size += len(item.records)
        if i + 1 == len(batch) or batch[i + 1].meta != item.meta:
            parts.append(entry_header(count, size, appended_ms, item.meta))
            parts.extend(run)
            run, count, size = [], 0, 0
    return b"".join(parts)
