"""The Redis Streams broker as several nodes see it: two RedisBroker instances sharing
one Redis, the way two gateway processes do."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from sluicegate.clock import ManualClock
from sluicegate.engines.broker.redis_streams import RedisBroker
from sluicegate.errors import APIError, ConfigurationError, ErrCode
from tests.brokers import REDIS, drop, fresh_url, two_nodes
from tests.unit.test_broker_contract import Collector, arrived

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    url = fresh_url("redis")
    clock = ManualClock()
    try:
        async with two_nodes(
            lambda: RedisBroker(url, history_size=100, history_seconds=60, pending_limit=1000, clock=clock)
        ) as pair:
            yield pair
    finally:
        await drop(url)


async def test_one_reader_per_channel_per_node_whatever_the_subscribers(
    nodes: tuple[RedisBroker, RedisBroker],
) -> None:
    a, b = nodes
    subs = [await a.subscribe("crowd") for _ in range(50)] + [await b.subscribe("crowd") for _ in range(50)]
    sinks = [Collector() for _ in subs]
    for sub, sink in zip(subs, sinks, strict=True):
        assert sub.start(sink)
    await a.publish("crowd", b"x")
    for sink in sinks:
        await arrived(sink, 1)
    client = aioredis.from_url(REDIS)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    readers = [c for c in clients if c.get("cmd") == "xread" and c.get("name") == f"{a.prefix}-reader"]
    assert len(readers) == 2  # one per node, not one per subscriber
    for sub in subs:
        sub.close()


async def test_a_position_past_the_channel_is_refused(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, _ = nodes
    position = await a.publish("c", b"x")
    millis, _, seq = position.partition("-")
    for ahead in (f"{millis}-{int(seq) + 1}", f"{int(millis) + 1000}-0"):
        with pytest.raises(APIError) as info:
            await a.subscribe("c", after=ahead)
        assert info.value.code is ErrCode.INVALID_ARGUMENT
    assert (await a.stats("c")).subscribers == 0


async def test_channel_keys_expire_when_the_channel_is_abandoned(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, _ = nodes
    await a.publish("c", b"x")
    client = aioredis.from_url(REDIS)
    try:
        ttls = [await client.pttl(a.stream_key("c")), await client.pttl(a.last_key("c"))]
    finally:
        await client.aclose()
    assert all(60_000 <= ttl <= 120_000 for ttl in ttls), ttls


class Relay:
    """A TCP relay to Redis on loopback that can be cut, as a network outage would."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def test_redis_going_away_is_a_503_not_a_crash() -> None:
    broker = RedisBroker(
        "redis://127.0.0.1:1/0", history_size=10, history_seconds=60, pending_limit=10, clock=ManualClock()
    )
    with pytest.raises(ConfigurationError, match="SLUICEGATE_BROKER_URL"):
        await broker.open()
    relay = Relay()
    url = fresh_url("redis").replace(":6379/", f":{await relay.start()}/")
    broker = RedisBroker(url, history_size=10, history_seconds=60, pending_limit=10, clock=ManualClock())
    await broker.open()
    try:
        await broker.publish("c", b"x")
        await relay.cut()
        for call in (broker.publish("c", b"y"), broker.history("c"), broker.stats("c")):
            with pytest.raises(APIError) as info:
                await call
            assert info.value.code is ErrCode.UNAVAILABLE
    finally:
        await broker.close()
        await drop(url)
