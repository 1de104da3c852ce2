"""A broker on Redis Streams (``SLUICEGATE_BROKER_URL=redis://host:port/db[?prefix=name]``).

Each channel is one stream, ``<prefix>:ch:{<channel>}``, appended to with ``XADD``
and a bounded length (``MAXLEN = history_size``). Positions are the stream ids
(``<milliseconds>-<sequence>``), so every node hands out positions any other node
understands: a subscriber that moves from node A to node B resumes with its
Last-Event-ID and loses nothing.

Every entry carries ``t`` (published_at, from the gateway's clock) and ``p``, the id of
the channel's previous entry. A publish is one Lua script (one round trip): read the
channel's last id, ``XADD`` with it as ``p``, record the new last id, drop entries older
than ``history_seconds``. That chain is what makes resume exact across nodes: resuming
after position *s*, nothing was lost iff the first retained entry after *s* has
``p == s`` (or there is none and *s* is the channel's last id); anything else is an
``expired`` :class:`~sluicegate.engines.broker.Gap`.

Live delivery runs through one ``XREAD BLOCK`` reader per channel per node
(:mod:`sluicegate.engines.broker.fanout`), so Redis sees one reader per node however
many local subscribers a channel has. Both keys of a channel expire after
``2 x history_seconds`` without a publish, so abandoned channels leave nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sluicegate.engines.broker import BrokerMessage, ChannelStats, Gap, History
from sluicegate.engines.broker.fanout import ChannelReader, FanoutSubscription, ReaderPool
from sluicegate.errors import APIError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sluicegate.clock import Clock

__all__ = ["RedisBroker"]

_ID = re.compile(rb"^(\d+)-(\d+)$")
_GLOB = re.compile(r"([*?\[\]\\])")

#: How long one XREAD waits for new entries before asking again (milliseconds).
READ_BLOCK_MS = 2000
#: Entries one XREAD returns at most.
READ_COUNT = 1000
#: Connections for commands (publish, history, stats); more concurrent ones wait.
COMMAND_CONNECTIONS = 32

# Drops the channel's oldest entries while they are older than the cutoff (ARGV[n]).
_TRIM = """
local function trim(key, cutoff)
  while true do
    local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
    if #head == 0 then return end
    if tonumber(head[1][2][2]) >= cutoff then return end
    redis.call('XDEL', key, head[1][1])
  end
end
"""

# KEYS: stream, last-id key. ARGV: maxlen, data, published_at, ttl_ms, cutoff.
_PUBLISH = (
    _TRIM
    + """
local prev = redis.call('GET', KEYS[2]) or '0-0'
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 't', ARGV[3], 'p', prev, 'd', ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
trim(KEYS[1], tonumber(ARGV[5]))
return id
"""
)

# KEYS: stream. ARGV: cutoff.
_EXPIRE = (
    _TRIM
    + """
