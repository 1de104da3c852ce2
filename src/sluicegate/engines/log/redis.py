"""A session log on Redis Streams (``SLUICEGATE_LOG_URL=redis://host:6379/0[?prefix=NAME&wait=N]``).

Each log is one stream plus a head hash, keys under ``<prefix>:log:{<name>}`` (the layout,
positions and hash tags: :mod:`sluicegate.engines.log.redis_layout`). Every step that must
be atomic is one Lua script (``redis_scripts/*.lua``): a group commit (check the log exists
and is open, count, ``XADD`` the frames), a state change (the mark goes into the stream in
the same step, so once :meth:`RedisLog.set_state` returns no node's append is accepted
against the old state), a follower's takeover, and a trim.

Group commit: appends to one log on this process queue while the previous script call for
it is in flight; the next call carries all of them as one stream entry (consecutive appends
with the same ``meta`` share one frame). Each call has an id the script remembers for two
minutes, so that a call redis-py retries after a lost reply returns the first answer instead
of appending again.

What an acknowledgement means here, said plainly: the records are in the Redis primary's
memory. With ``appendonly yes`` and ``appendfsync always`` they are on its disk before the
reply; with ``appendfsync everysec`` (Redis's default for the AOF) up to a second of
acknowledged appends can be lost if Redis crashes; without the AOF, everything since the
last snapshot. ``wait=N`` adds ``WAIT N`` (pipelined with each append and state change):
the reply then also means N replicas hold the write in their memory, and fewer within
``wait_timeout_ms`` (default 1000) is a :class:`LogUnavailable`, although the records are in
the primary (and may be lost if it fails over before a replica has them).

Followers read through consumer groups, one per reader (``r:<reader>``), on a connection
of their own (``XREADGROUP ... BLOCK`` holds it); starting a follower destroys the log's
other groups, so a processor that lost its lease can read no more. A follower first reads
what its group was given before and has not trimmed (its pending list), then new entries.
Trimming acknowledges what it drops in every group, so no pending list names a deleted entry.

Deliberate divergences from the protocol's docstrings: :attr:`RedisLog.identity` is
``redis:<db>/<prefix>`` (the database matters as much as the prefix), not ``redis:<prefix>``;
and a trim of a sealed log keeps its last stream entry, the seal's mark, so that a follower
started later still ends (the protocol allows keeping the last entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
from sluicegate.engines.log.frames import check_meta, mark_frame
from sluicegate.engines.log.redis_layout import (
    PendingAppend,
    commit_frames,
    entries_of,
    head_of,
    load_script,
    log_keys,
    parse_options,
    parse_position,
    take_commit,
    trim_point,
)
from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterator

    from sluicegate.clock import Clock
    from sluicegate.engines.log.redis_layout import LogKeys

__all__ = ["RedisLog"]

#: Largest single append (bytes of records); Redis takes more, but one script call this big
#: already holds the server for a while.
MAX_APPEND = 32 * 1024 * 1024
#: A group commit stops gathering appends at this many bytes (one larger append goes alone).
COMMIT_BYTES = 1024 * 1024
#: How long the append script remembers a commit id (ms): longer than redis-py's retries last.
REMEMBER_MS = 120_000
#: Connections for commands; more concurrent commands wait for one.
COMMAND_CONNECTIONS = 64
#: Seconds a command may take before its connection counts as broken (then retried).
COMMAND_TIMEOUT = 10.0
#: How long one XREADGROUP waits for new entries (ms) before it asks again.
BLOCK_MS = 2000
#: Stream entries one XRANGE or XREADGROUP returns at most.
PAGE = 100


def _ms(clock: Clock) -> int:
    return int(clock.now().timestamp() * 1000)


@contextlib.contextmanager
def _translated(log: str) -> Iterator[None]:
    """Turn Redis failures into log errors, once, at the engine boundary."""
    try:
        yield
    except LogError:
        raise  # ours already (LogUnavailable is an OSError too)
    except ResponseError as exc:
        code, _, detail = str(exc).partition(" ")
        if code == "SGNOLOG":
            raise LogNotFound(f"no log is named {log}") from None
        if code == "SGCLOSED":
            raise LogClosed(log, LogState(detail)) from None
        raise LogError(f"the log server refused a command on {log} ({code})") from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise LogUnavailable(f"the log server is unavailable ({type(exc).__name__})") from None
    except RedisError as exc:
        raise LogError(f"the log server failed on {log} ({type(exc).__name__})") from None


class _Queue:
    """Appends to one log waiting for its next group commit."""

    __slots__ = ("items", "keys", "task")

    def __init__(self, keys: LogKeys) -> None:
        self.keys = keys
        self.items: list[PendingAppend] = []
        self.task: asyncio.Task[None] | None = None


class RedisLog:
    """Session logs on Redis Streams, shared by every node that uses the same Redis and prefix.

    Args:
        url: ``redis://`` or ``rediss://`` URL (a password in it is used); ``prefix``
            (default ``sluicegate``) namespaces the keys, ``wait`` (default 0: off) is the
            replicas each append waits for, ``wait_timeout_ms`` (default 1000) how long.
        clock: timestamps of appends and marks.

    Raises:
        ConfigurationError: an unknown parameter or a bad value in ``url``.
    """

    name = "log"

    def __init__(self, url: str, *, clock: Clock) -> None:
        self._options = parse_options(url)
        self._clock = clock
        self._client: aioredis.Redis | None = None
        self._queues: dict[str, _Queue] = {}
        self._followers: set[aioredis.Redis] = set()
        self._commit_ids = itertools.count()
        self._node = secrets.token_hex(6)
        wait_s = self._options.wait_timeout_ms / 1000 if self._options.wait else 0.0
        self._socket_timeout = COMMAND_TIMEOUT + wait_s

    @property
    def identity(self) -> str:
        """``redis:<db>/<prefix>``: nodes on the same database and prefix share the logs."""
        return f"redis:{self._options.db}/{self._options.prefix}"

    @property
    def shared(self) -> bool:
        """Always: every node on the same Redis reaches the same logs."""
        return True

    @property
    def client(self) -> aioredis.Redis:
        """Commands: a bounded pool; a command waits for a free connection rather than failing."""
        if self._client is None:
            raise LogUnavailable("the log is not open")
        return self._client

    async def open(self) -> None:
        """Connect and load the scripts.

        Raises:
            ConfigurationError: Redis cannot be reached (names the setting).
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            self._options.url,
            max_connections=COMMAND_CONNECTIONS,
            timeout=COMMAND_TIMEOUT,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3),
        )
        client = aioredis.Redis(connection_pool=pool)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            await pool.aclose()
            raise ConfigurationError(f"SLUICEGATE_LOG_URL: cannot reach Redis ({type(exc).__name__})") from None
        self._append_script = client.register_script(load_script("append"))
        self._state_script = client.register_script(load_script("set_state"))
        self._follow_script = client.register_script(load_script("follow"))
        self._trim_script = client.register_script(load_script("trim"))
        self._client = client

    async def close(self) -> None:
        """Finish (or fail) the group commits in flight, end the followers (they raise
        :class:`LogUnavailable`), and release every connection."""
        while self._queues:
            tasks = [queue.task for queue in self._queues.values() if queue.task is not None]
            if not tasks:
                break
            await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        for follower in list(self._followers):
            await follower.connection_pool.disconnect()
        if client is not None:
            await client.aclose()
            await client.connection_pool.aclose()

    async def check(self) -> None:
        """Return if Redis answers.

        Raises:
            LogUnavailable, LogError.
        """
        with _translated("-"):
            await self.client.ping()

    async def create(self, log: str) -> None:
        """Make the log's head hash (an existing log is left as it is).

        Raises:
            LogUnavailable, LogError.
        """
        keys = log_keys(self._options.prefix, log)
        with _translated(log):
            await self.client.hsetnx(keys.head, "state", LogState.OPEN.value)

    async def append(self, log: str, records: bytes, count: int, *, meta: bytes = b"") -> Appended:
        """Append records in this process's next group commit to the log.

        Raises:
            ValueError: ``meta`` a frame header cannot carry.
            LogNotFound, LogClosed, LogEntryTooLarge, LogUnavailable, LogError: see
                :meth:`sluicegate.engines.log.SessionLog.append`.
        """
        check_meta(meta)
        if len(records) > MAX_APPEND:
            raise LogEntryTooLarge(f"an append to a Redis log takes at most {MAX_APPEND} bytes")
        if self._client is None:
            raise LogUnavailable("the log is not open")
        queue = self._queues.get(log)
        if queue is None:
            queue = self._queues[log] = _Queue(log_keys(self._options.prefix, log))
        done: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        queue.items.append(PendingAppend(records, count, meta, done))
        if queue.task is None:
            queue.task = asyncio.create_task(self._commit(log, queue))
        return await done

    async def _commit(self, log: str, queue: _Queue) -> None:
        try:
            while queue.items:
                batch = take_commit(queue.items, COMMIT_BYTES)
                appended_ms = _ms(self._clock)
                try:
                    first, total = await self._store(
                        log,
                        queue.keys,
                        f"{self._node}-{next(self._commit_ids)}",
                        commit_frames(batch, appended_ms),
                        sum(item.count for item in batch),
                        sum(len(item.records) for item in batch),
                        appended_ms,
                    )
                except Exception as exc:
                    error = exc if isinstance(exc, LogError) else LogError(f"cannot append to {log}")
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(error)
                    continue
                except BaseException:
                    error = LogUnavailable(f"the append to {log} was interrupted")
                    for item in batch + queue.items:
                        if not item.done.done():
                            item.done.set_exception(error)
                    queue.items.clear()
                    raise
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(Appended(first, total))
                    first += item.count
        finally:
            queue.task = None
            if not queue.items and self._queues.get(log) is queue:
                del self._queues[log]

    async def _store(
        self, log: str, keys: LogKeys, commit: str, frames: bytes, count: int, size: int, appended_ms: int
    ) -> tuple[int, int]:
        """Run the append script once for a group commit (and ``WAIT``, if configured);
        running it again with the same ``commit`` id returns the first run's answer.

        Returns:
            The index of the commit's first record, and the log's total after it.
        """
        args: list[str | int | bytes] = [commit, count, size, appended_ms, frames, REMEMBER_MS]
        with _translated(log):
            if self._options.wait:
                async with self.client.pipeline(transaction=False) as pipe:
                    await self._append_script(keys=keys.all, args=args, client=pipe)
                    pipe.wait(self._options.wait, self._options.wait_timeout_ms)
                    reply, replicas = await pipe.execute()
                self._check_replicas(replicas)
            else:
                reply = await self._append_script(keys=keys.all, args=args)
        return int(reply[0]), int(reply[1])

    def _check_replicas(self, replicas: Any) -> None:
        if int(replicas) < self._options.wait:
            raise LogUnavailable(
                f"only {int(replicas)} of {self._options.wait} Redis replicas acknowledged within "
                f"{self._options.wait_timeout_ms} ms: the write is on the primary only and may be lost if it fails over"
            )

    async def set_state(self, log: str, state: LogState) -> LogHead:
        """Change the log's state, with its mark in the stream, in one script.

        Raises:
            LogNotFound, LogClosed (the log is sealed), LogUnavailable, LogError.
        """
        keys = log_keys(self._options.prefix, log)
        args = [state.value, mark_frame(state, _ms(self._clock))]
        with _translated(log):
            if self._options.wait:
                async with self.client.pipeline(transaction=False) as pipe:
                    await self._state_script(keys=[keys.stream, keys.head], args=args, client=pipe)
                    pipe.wait(self._options.wait, self._options.wait_timeout_ms)
                    reply, replicas = await pipe.execute()
                self._check_replicas(replicas)
            else:
                reply = await self._state_script(keys=[keys.stream, keys.head], args=args)
        fields: dict[bytes, bytes] = dict(zip((b"state", b"total", b"bytes", b"at"), reply, strict=True))
        head = head_of(fields)
        if head is None:
            raise LogError(f"the log server answered a state change of {log} with no state")
        return head

    async def head(self, log: str) -> LogHead:
        """The log's counters and state (one ``HGETALL``).

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        keys = log_keys(self._options.prefix, log)
        with _translated(log):
            fields: Any = await self.client.hgetall(keys.head)
        head = head_of(fields)
        if head is None:
            raise LogNotFound(f"no log is named {log}")
        return head

    async def read(self, log: str, *, start: int = 0) -> AsyncGenerator[list[LogEntry], None]:
        """The retained entries from ``start``, in pages of ``XRANGE``, up to the stream's
        last entry when reading began.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        keys = log_keys(self._options.prefix, log)
        with _translated(log):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.head, ["state", "tid", "tend"])
                pipe.xrevrange(keys.stream, "+", "-", count=1)
                (state, tid, tend), newest = await pipe.execute()
        if state is None:
            raise LogNotFound(f"no log is named {log}")
        if not newest:
            return
        trimmed, last, cursor = trim_point(tid, tend), newest[0][0], b"-"
        while True:
            with _translated(log):
                page: list[Any] = await self.client.xrange(keys.stream, cursor, last, count=PAGE) or []
            found = [e for entry_id, fields in page for e in entries_of(entry_id, fields, start=start, trimmed=trimmed)]
            if found:
                yield found
            if len(page) < PAGE or page[-1][0] == last:
                return
            cursor = b"(" + page[-1][0]

    async def follow(self, log: str, *, reader: str) -> AsyncGenerator[list[LogEntry], None]:
        """Every retained entry, then each new one, through the reader's consumer group,
        until the seal's mark; starting destroys the groups of the log's other readers.

        Raises:
            LogNotFound: no such log (or it was deleted while followed).
            LogError: another reader took the log over (this one's group is gone).
            LogUnavailable: Redis did not answer, or this log was closed.
        """
        keys = log_keys(self._options.prefix, log)
        group = f"r:{reader}"
        with _translated(log):
            tid, tend = await self._follow_script(keys=[keys.stream, keys.head], args=[group])
        trimmed = trim_point(tid, tend)
        # A connection of its own, without redis-py's retries: a retried XREADGROUP '>' whose
        # reply was lost would skip entries (they were delivered), so a broken read ends the follow.
        client = aioredis.Redis.from_url(
            self._options.url,
            single_connection_client=True,
            client_name=f"{self._options.prefix}-follower",
            socket_timeout=BLOCK_MS / 1000 + COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._followers.add(client)
        try:
            cursor = b"0"  # first what this reader was given before and has not trimmed
            while True:
                batch = await self._read_group(client, keys, log, reader, cursor)
                if cursor != b">":
                    if not batch:
                        cursor = b">"
                        continue
                    cursor = batch[-1][0]
                entries = [
                    e for entry_id, fields in batch if fields for e in entries_of(entry_id, fields, trimmed=trimmed)
                ]
                sealed = next((i for i, e in enumerate(entries) if e.mark is LogState.SEALED), None)
                if sealed is not None:
                    yield entries[: sealed + 1]
                    return
                if entries:
                    yield entries
        finally:
            self._followers.discard(client)
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(client.aclose())

    async def _read_group(
        self, client: aioredis.Redis, keys: LogKeys, log: str, reader: str, cursor: bytes
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """One XREADGROUP: this reader's pending entries after ``cursor``, or (``>``) new ones."""
        try:
            reply: Any = await client.xreadgroup(
                f"r:{reader}", reader, {keys.stream: cursor}, count=PAGE, block=BLOCK_MS if cursor == b">" else None
            )
        except ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                with _translated(log):
                    raise
            # The group is gone: the log was deleted, or another reader took it over.
            with _translated(log):
                exists = await self.client.exists(keys.head)
            if not exists:
                raise LogNotFound(f"no log is named {log}") from None
            raise LogError(f"the reader {reader} of {log} was replaced by another") from None
        except (RedisError, OSError) as exc:
            if self._client is None:
                raise LogUnavailable("the log was closed") from None
            raise LogUnavailable(f"the log server is unavailable ({type(exc).__name__})") from None
        if not reply:
            return []
        batch: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
        return batch

    async def trim(self, log: str, position: str) -> None:
        """Forget the entry at ``position`` and all before it (one script).

        Raises:
            LogNotFound, LogUnavailable, LogError (also for a position this log never gave).
        """
        keys = log_keys(self._options.prefix, log)
        ms, seq, end = parse_position(position)
        with _translated(log):
            await self._trim_script(keys=[keys.stream, keys.head], args=[ms, seq, end])

    async def delete(self, log: str) -> None:
        """Remove the log's keys (its stream and groups, head, commit ids).

        Raises:
            LogUnavailable, LogError.
        """
        keys = log_keys(self._options.prefix, log)
        with _translated(log):
            await self.client.delete(*keys.all)
