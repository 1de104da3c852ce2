"""A session log on NATS JetStream (``SLUICEGATE_LOG_URL=nats://host:port[?stream=NAME&replicas=N]``).

Layout: one stream (default ``SLUICEGATE_LOG``) on file storage with ``replicas`` copies
and limits retention without any limit: the server discards nothing, since the log *is*
the durability. Each log is one subject, ``<stream lowercased>.log.<token>``, ``<token>``
the log name in base32 (as the broker names its channels). The messages and their
headers are laid out in :mod:`~sluicegate.engines.log.nats_messages`: the subject's last
message carries the log's head, so :meth:`NatsLog.head` is one ``get_last_msg``, and a
subject without messages is a log that does not exist. Writes are chained, idempotent
and group-committed by :mod:`~sluicegate.engines.log.nats_writer`.

Acknowledgement: an append returns once JetStream has acknowledged the publish of the
message (or of the last part) that holds it, which it does once the stream's replicas
have stored it. That is this log's durability promise.

Reading: ``read`` and ``follow`` use pull consumers through nats-py (``add_consumer``
with a name chosen first, then ``pull_subscribe_bind``), filtered on the log's subject,
delivering everything retained, without acks (progress is kept in the database), in
memory with one replica, and removed by the server after ``CONSUMER_IDLE_SECONDS``
without pulls should the node die. ``read`` stops at the subject's last message when it
began. ``follow`` long-polls with heartbeats (one request per ``FOLLOW_WAIT_SECONDS`` on
a quiet log, no busy loop), recreates its consumer where it left off if the server
dropped it, and names it after the reader, so a takeover is a new consumer; on a log
sealed already it reads to the end (its mark may have been trimmed). Closing or
cancelling either deletes its consumer.

Deliberate divergences: ``head`` and every refused publish read the last message with its
payload (up to ``max_payload``): direct gets could skip it but may be answered by a
lagging replica, which would break the chain. The consumers of earlier readers are not
looked for when a new reader follows a log: they go when their node stops pulling. The
``trim`` messages published after the last trimmed entry stay (small, without records)
until a later trim passes them or the log is deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import secrets
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from sluicegate.engines.broker.jetstream import STREAM_NAME_IN_USE
from sluicegate.engines.log import LogEntryTooLarge, LogNotFound, LogState, LogUnavailable, split_query
from sluicegate.engines.log.frames import check_meta
from sluicegate.engines.log.nats_messages import Reassembler, parse_position
from sluicegate.engines.log.nats_writer import Writer, translated
from sluicegate.engines.nats_connect import connect
from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from sluicegate.clock import Clock
    from sluicegate.engines.log import Appended, LogEntry, LogHead

__all__ = ["NatsLog"]

_log = logging.getLogger("sluicegate.log")

#: The stream when the URL names none.
DEFAULT_STREAM = "SLUICEGATE_LOG"
#: Seconds ``open`` tries to reach the server before giving up.
#: Seconds one request to JetStream may take.
REQUEST_TIMEOUT_SECONDS = 5.0
#: How long JetStream remembers a Nats-Msg-Id.
DUPLICATE_WINDOW_SECONDS = 120.0
#: Bytes of a message left for its headers.
HEADROOM = 4096
#: The largest append taken (published as parts of at most ``max_payload``).
MAX_APPEND_BYTES = 64 * 1024 * 1024
#: Seconds a follower's pull request waits for new messages before it is renewed.
FOLLOW_WAIT_SECONDS = 5.0
#: Messages one pull request asks for.
READ_BATCH = 64
#: Seconds without pull requests after which the server deletes a consumer of ours.
CONSUMER_IDLE_SECONDS = 60.0


def _token(log: str) -> str:
    return base64.b32encode(log.encode("utf-8", "surrogatepass")).decode().rstrip("=") or "_"


def _follow_name(log: str, reader: str) -> str:
    """The consumer of ``reader`` following ``log``."""
    digest = hashlib.blake2b(f"{log}\n{reader}".encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"sgf-{re.sub(r'[^A-Za-z0-9_-]', '_', reader)[:40]}-{digest}"


class _Consumer:
    """A pull consumer of one log's subject, named before it is created so that it can be
    deleted even if its creation is cancelled half-way."""

    def __init__(self, nc: NATS, stream: str, subject: str, name: str) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=REQUEST_TIMEOUT_SECONDS)
        self._stream = stream
        self._subject = subject
        self._name = name
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self, seq: int = 0) -> int:
        """Create it, delivering from sequence ``seq`` (everything retained for 0); returns
        how many messages it has to deliver."""
        config = api.ConsumerConfig(
            name=self._name,
            filter_subject=self._subject,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if seq else api.DeliverPolicy.ALL,
            opt_start_seq=seq or None,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=CONSUMER_IDLE_SECONDS,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self._js.add_consumer(self._stream, config=config)
        self._sub = await self._js.pull_subscribe_bind(consumer=self._name, stream=self._stream)
        return info.num_pending or 0

    async def _fetch(self, want: int, wait: float, heartbeat: float | None = None) -> list[Msg]:
        if self._sub is None:
            raise nats.errors.BadSubscriptionError
        # What a request that expired delivered late is taken first: ask for more than that.
        return await self._sub.fetch(max(want, self._sub.pending_msgs + 1), timeout=wait, heartbeat=heartbeat)

    async def read(self, entries: Reassembler, last: int, pending: int) -> AsyncIterator[list[LogEntry]]:
        """The entries of its messages up to sequence ``last`` (of the ``pending`` it has)."""
        seq = 0
        while seq < last and pending:
            try:
                msgs = await self._fetch(min(pending, READ_BATCH), REQUEST_TIMEOUT_SECONDS)
            except nats.errors.TimeoutError:
                if await self._alive():
                    raise
                await self.stop()  # idle too long between batches: the server dropped it
                pending = await self.start(seq + 1)
                continue
            found: list[LogEntry] = []
            for msg in msgs:
                seq, pending = msg.metadata.sequence.stream, msg.metadata.num_pending
                if seq > last:
                    break
                found.extend(entries.feed(seq, msg.headers, msg.data))
            if found:
                yield found

    async def follow(
        self, entries: Reassembler, pending: int, wait: float, idle: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[list[LogEntry]]:
        """The entries of every message, then of each new one, until the seal's mark; ``idle``
        runs each time a pull request of ``wait`` seconds ends with nothing new."""
        want, cursor = min(pending, READ_BATCH) or 1, 0
        while not entries.sealed:
            try:
                msgs = await self._fetch(want, wait, wait / 5)
            except nats.js.errors.FetchTimeoutError:  # nothing new, and the heartbeats say it is there
                await idle()
                want = 1
                continue
            except nats.errors.TimeoutError:  # no answer at all: was it dropped by the server?
                if not await self._alive():
                    await self.stop()
                    await self.start(cursor + 1)
                want = 1
                continue
            found: list[LogEntry] = []
            for msg in msgs:
                want = min(msg.metadata.num_pending, READ_BATCH) or 1
                if msg.metadata.sequence.stream > cursor and not entries.sealed:
                    cursor = msg.metadata.sequence.stream
                    found.extend(entries.feed(cursor, msg.headers, msg.data))
            if found:
                yield found

    async def _alive(self) -> bool:
        try:
            await self._js.consumer_info(self._stream, self._name)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def forget(self) -> None:
        """Delete a consumer of this name that an earlier follower left."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(self._stream, self._name)

    async def stop(self) -> None:
        """Stop listening and delete it, as far as the connection allows."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._js.delete_consumer(self._stream, self._name)


class NatsLog:
    """Session logs in a JetStream stream, shared by every node that points at it.

    Args:
        url: ``nats://[user:password@]host:port``; ``stream`` names the stream (default
            ``SLUICEGATE_LOG``), ``replicas`` its copies (1 to 5, default 1).
        clock: the time appends are stamped with.

    Raises:
        ConfigurationError: an unknown parameter, a stream name JetStream cannot use,
            or replicas out of range (naming ``SLUICEGATE_LOG_URL``).
    """

    name = "log"

    def __init__(self, url: str, *, clock: Clock) -> None:
        base, params = split_query(url, {"stream", "replicas"})
        stream = params.get("stream", DEFAULT_STREAM)
        if not (0 < len(stream) <= 100 and all(c.isascii() and (c.isalnum() or c in "-_") for c in stream)):
            raise ConfigurationError("SLUICEGATE_LOG_URL: stream must be 1 to 100 letters, digits, - or _")
        replicas = params.get("replicas", "1")
        if not (replicas.isascii() and replicas.isdigit() and 1 <= int(replicas) <= 5):
            raise ConfigurationError("SLUICEGATE_LOG_URL: replicas must be a number from 1 to 5")
        self._stream = stream
        self._replicas = int(replicas)
        self._root = f"{stream.lower()}.log"
        self._url = base
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._writer = Writer(stream, self.subject, clock)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def identity(self) -> str:
        return f"nats:{self._stream}"

    @property
    def shared(self) -> bool:
        return True

    @property
    def js(self) -> JetStreamContext:
        """The connection's JetStream context.

        Raises:
            LogUnavailable: the log is not open.
        """
        if self._js is None:
            raise LogUnavailable("the log is not open")
        return self._js

    def subject(self, log: str) -> str:
        """The subject that holds ``log``."""
        return f"{self._root}.{_token(log)}"

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run clean-up in the background; :meth:`close` waits for it."""

        async def run() -> None:
            try:
                await work
            except Exception:
                _log.warning("log clean-up failed", exc_info=True)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _consumer(self, log: str, name: str) -> _Consumer:
        if self._nc is None:
            raise LogUnavailable("the log is not open")
        return _Consumer(self._nc, self._stream, self.subject(log), name)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (within ``OPEN_TIMEOUT_SECONDS``; reconnecting forever afterwards), and
        create the stream or bring its configuration up to date.

        Raises:
            ConfigurationError: NATS cannot be reached, has no JetStream, or the stream
                cannot take this configuration (naming ``SLUICEGATE_LOG_URL``).
        """
        nc = await connect(
            self._url,
            name="sluicegate-log",
            setting="SLUICEGATE_LOG_URL",
            log=_log,
            in_use=lambda: self._nc is not None,
        )
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            await self._set_up(js)
        except BaseException as exc:
            await nc.close()
            if not isinstance(exc, nats.errors.Error | OSError):
                raise
            raise ConfigurationError(f"SLUICEGATE_LOG_URL: cannot set up stream {self._stream} ({exc})") from None
        self._nc, self._js = nc, js
        self._writer.attach(js, nc.max_payload - HEADROOM)

    async def _set_up(self, js: JetStreamContext) -> None:
        config = api.StreamConfig(
            name=self._stream,
            subjects=[f"{self._root}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=self._replicas,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
            max_msgs_per_subject=-1,
            max_msg_size=-1,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            if (await js.stream_info(self._stream)).config.subjects != config.subjects:
                raise ConfigurationError(
                    f"SLUICEGATE_LOG_URL: stream {self._stream} holds other subjects; name a stream of its own"
                ) from None
            await js.update_stream(config)  # another node, or an earlier version of the settings

    async def close(self) -> None:
        """Finish the writes queued, then release the connection."""
        await self._writer.drain()
        while self._tasks:
            await asyncio.gather(*self._tasks)
        nc, self._nc, self._js = self._nc, None, None
        self._writer.attach(None)
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()

    async def check(self) -> None:
        """Return if the stream answers now.

        Raises:
            LogUnavailable, LogError.
        """
        with translated():
            await self.js.stream_info(self._stream)

    # -- the SessionLog protocol ----------------------------------------------------------------

    async def create(self, log: str) -> None:
        """Publish the log's ``begin`` message, unless its subject holds messages already.

        Raises:
            LogUnavailable, LogError.
        """
        with translated():
            await self._writer.create(log)

    async def append(self, log: str, records: bytes, count: int, *, meta: bytes = b"") -> Appended:
        """Append records; returns once JetStream acknowledged the message holding them.

        Raises:
            ValueError: ``meta`` a header cannot carry.
            LogNotFound, LogClosed, LogEntryTooLarge, LogUnavailable, LogError.
        """
        check_meta(meta)
        if len(records) > MAX_APPEND_BYTES:
            raise LogEntryTooLarge(f"an append takes at most {MAX_APPEND_BYTES} bytes")
        with translated():
            return await self._writer.append(log, records, count, meta)

    async def set_state(self, log: str, state: LogState) -> LogHead:
        """Publish a mark after the log's last message, unless the log is in ``state`` already.

        Raises:
            LogNotFound, LogClosed, LogUnavailable, LogError.
        """
        with translated():
            return await self._writer.set_state(log, state)

    async def head(self, log: str) -> LogHead:
        """The head its subject's last message carries.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        with translated():
            return (await self._writer.load(log)).head.public()

    async def read(self, log: str, *, start: int = 0) -> AsyncGenerator[list[LogEntry], None]:
        """The retained entries up to the subject's last message when reading began.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        with translated():
            last = await self._writer.load(log)
            consumer = self._consumer(log, f"sgr-{secrets.token_hex(8)}")
            try:
                pending = await consumer.start()
                async for entries in consumer.read(Reassembler(last.head.trim, start), last.seq, pending):
                    yield entries
            finally:
                await asyncio.shield(self._spawn(consumer.stop()))

    async def follow(self, log: str, *, reader: str) -> AsyncGenerator[list[LogEntry], None]:
        """Every retained entry, then each new one, until the seal's mark.

        Raises:
            LogNotFound, LogUnavailable, LogError.
        """
        with translated():
            last = await self._writer.load(log)
            entries = Reassembler(last.head.trim)
            consumer = self._consumer(log, _follow_name(log, reader))
            try:
                await consumer.forget()
                pending = await consumer.start()
                if last.head.state is LogState.SEALED:  # nothing can come (and its mark may be trimmed)
                    batches = consumer.read(entries, last.seq, pending)
                else:
                    batches = consumer.follow(entries, pending, FOLLOW_WAIT_SECONDS, lambda: self._exists(log))
                async for found in batches:
                    yield found
            finally:
                await asyncio.shield(self._spawn(consumer.stop()))

    async def _exists(self, log: str) -> None:
        """Raise LogNotFound if the log's subject holds nothing (it was deleted)."""
        subject = self.subject(log)
        info = await self.js.stream_info(self._stream, subjects_filter=subject)
        if not (info.state.subjects or {}).get(subject):
            raise LogNotFound(f"no log named {log}")

    async def trim(self, log: str, position: str) -> None:
        """Publish the new trim point after the log's last message, then purge before it.

        Raises:
            LogNotFound, LogUnavailable, LogError: also for a position this log never gave.
        """
        point = parse_position(position)
        with translated():
            await self._writer.trim(log, point)

    async def delete(self, log: str) -> None:
        """Purge the log's subject; nothing is left of it.

        Raises:
            LogUnavailable, LogError.
        """
        with translated():
            await self._writer.delete(log)
