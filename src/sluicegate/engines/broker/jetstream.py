"""A broker on NATS JetStream (``SLUICEGATE_BROKER_URL=nats://host:port[?stream=NAME]``).

All channels of a gateway share one stream (default ``SLUICEGATE``), the "channel
group" of the design notes: each channel is one subject, ``<stream>.ch.<token>`` with
the stream name lowercased and ``<token>`` the channel name's UTF-8 bytes in base32
without padding (``_`` for the empty name), so any string, dots, wildcards and spaces
included, is one subject token. The stream keeps ``history_size`` messages per subject
(``max_msgs_per_subject``, oldest discarded), on file storage. Positions are the
stream's sequence numbers, in decimal, so every node understands every other node's
positions and a client resumes with its Last-Event-ID on any node.

Each message carries two headers: ``Sg-Time``, published_at from the gateway's clock,
and ``Sg-Prev``, the sequence of the channel's previous message (``0`` for none). A
publish sends ``Nats-Expected-Last-Subject-Sequence: <Sg-Prev>``, so the server refuses
it if another node published on the channel meanwhile; the publisher then reads the
channel's real last message and tries again. That chain is what makes resume exact
across nodes: resuming after position *s*, nothing was lost iff the first message of
the channel after *s* is retained, not expired, and has ``Sg-Prev == s`` (or the channel
has nothing after *s*); anything else is an ``expired`` :class:`~sluicegate.engines.broker.Gap`.

Expiry follows the gateway's clock, not the server's: a message whose ``Sg-Time`` is
older than ``history_seconds`` is treated as gone, and when a read meets such messages
the channel's subject is purged up to the newest expired one. That newest expired
message is kept on purpose, as the channel's last known position and the head of its
chain, and is never returned. The stream's ``max_age`` of ``2 x history_seconds`` is
only a backstop in real time, so that abandoned channels leave nothing behind.

Reads use the JetStream API on the stream leader (``STREAM.MSG.GET`` next-by-subject
and last-by-subject, linearizable after a publish's acknowledgement); a read of more
than a few messages switches to an ephemeral pull consumer filtered on the channel's
subject, fetched in batches and deleted when done. Live delivery runs through one reader
per channel per node (:mod:`sluicegate.engines.broker.fanout`): an ephemeral pull
consumer started after the reader's cursor, with one long-poll request outstanding at a
time, deleted when the reader stops (its ``inactive_threshold`` removes it if the node
dies first).

Deliberate divergences: direct gets (``allow_direct``) would be cheaper per read, but
replicas may answer them with a slightly stale view, which could break the exact seam
between a subscriber's backlog and its live messages in a cluster, so the stream does
not enable them. A channel idle for ``2 x history_seconds`` of real time loses its last
message to ``max_age`` and with it the head of its chain: a client resuming after that
position is told of a gap even if nothing was lost (conservative, never a silent skip).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from sluicegate.engines.broker import BrokerMessage, ChannelStats, Gap, History
from sluicegate.engines.broker.fanout import ChannelReader, FanoutSubscription, ReaderPool
from sluicegate.engines.locks import NameLocks
from sluicegate.engines.nats_connect import connect
from sluicegate.errors import APIError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

    from sluicegate.clock import Clock

__all__ = ["JetStreamBroker"]

log = logging.getLogger("sluicegate.broker")

PREV = "Sg-Prev"
TIME = "Sg-Time"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence check.
WRONG_LAST_SEQUENCE = 10071
#: JetStream's error code for "stream name already in use with a different configuration".
STREAM_NAME_IN_USE = 10058

#: Seconds one request to JetStream may take.
REQUEST_TIMEOUT_SECONDS = 5.0
#: Seconds a live reader's pull request waits for new messages before it is renewed.
READ_WAIT_SECONDS = 5.0
#: Seconds past a pull request's expiry after which its consumer is presumed lost.
READ_GRACE_SECONDS = 2.0
#: Messages one pull request asks for.
READ_BATCH = 256
#: Messages a scan reads one by one before it starts a consumer for the rest.
SINGLE_READS = 8
#: Seconds without pull requests after which the server deletes a consumer of ours.
CONSUMER_IDLE_SECONDS = 60.0
#: Attempts a publish makes when other nodes keep publishing on the same channel.
PUBLISH_ATTEMPTS = 50
#: Channels whose last sequence (and last purge) a node remembers.
CACHE_SIZE = 10_000
#: Channels whose statistics ``channels`` reads at the same time.
STATS_CONCURRENCY = 32


class _Entry(NamedTuple):
    """One stored message, decoded."""

    seq: int
    prev: int
    time: float
    data: bytes


def _entry(seq: int, headers: Mapping[str, str] | None, data: bytes | None) -> _Entry:
    headers = headers or {}
    try:
        prev, time = int(headers.get(PREV, "0")), float(headers.get(TIME, "0"))
    except ValueError:  # not published by a gateway: unchained, and expired at once
        prev, time = 0, 0.0
    return _Entry(seq, prev, time, data or b"")


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


def _parse(position: str) -> int:
    """A position as a stream sequence.

    Raises:
        APIError: ``invalid_argument`` for something no stream sequence can be.
    """
    if position.isascii() and position.isdigit():
        with contextlib.suppress(ValueError):  # ValueError: too many digits for int()
            if (seq := int(position)) > 0:
                return seq
    raise APIError.invalid_argument(f"Invalid position {position!r}: expected a stream sequence number")


def _token(channel: str) -> str:
    return base64.b32encode(channel.encode("utf-8", "surrogatepass")).decode().rstrip("=") or "_"


def _channel(encoded: str) -> str | None:
    if encoded == "_":
        return ""
    try:
        return base64.b32decode(encoded + "=" * (-len(encoded) % 8)).decode("utf-8", "surrogatepass")
    except ValueError:  # not a subject of ours
        return None


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn NATS failures into the API's errors, once, at the engine boundary."""
    try:
        yield
    except nats.errors.MaxPayloadError as exc:
        raise APIError.payload_too_large("The message is larger than the broker accepts") from exc
    except (nats.errors.Error, OSError) as exc:
        raise APIError.unavailable(f"The broker is unavailable ({type(exc).__name__})") from exc


