"""The session-log engine: the durable, ordered input of ingestion and race sessions.

An upload or a race point is appended to its session's log on whichever node receives
it, and the client hears "yes" only once the append is acknowledged: that is the
durability promise (an ``fdatasync`` on the local spool, JetStream's acknowledgement
with its replicas, Redis as durable as its AOF and ``WAIT`` make it). The one node
that processes the session (the holder of its lease, :mod:`sluicegate.engines.store.leases`)
follows the log, cuts batches, archives them, and trims what is safe elsewhere.

A log holds *records* (bytes, one per line, each ending in ``\\n``) grouped in
*entries*. Every record has an index, from 0, in the order appends were acknowledged;
every entry knows the index of its first record, so a reader always knows where it is.
An entry also carries ``meta`` (a few bytes the appender attached, such as a time range)
and the time it was appended. Concurrent appends to one log are combined into one
write (a group commit); an implementation may merge consecutive appends with the same
``meta`` into one entry.

A log has a state (:class:`LogState`): ``open`` takes appends, ``paused`` refuses them
until it is opened again, ``sealed`` refuses them for good. A state change is itself an
entry of the log (a *mark*), so a reader sees it in order, and it is atomic with the
appends: once :meth:`SessionLog.set_state` returns, no append is acknowledged against
the old state, on any node. Sealing is how a session ends without losing a record that
another node acknowledged a moment before.

Implementations, chosen by ``SLUICEGATE_LOG_URL`` (:func:`log_from_url`):

- ``spool://`` (default on one node): group-commit files in the data folder, one
  process only (several workers need a shared log);
- ``nats://host:4222[?stream=NAME&replicas=3]``: JetStream, one subject per log
  (the default when the broker is NATS);
- ``redis://host:6379/0[?prefix=NAME&wait=1]``: Redis Streams, one stream per log,
  read through consumer groups (the default when the broker is Redis).

Errors (engine errors; the services map them to HTTP once, at the edge)::

    LogError(SluicegateError)                 the log failed (a disk error, a refused write)
    ├── LogNotFound(LookupError)              no such log (never created, or deleted)
    ├── LogClosed                             the log is paused or sealed (``state`` says which)
    ├── LogUnavailable(ConnectionError)       the log's server cannot be reached or did not answer
    └── LogEntryTooLarge(ValueError)          one append is larger than the log takes
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sluicegate.errors import ConfigurationError, SluicegateError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping
    from pathlib import Path

    from sluicegate.clock import Clock

__all__ = [
    "Appended",
    "LogClosed",
    "LogEntry",
    "LogEntryTooLarge",
    "LogError",
    "LogHead",
    "LogNotFound",
    "LogState",
    "LogUnavailable",
    "SessionLog",
    "default_log_url",
    "log_from_url",
]


class LogError(SluicegateError):
    """The log could not do what was asked (a disk error, a write the server refused)."""


class LogNotFound(LogError, LookupError):
    """No log has this name: it was never created, or it was deleted."""


class LogClosed(LogError):
    """The log takes no appends now: it is paused, or sealed for good.

    Attributes:
        state: the log's state (``paused`` or ``sealed``).
    """

    def __init__(self, log: str, state: LogState) -> None:
        super().__init__(f"the log {log} is {state.value}")
        self.state = state


class LogUnavailable(LogError, ConnectionError):
    """The log's server could not be reached, or did not acknowledge in time: an append
    that raised this may or may not have been stored (a retry of it is not)."""


class LogEntryTooLarge(LogError, ValueError):
    """One append is larger than this log can take."""


class LogState(enum.StrEnum):
    """Whether a log takes appends."""

    OPEN = "open"
    PAUSED = "paused"
    SEALED = "sealed"


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append landed.

    Attributes:
        first: the index of its first record.
        total: records in the log once it was acknowledged (``first + count``, plus
            whatever other appends combined with it landed after it).
    """

    first: int
    total: int


@dataclass(frozen=True, slots=True)
class LogHead:
    """A log's counters and state.

    Attributes:
        total: records appended so far (trimming does not lower it).
        bytes: their size in bytes.
        state: whether it takes appends.
        appended_at: Unix time of the last append (the gateway's clock), ``None`` if none.
    """

    total: int
    bytes: int
    state: LogState
    appended_at: float | None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """Records appended together, or a state change.

    Attributes:
        first: the index of its first record (for a mark: the log's total at the change).
        count: how many records ``data`` holds (0 for a mark).
        data: the records, each ending in ``\\n``.
        meta: what the appender attached (``b""`` if nothing).
        appended_at: Unix time of the append (the gateway's clock).
        position: where it stands in the log, for :meth:`SessionLog.trim` (opaque).
        mark: for a state change, the new state; ``None`` for records.
    """

    first: int
    count: int
    data: bytes
    meta: bytes
    appended_at: float
    position: str
    mark: LogState | None = None

    @property
    def end(self) -> int:
        """The index after its last record."""
        return self.first + self.count