trim(KEYS[1], tonumber(ARGV[1]))
return redis.call('XLEN', KEYS[1])
"""
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn Redis failures into the API's 503, once, at the engine boundary."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise APIError.unavailable(f"The broker is unavailable ({type(exc).__name__})") from exc


def _key(position: bytes) -> tuple[int, int]:
    match = _ID.match(position)
    if match is None:
        raise ValueError(position)
    return int(match[1]), int(match[2])


def _parse(position: str) -> tuple[int, int]:
    """A position as an order key.

    Raises:
        APIError: ``invalid_argument`` for something no Redis stream id can be.
    """
    try:
        return _key(position.encode())
    except (ValueError, UnicodeEncodeError):
        raise APIError.invalid_argument(f"Invalid position {position!r}: expected <milliseconds>-<sequence>") from None


def _glob_escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


def _message(channel: str, entry_id: bytes, fields: dict[bytes, bytes]) -> BrokerMessage:
    return BrokerMessage(channel, entry_id.decode(), fields[b"d"], float(fields[b"t"]))


class _Reader(ChannelReader):
    def __init__(self, broker: RedisBroker, channel: str, on_idle: Callable[[ChannelReader], None]) -> None:
        super().__init__(channel, on_idle)
        self._broker = broker
        self._stream = broker.stream_key(channel)

    async def head(self) -> Any:
        last = await self._broker.client.get(self._broker.last_key(self.channel))
        return last or b"0-0"

    async def read(self, cursor: Any) -> list[tuple[Any, BrokerMessage]]:
        client = self._broker.reader_client
        reply: Any = await client.xread({self._stream: cursor}, count=READ_COUNT, block=READ_BLOCK_MS)
        if not reply:
            return []
        entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
        return [(_key(entry_id), _message(self.channel, entry_id, fields)) for entry_id, fields in entries]

    def advance(self, key: Any) -> Any:
        return f"{key[0]}-{key[1]}".encode()


class RedisBroker:
    """A broker on Redis Streams, shared by every node that points at the same Redis.

    Args:
        url: ``redis://`` or ``rediss://`` URL; a ``prefix`` query parameter namespaces
            the keys (default ``sluicegate``).
        history_size: entries retained per channel.
        history_seconds: age after which entries expire.
        pending_limit: messages a subscription may hold between subscribe and start.
        clock: the time source for published_at and ages.
    """

    name = "broker"

    def __init__(
        self, url: str, *, history_size: int, history_seconds: float, pending_limit: int, clock: Clock
    ) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", ["sluicegate"])[0]
        if not self.prefix:
            raise ConfigurationError("SLUICEGATE_BROKER_URL: the prefix parameter must not be empty")
        self._url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self._history_size = history_size
        self._history_seconds = history_seconds
        self._ttl_ms = max(int(history_seconds * 2000), 60_000)
        self._pending_limit = pending_limit
        self._clock = clock
        self._client: aioredis.Redis | None = None
        self._reader_client: aioredis.Redis | None = None
        self._readers = ReaderPool(lambda channel, on_idle: _Reader(self, channel, on_idle))

    @property
    def client(self) -> aioredis.Redis:
        """Commands: a bounded pool; a publish waits for a free connection rather than failing."""
        if self._client is None:
            raise RuntimeError("the broker is not open")
        return self._client

    @property
    def reader_client(self) -> aioredis.Redis:
        """Blocking reads: one connection per channel reader, apart from the commands' pool."""
        if self._reader_client is None:
            raise RuntimeError("the broker is not open")
        return self._reader_client

    def stream_key(self, channel: str) -> str:
        return f"{self.prefix}:ch:{{{channel}}}"

    def last_key(self, channel: str) -> str:
        return f"{self.prefix}:ch:{{{channel}}}:last"

    async def open(self) -> None:
        """Connect and load the scripts.

        Raises:
            ConfigurationError: Redis cannot be reached.
        """
        pool = aioredis.BlockingConnectionPool.from_url(self._url, max_connections=COMMAND_CONNECTIONS, timeout=10)
        client = aioredis.Redis(connection_pool=pool)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            await pool.aclose()
            raise ConfigurationError(f"SLUICEGATE_BROKER_URL: cannot reach Redis ({exc})") from None
        self._client = client
        # Named, so that an operator sees the readers in CLIENT LIST: one per channel per node.
        self._reader_client = aioredis.from_url(self._url, decode_responses=False, client_name=f"{self.prefix}-reader")
        self._publish = client.register_script(_PUBLISH)
        self._expire = client.register_script(_EXPIRE)

    async def close(self) -> None:
        await self._readers.close()
        if self._client is not None:
            await self._client.aclose()
            await self._client.connection_pool.aclose()
            self._client = None
        if self._reader_client is not None:
            await self._reader_client.aclose()
            self._reader_client = None

    async def check(self) -> None:
        await self.client.ping()

    def _cutoff(self) -> str:
        return repr(self._clock.now().timestamp() - self._history_seconds)

    async def publish(self, channel: str, data: bytes) -> str:
        published_at = repr(self._clock.now().timestamp())
        with _translated():
            position: bytes = await self._publish(
                keys=[self.stream_key(channel), self.last_key(channel)],
                args=[self._history_size, data, published_at, self._ttl_ms, self._cutoff()],
            )
        return position.decode()

    async def _read(
        self, channel: str, start: str, count: int | None = None
    ) -> tuple[list[Any], bytes | None, str | None]:
        """Expire old entries; then the entries from ``start``, the channel's last id, and
        its last retained id."""
        stream = self.stream_key(channel)
        with _translated():
            async with self.client.pipeline(transaction=False) as pipe:
                await self._expire(keys=[stream], args=[self._cutoff()], client=pipe)
                pipe.xrange(stream, start, "+", count=count)
                pipe.get(self.last_key(channel))
                pipe.xrevrange(stream, "+", "-", count=1)
                _, entries, last, newest = await pipe.execute()
        return entries, last, newest[0][0].decode() if newest else None

    async def _after(self, channel: str, after: str | None, limit: int | None = None) -> History:
        if after is None:
            entries, _, newest = await self._read(channel, "-", limit)
            return History([_message(channel, i, f) for i, f in entries], None, newest)
        position = _parse(after)
        entries, last, newest = await self._read(channel, f"({after}", limit)
        messages = [_message(channel, i, f) for i, f in entries]
        if last is None:  # never used, or idle long enough to be dropped: its history is gone
            return History([], Gap(after=after, resumed_from=None, reason="expired"), None)
        if position > _key(last):
            raise APIError.invalid_argument(f"Position {after!r} is ahead of the channel")
        chained = entries[0][1][b"p"].decode() == after if entries else last.decode() == after
        if chained:
            return History(messages, None, newest)
        first = messages[0].position if messages else None
        return History(messages, Gap(after=after, resumed_from=first, reason="expired"), newest)

    async def subscribe(
        self, channel: str, *, after: str | None = None, from_start: bool = False
    ) -> FanoutSubscription:
        with _translated():
            return await self._readers.subscribe(
                channel,
                self._pending_limit,
                after=after,
                from_start=from_start,
                read=lambda: self._after(channel, after),
                order=_parse,
            )

    async def history(self, channel: str, *, after: str | None = None, limit: int = 100) -> History:
        return await self._after(channel, after, limit)

    async def stats(self, channel: str) -> ChannelStats:
        stream = self.stream_key(channel)
        with _translated():
            async with self.client.pipeline(transaction=False) as pipe:
                await self._expire(keys=[stream], args=[self._cutoff()], client=pipe)
                pipe.get(self.last_key(channel))
                retained, last = await pipe.execute()
        return ChannelStats(channel, self._readers.subscribers(channel), last.decode() if last else None, retained)

    async def channels(self, prefix: str = "") -> list[ChannelStats]:
        pattern = _glob_escape(f"{self.prefix}:ch:{{{prefix}") + "*"
        names: set[str] = {name for name in self._readers.readers if name.startswith(prefix)}
        head = f"{self.prefix}:ch:{{"
        with _translated():
            async for raw in self.client.scan_iter(match=pattern, count=1000, _type="stream"):
                key = raw.decode()
                if key.startswith(head) and key.endswith("}"):
                    names.add(key[len(head) : -1])
        found = await asyncio.gather(*(self.stats(name) for name in sorted(names)))  # the pool bounds it
        return [s for s in found if s.retained or s.subscribers]