class _Reader(ChannelReader):
    """Follows one channel through an ephemeral pull consumer that starts after the cursor."""

    def __init__(self, broker: JetStreamBroker, channel: str, on_idle: Callable[[ChannelReader], None]) -> None:
        super().__init__(channel, on_idle)
        self._broker = broker
        self._subject = broker.subject(channel)
        self._consumer: str | None = None
        self._inbox: Subscription | None = None
        self._requested = 0  # messages the outstanding pull request may still deliver
        self._expires = 0.0  # loop time at which it expires
        self._stopped = False

    async def head(self) -> Any:
        last = await self._broker.last_entry(self._subject)
        return last.seq if last is not None else 0

    def advance(self, key: Any) -> Any:
        return key

    async def read(self, cursor: Any) -> list[tuple[Any, BrokerMessage]]:
        try:
            return await self._read(cursor)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._drop()  # the next read starts a fresh consumer after the cursor
            raise

    async def _read(self, cursor: int) -> list[tuple[Any, BrokerMessage]]:
        broker = self._broker
        if self._inbox is None or self._consumer is None:
            self._inbox = await broker.nc.subscribe(broker.nc.new_inbox())
            self._consumer = broker.consumer_name()
            await broker.create_consumer(self._consumer, self._subject, cursor + 1)
        inbox = self._inbox
        loop = asyncio.get_running_loop()
        if not self._requested:
            request = {"batch": READ_BATCH, "expires": int(READ_WAIT_SECONDS * 1e9)}
            await broker.nc.publish(broker.next_subject(self._consumer), json.dumps(request).encode(), inbox.subject)
            self._requested, self._expires = READ_BATCH, loop.time() + READ_WAIT_SECONDS
        try:
            msgs = [await inbox.next_msg(timeout=max(self._expires - loop.time(), 0) + READ_GRACE_SECONDS)]
        except nats.errors.TimeoutError:
            raise nats.errors.TimeoutError("the reader's consumer stopped answering") from None
        while inbox.pending_msgs:
            msgs.append(await inbox.next_msg())
        batch: list[tuple[Any, BrokerMessage]] = []
        for msg in msgs:
            status = _status(msg)
            if status == "100":  # a heartbeat
                continue
            if status is not None:  # 408: the request expired; 404/409: it ended otherwise
                self._requested = 0
                continue
            self._requested -= 1
            entry = _entry(msg.metadata.sequence.stream, msg.headers, msg.data)
            if entry.seq <= cursor:
                continue
            if entry.prev != cursor:  # the chain says something may be missing: read it from the stream
                for missed in await broker.between(self._subject, cursor + 1, entry.seq):
                    batch.append((missed.seq, broker.message(self.channel, missed)))
            batch.append((entry.seq, broker.message(self.channel, entry)))
            cursor = entry.seq
        return batch

    def stop(self) -> None:
        super().stop()
        if not self._stopped:
            self._stopped = True
            self._broker.spawn(self._dispose())

    async def _dispose(self) -> None:
        await self.wait_stopped()
        await self._drop()

    async def _drop(self) -> None:
        inbox, self._inbox = self._inbox, None
        consumer, self._consumer = self._consumer, None
        self._requested = 0
        await self._broker.drop_consumer(inbox, consumer)