class SessionLog(Protocol):
    """Named, append-only logs of records, with a state, read in order and trimmed.

    Log names are short ASCII strings (``ingest/<session id>``, ``races/<session id>``):
    letters, digits, ``/``, ``-``, ``_`` and ``.``, at most 120 characters.
    """

    #: The engine's name in ``/readyz``.
    name: str

    @property
    def identity(self) -> str:
        """Which log this is, recorded with every session it holds: ``spool:<id of the data
        folder>``, ``nats:<stream>``, ``redis:<db>/<prefix>``. Two nodes serve the same sessions
        only when their logs have the same identity."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other processes (nodes, workers) can reach the same logs."""
        ...

    async def open(self) -> None:
        """Connect, create what is missing; called once at start-up.

        Raises:
            ConfigurationError: the log cannot be reached or set up (names the setting).
        """
        ...

    async def close(self) -> None:
        """Release connections and files; appends in flight are finished or failed first."""
        ...

    async def check(self) -> None:
        """Return if the log is reachable now, raise otherwise."""
        ...

    async def create(self, log: str) -> None:
        """Make an empty, open log; creating one that exists does nothing.

        Raises:
            LogUnavailable, LogError.
        """
        ...

    async def append(self, log: str, records: bytes, count: int, *, meta: bytes = b"") -> Appended:
        """Append ``count`` records (``count >= 1``; ``records`` holds exactly that many
        lines, each ending in ``\\n``); returns once they are durable, as this log defines it.

        ``meta`` is at most 200 printable ASCII bytes.

        Raises:
            LogNotFound: no such log.
            LogClosed: the log is paused or sealed; nothing was appended.
            LogEntryTooLarge: the records are larger than the log takes in one append.
            LogUnavailable: the server did not acknowledge (the append may have landed).
            LogError: anything else that kept the records from being stored.
        """
        ...

    async def set_state(self, log: str, state: LogState) -> LogHead:
        """Pause, reopen or seal a log; returns its head once the change is durable (after
        a seal, ``total`` is final). Setting the state it has already does nothing.

        Raises:
            LogNotFound: no such log.
            LogClosed: the log is sealed and ``state`` is not ``sealed``.
            LogUnavailable, LogError.
        """
        ...

    async def head(self, log: str) -> LogHead:
        """The log's counters and state.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        ...

    def read(self, log: str, *, start: int = 0) -> AsyncGenerator[list[LogEntry], None]:
        """The retained entries holding records at or after index ``start`` (and the
        marks at or after it), in order, in lists, up to the end of the log when reading began; then
        the iterator ends. An entry that starts before ``start`` but ends after it is
        included whole. Trimmed entries are not retained: a reader that finds the first
        entry after ``start`` knows what was trimmed.

        Raises:
            LogNotFound, LogUnavailable, LogError: when reading begins or on the way.
        """
        ...

    def follow(self, log: str, *, reader: str) -> AsyncGenerator[list[LogEntry], None]:
        """Every retained entry, in order, then each new one as it lands, until the log is
        sealed (the seal's mark is the last entry yielded; on a log sealed already, after
        its last retained entry) or the generator is closed (``aclose``: close it, it may
        hold a server-side reader).

        ``reader`` names the follower (the processor's lease, so that a takeover is a new
        reader): a reader of a new name starts from the first retained entry, whatever
        others have read, and implementations with server-side readers forget the others.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        ...

    async def trim(self, log: str, position: str) -> None:
        """Forget the entry at ``position`` (a position this log gave for an entry of
        ``log``) and every entry before it: their records are
        safe elsewhere. The head's counters and state stay, and a seal mark is never
        forgotten (a follower of a sealed log always ends); the last entry may be kept.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        ...

    async def delete(self, log: str) -> None:
        """Remove the log and everything in it; deleting a missing log does nothing.

        Raises:
            LogUnavailable, LogError.
        """
        ...


def default_log_url(broker_url: str) -> str:
    """The log when ``SLUICEGATE_LOG_URL`` is unset: the broker's engine when the broker is
    shared (the same server; on Redis the same key prefix, on NATS a stream of its own
    named after the broker's, ``<stream>_LOG``), the local spool otherwise."""
    parts = urlsplit(broker_url)
    if parts.scheme in ("redis", "rediss"):
        return broker_url
    if parts.scheme == "nats":
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params["stream"] = params.get("stream", "SLUICEGATE") + "_LOG"
        return with_query(broker_url, params)
    return "spool://"


def log_from_url(url: str, *, data_dir: Path, fsync: bool | Mapping[str, bool], clock: Clock) -> SessionLog:
    """The log named by ``SLUICEGATE_LOG_URL``.

    Args:
        url: ``spool://``, ``nats://...`` or ``redis://...``.
        data_dir: where the spool keeps its files.
        fsync: whether the spool forces each group commit to disk before acknowledging;
            a mapping decides by the start of a log's name (``{"races/": False}``), any
            other log is forced.
        clock: timestamps of appends.

    Raises:
        ConfigurationError: for a scheme no implementation handles, or bad parameters.
    """
    scheme = url.partition("://")[0]
    if scheme == "spool":
        from sluicegate.engines.log.spool import SpoolLog

        if urlsplit(url).netloc or urlsplit(url).path not in ("", "/"):
            raise ConfigurationError("SLUICEGATE_LOG_URL: spool:// takes no host or path (it lives in the data folder)")
        return SpoolLog(data_dir / "log", fsync=fsync, clock=clock)
    if scheme == "nats":
        from sluicegate.engines.log.nats import NatsLog

        return NatsLog(url, clock=clock)
    if scheme in ("redis", "rediss"):
        from sluicegate.engines.log.redis import RedisLog

        return RedisLog(url, clock=clock)
    raise ConfigurationError(
        f"SLUICEGATE_LOG_URL has an unsupported scheme {scheme!r}; use spool://, nats:// or redis://"
    )


def split_query(url: str, known: set[str], setting: str = "SLUICEGATE_LOG_URL") -> tuple[str, dict[str, str]]:
    """The URL without its query, and the query's parameters (each given once).

    Raises:
        ConfigurationError: for a parameter not in ``known``.
    """
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigurationError(f"{setting}: unknown parameter(s) {', '.join(unknown)}")
    return urlunsplit(parts._replace(query="")), params


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` as its query."""
    return urlunsplit(urlsplit(url)._replace(query=urlencode(params)))