class JetStreamBroker:
    """A broker on NATS JetStream, shared by every node that points at the same stream.

    Args:
        url: ``nats://host:port``; a ``stream`` query parameter names the stream
            (default ``SLUICEGATE``); user and password may be given in the URL.
        history_size: messages retained per channel.
        history_seconds: age after which messages expire.
        pending_limit: messages a subscription may hold between subscribe and start.
        clock: the time source for published_at and ages.

    Raises:
        ConfigurationError: for a stream name JetStream cannot use, or an unknown
            query parameter.
    """

    name = "broker"

    def __init__(
        self, url: str, *, history_size: int, history_seconds: float, pending_limit: int, clock: Clock
    ) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        self._stream = query.pop("stream", ["SLUICEGATE"])[0]
        if query:
            raise ConfigurationError(f"SLUICEGATE_BROKER_URL: unknown parameter(s) {', '.join(sorted(query))}")
        if not self._stream or not all(c.isascii() and (c.isalnum() or c in "-_") for c in self._stream):
            raise ConfigurationError("SLUICEGATE_BROKER_URL: the stream parameter must be letters, digits, - or _")
        self._root = f"{self._stream.lower()}.ch"
        self._url = urlunsplit(parts._replace(query=""))
        self._history_size = history_size
        self._history_seconds = history_seconds
        self._pending_limit = pending_limit
        self._clock = clock
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._readers = ReaderPool(lambda channel, on_idle: _Reader(self, channel, on_idle))
        self._last_seq: dict[str, int] = {}  # channel -> its last sequence, as this node last saw it
        self._purged: dict[str, int] = {}  # subject -> sequence up to which it was purged
        self._locks = NameLocks()  # one publish at a time per channel on this node: they would only race
        self._tasks: set[asyncio.Task[None]] = set()

    # -- plumbing used by the readers ------------------------------------------------------

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("the broker is not open")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the broker is not open")
        return self._js

    def subject(self, channel: str) -> str:
        return f"{self._root}.{_token(channel)}"

    def next_subject(self, consumer: str) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"

    def message(self, channel: str, entry: _Entry) -> BrokerMessage:
        return BrokerMessage(channel, str(entry.seq), entry.data, entry.time)

    def spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run clean-up in the background; :meth:`close` waits for it."""

        async def run() -> None:
            try:
                await work
            except Exception:
                log.warning("broker clean-up failed", exc_info=True)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def consumer_name() -> str:
        """A name for a consumer; named before it is created, so that it can be deleted even
        if its creation is cancelled half-way."""
        return f"sg{secrets.token_hex(8)}"

    async def create_consumer(self, name: str, subject: str, start: int, *, headers_only: bool = False) -> None:
        """Create an ephemeral pull consumer of ``subject`` from sequence ``start``."""
        config = api.ConsumerConfig(
            name=name,
            filter_subject=subject,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            headers_only=headers_only or None,
            inactive_threshold=CONSUMER_IDLE_SECONDS,
            mem_storage=True,
            num_replicas=1,
        )
        await self.js.add_consumer(self._stream, config=config)

    async def drop_consumer(self, inbox: Subscription | None, consumer: str | None) -> None:
        """Stop listening and delete the consumer, as far as the connection allows."""
        if inbox is not None:
            with contextlib.suppress(nats.errors.Error):
                await inbox.unsubscribe()
        if consumer is not None and self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self.js.delete_consumer(self._stream, consumer)

    async def last_entry(self, subject: str) -> _Entry | None:
        try:
            raw = await self.js.get_last_msg(self._stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        return _entry(raw.seq or 0, raw.headers, raw.data)

    async def _next_entry(self, subject: str, seq: int) -> _Entry | None:
        try:
            raw = await self.js.get_msg(self._stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        return _entry(raw.seq or 0, raw.headers, raw.data)

    async def _scan(self, subject: str, start: int, *, headers_only: bool = False) -> AsyncGenerator[_Entry, None]:
        """The subject's messages from sequence ``start`` on, oldest first."""
        seq = start
        for _ in range(SINGLE_READS):
            entry = await self._next_entry(subject, seq)
            if entry is None:
                return
            yield entry
            seq = entry.seq + 1
        inbox = await self.nc.subscribe(self.nc.new_inbox())
        consumer = self.consumer_name()
        try:
            await self.create_consumer(consumer, subject, seq, headers_only=headers_only)
            while True:
                request = {"batch": READ_BATCH, "no_wait": True}
                await self.nc.publish(self.next_subject(consumer), json.dumps(request).encode(), inbox.subject)
                for _ in range(READ_BATCH):
                    msg = await inbox.next_msg(timeout=REQUEST_TIMEOUT_SECONDS)
                    if _status(msg) is not None:  # 404/408: nothing more for now
                        return
                    yield _entry(msg.metadata.sequence.stream, msg.headers, msg.data)
        finally:
            await asyncio.shield(self.spawn(self.drop_consumer(inbox, consumer)))

    async def between(self, subject: str, start: int, stop: int) -> list[_Entry]:
        """The subject's messages from sequence ``start`` up to, not including, ``stop``."""
        found = []
        async with contextlib.aclosing(self._scan(subject, start)) as entries:
            async for entry in entries:
                if entry.seq >= stop:
                    break
                found.append(entry)
        return found

    def _cutoff(self) -> float:
        return self._clock.now().timestamp() - self._history_seconds

    async def _purge(self, subject: str, upto: int) -> None:
        """Drop the subject's messages before sequence ``upto`` (an expired one, which stays)."""
        if self._purged.get(subject, 0) >= upto:
            return
        await self.js.purge_stream(self._stream, subject=subject, seq=upto)
        self._purged.pop(subject, None)
        self._purged[subject] = upto
        if len(self._purged) > CACHE_SIZE:
            del self._purged[next(iter(self._purged))]

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and create the stream or bring its configuration up to date.

        Raises:
            ConfigurationError: NATS cannot be reached, has no JetStream, or the stream
                cannot take this configuration.
        """
        nc = await connect(
            self._url, name="sluicegate", setting="SLUICEGATE_BROKER_URL", log=log, in_use=lambda: self._nc is not None
        )
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_SECONDS)
        config = api.StreamConfig(
            name=self._stream,
            subjects=[f"{self._root}.>"],
            max_msgs_per_subject=self._history_size,
            discard=api.DiscardPolicy.OLD,
            storage=api.StorageType.FILE,
            max_age=self._history_seconds * 2,
        )
        try:
            try:
                await js.add_stream(config)
            except nats.js.errors.APIError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                await js.update_stream(config)  # another node, or an earlier version of the settings
        except nats.errors.Error as exc:
            await nc.close()
            raise ConfigurationError(f"SLUICEGATE_BROKER_URL: cannot set up stream {self._stream} ({exc})") from None
        self._nc, self._js = nc, js

    async def close(self) -> None:
        await self._readers.close()
        while self._tasks:
            await asyncio.gather(*self._tasks)
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()

    async def check(self) -> None:
        with _translated():
            await self.js.stream_info(self._stream)

    # -- the Broker protocol -------------------------------------------------------------

    async def publish(self, channel: str, data: bytes) -> str:
        subject = self.subject(channel)
        published_at = repr(self._clock.now().timestamp())
        with _translated():
            async with self._locks.hold(channel):
                prev = self._last_seq.get(channel)
                if prev is None:
                    last = await self.last_entry(subject)
                    prev = last.seq if last is not None else 0
                for _ in range(PUBLISH_ATTEMPTS):
                    headers = {PREV: str(prev), TIME: published_at, EXPECTED_LAST: str(prev)}
                    try:
                        ack = await self.js.publish(subject, data, headers=headers, stream=self._stream)
                    except nats.js.errors.APIError as exc:
                        if exc.err_code != WRONG_LAST_SEQUENCE:
                            raise
                        last = await self.last_entry(subject)  # another node published: chain after its message
                        prev = last.seq if last is not None else 0
                        continue
                    self._last_seq.pop(channel, None)
                    self._last_seq[channel] = ack.seq
                    if len(self._last_seq) > CACHE_SIZE:
                        del self._last_seq[next(iter(self._last_seq))]
                    return str(ack.seq)
        raise APIError.unavailable(f"Too many concurrent publishers on channel {channel!r}; try again")

    async def _page(self, channel: str, after: str | None, limit: int | None) -> History:
        """Up to ``limit`` unexpired messages after ``after``, the gap before them, and the last position."""
        start = _parse(after) if after is not None else None
        subject = self.subject(channel)
        cutoff = self._cutoff()
        messages: list[BrokerMessage] = []
        first: _Entry | None = None  # the first message after `start`, expired or not
        first_live: _Entry | None = None
        expired, last_expired = 0, 0
        complete = True  # read to the end of the channel
        async with contextlib.aclosing(self._scan(subject, (start or 0) + 1)) as entries:
            async for entry in entries:
                first = first or entry
                if entry.time < cutoff:
                    expired, last_expired = expired + 1, entry.seq
                    continue
                first_live = first_live or entry
                if limit is not None and len(messages) >= limit:
                    complete = False
                    break
                messages.append(self.message(channel, entry))
        if expired and (expired > 1 or start is not None):
            await self._purge(subject, last_expired)
        tail: _Entry | None = None
        last = messages[-1].position if complete and messages else None
        if last is None:
            tail = await self.last_entry(subject)
            last = str(tail.seq) if tail is not None and tail.time >= cutoff else None
        gap = None
        if after is not None and start is not None:
            if first is None:
                if tail is None or tail.seq < start:
                    info = await self.js.stream_info(self._stream)
                    if start > info.state.last_seq:
                        raise APIError.invalid_argument(f"Position {after!r} is ahead of the broker's stream")
            elif first.time < cutoff or first.prev != start:
                gap = Gap(after=after, resumed_from=str(first_live.seq) if first_live else None, reason="expired")
        return History(messages, gap, last)

    async def subscribe(
        self, channel: str, *, after: str | None = None, from_start: bool = False
    ) -> FanoutSubscription:
        with _translated():
            return await self._readers.subscribe(
                channel,
                self._pending_limit,
                after=after,
                from_start=from_start,
                read=lambda: self._page(channel, after, None),
                order=_parse,
            )

    async def history(self, channel: str, *, after: str | None = None, limit: int = 100) -> History:
        with _translated():
            return await self._page(channel, after, limit)

    async def _stats(self, channel: str, count: int) -> ChannelStats:
        """Statistics of a channel whose subject holds ``count`` messages, expired ones included."""
        subscribers = self._readers.subscribers(channel)
        if not count:
            return ChannelStats(channel, subscribers, None, 0)
        subject = self.subject(channel)
        cutoff = self._cutoff()
        expired, last_expired = 0, 0
        async with contextlib.aclosing(self._scan(subject, 1, headers_only=True)) as entries:
            async for entry in entries:
                if entry.time >= cutoff:
                    break
                expired, last_expired = expired + 1, entry.seq
        if expired > 1:
            await self._purge(subject, last_expired)
        tail = await self.last_entry(subject)
        return ChannelStats(channel, subscribers, str(tail.seq) if tail else None, max(count - expired, 0))

    async def _count(self, subjects: str) -> dict[str, int]:
        info = await self.js.stream_info(self._stream, subjects_filter=subjects)
        return info.state.subjects or {}

    async def stats(self, channel: str) -> ChannelStats:
        subject = self.subject(channel)
        with _translated():
            return await self._stats(channel, (await self._count(subject)).get(subject, 0))

    async def channels(self, prefix: str = "") -> list[ChannelStats]:
        with _translated():
            counts: dict[str, int] = {}
            head = f"{self._root}."
            for subject, count in (await self._count(f"{self._root}.>")).items():
                name = _channel(subject[len(head) :]) if subject.startswith(head) else None
                if name is not None and name.startswith(prefix):
                    counts[name] = count
            for name in self._readers.readers:
                if name.startswith(prefix):
                    counts.setdefault(name, 0)
            limit = asyncio.Semaphore(STATS_CONCURRENCY)

            async def one(name: str) -> ChannelStats:
                async with limit:
                    return await self._stats(name, counts[name])

            found = await asyncio.gather(*(one(name) for name in sorted(counts)))
        return [s for s in found if s.retained or s.subscribers]
