"""What only the Redis session log has: ``WAIT``, idempotent group commits, consumer
groups taken over and trimmed, keys under a prefix with a hash tag, its URL, and its
followers' connections. Against the machine's Redis, in a fresh prefix per test."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from sluicegate.clock import ManualClock
from sluicegate.engines.log import LogEntry, LogError, LogNotFound, LogState, LogUnavailable
from sluicegate.engines.log.frames import entry_header
from sluicegate.engines.log.redis import RedisLog
from sluicegate.engines.log.redis_layout import log_keys
from sluicegate.errors import ConfigurationError
from tests.brokers import REDIS
from tests.logs import drop_log, fresh_log_url
from tests.unit.test_log_contract import WAIT, data_entries, numbers, read_all, records
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


def prefix_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["prefix"][0]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    made = fresh_log_url("redis")
    yield made
    await drop_log(made)


@pytest.fixture
async def nodes(url: str) -> AsyncIterator[Callable[..., Awaitable[RedisLog]]]:
    """Opens RedisLogs on the test's prefix (``query`` adds URL parameters)."""
    opened: list[RedisLog] = []

    async def make(query: str = "") -> RedisLog:
        log = RedisLog(url + query, clock=ManualClock())
        await log.open()
        opened.append(log)
        return log

    yield make
    for log in opened:
        await log.close()


@pytest.fixture
async def server() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll Redis (10 ms at a time, at most 5 s) until ``check`` holds."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never held")


async def followers(server: aioredis.Redis, prefix: str, *, blocked: bool = False) -> int:
    """Connections of the prefix's followers (only those blocked in XREADGROUP, if asked)."""
    clients: list[dict[str, Any]] = await server.client_list()
    mine = [c for c in clients if c.get("name") == f"{prefix}-follower"]
    if blocked:
        mine = [c for c in mine if c.get("cmd") == "xreadgroup" and "b" in str(c.get("flags"))]
    return len(mine)


# -- acknowledgements ------------------------------------------------------------------------


async def test_waiting_for_a_replica_is_refused_on_a_server_without_replicas(
    nodes: Callable[..., Awaitable[RedisLog]],
) -> None:
    log = await nodes("&wait=1&wait_timeout_ms=20")
    await log.create("races/w")
    with pytest.raises(LogUnavailable, match="0 of 1 Redis replicas"):
        await log.append("races/w", records(0, 1), 1)
    with pytest.raises(LogUnavailable, match="replicas"):
        await log.set_state("races/w", LogState.PAUSED)
    head = await log.head("races/w")
    assert (head.total, head.state) == (1, LogState.PAUSED)  # on the primary, said to be at risk


async def test_a_retried_group_commit_is_appended_once(url: str, nodes: Callable[..., Awaitable[RedisLog]]) -> None:
    log = await nodes()
    await log.create("ingest/retry")
    keys = log_keys(prefix_of(url), "ingest/retry")
    data = records(0, 2)
    frames = entry_header(2, len(data), 1000, b"") + data
    first = await log._store("ingest/retry", keys, "commit-1", frames, 2, len(data), 1000)
    again = await log._store("ingest/retry", keys, "commit-1", frames, 2, len(data), 1000)  # a lost reply, retried
    assert first == again == (0, 2)
    assert (await log.head("ingest/retry")).total == 2
    assert numbers(data_entries(await read_all(log, "ingest/retry"))) == [0, 1]
    other = await log._store("ingest/retry", keys, "commit-2", frames, 2, len(data), 1000)
    assert other == (2, 4)  # another commit id is another commit


class LossyRelay:
    """A TCP relay to Redis on loopback that can lose a reply (the connection breaks after
    Redis ran the command), or cut every connection, as a network would."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.lose_next_reply = False
        self.lost = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if replies and self.lose_next_reply:
                        self.lose_next_reply = False
                        self.lost += 1
                        break
                    sink.write(data)
                    await sink.drain()
            sink.close()
            writer.close()
            up_writer.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def test_an_append_whose_reply_was_lost_is_retried_and_stored_once(url: str) -> None:
    relay = LossyRelay()
    log = RedisLog(url.replace(":6379/", f":{await relay.start()}/"), clock=ManualClock())
    await log.open()
    try:
        await log.create("races/lost")
        await log.append("races/lost", records(0, 1), 1)  # Redis now has the script: the next reply is its answer
        relay.lose_next_reply = True
        appended = await log.append("races/lost", records(1, 1), 1)  # redis-py retries on a new connection
        assert relay.lost == 1
        assert (appended.first, appended.total) == (1, 2)
        assert (await log.head("races/lost")).total == 2
        assert numbers(data_entries(await read_all(log, "races/lost"))) == [0, 1]
        await relay.cut()
        with pytest.raises(LogUnavailable):
            await log.append("races/lost", records(2, 1), 1)
        with pytest.raises(LogUnavailable):
            await log.head("races/lost")
    finally:
        await log.close()
        await relay.cut()


# -- consumer groups -------------------------------------------------------------------------


async def test_a_new_follower_takes_the_log_over_and_the_previous_one_ends_with_a_log_error(
    url: str, nodes: Callable[..., Awaitable[RedisLog]], server: aioredis.Redis
) -> None:
    log, other = await nodes(), await nodes()
    await log.create("races/take")
    await log.append("races/take", records(0, 2), 2)
    found: list[LogEntry] = []

    async def follow() -> None:
        async for entries in log.follow("races/take", reader="old"):
            found.extend(entries)

    previous = asyncio.ensure_future(follow())
    await until(lambda: len(found) == 1, "the old reader reading")
    taker = other.follow("races/take", reader="new")
    try:
        assert numbers(await anext(taker)) == [0, 1]  # from the first retained entry
        with pytest.raises(LogError) as ended:
            async with asyncio.timeout(WAIT):
                await previous
        assert type(ended.value) is LogError  # replaced: neither "not found" nor "unavailable"
        groups = await server.xinfo_groups(log_keys(prefix_of(url), "races/take").stream)
        assert [g["name"] for g in groups] == [b"r:new"]
    finally:
        await taker.aclose()


async def test_a_follower_of_a_deleted_log_ends_with_log_not_found(nodes: Callable[..., Awaitable[RedisLog]]) -> None:
    log = await nodes()
    await log.create("races/gone")
    follower = log.follow("races/gone", reader="r")
    try:
        reading = asyncio.ensure_future(anext(follower))
        await log.append("races/gone", records(0, 1), 1)
        assert numbers(await reading) == [0]
        await log.delete("races/gone")
        with pytest.raises(LogNotFound):
            async with asyncio.timeout(WAIT):
                await anext(follower)
    finally:
        await follower.aclose()


async def test_a_reader_following_again_gets_what_it_has_not_trimmed(nodes: Callable[..., Awaitable[RedisLog]]) -> None:
    log = await nodes()
    await log.create("ingest/again")
    for n in range(3):
        await log.append("ingest/again", records(n, 1), 1)
    follower = log.follow("ingest/again", reader="same")
    entries = await anext(follower)
    await follower.aclose()
    await log.trim("ingest/again", entries[0].position)
    await log.append("ingest/again", records(3, 1), 1)
    found: list[LogEntry] = []
    follower = log.follow("ingest/again", reader="same")
    try:
        while sum(e.count for e in found) < 3:
            async with asyncio.timeout(WAIT):
                found.extend(await anext(follower))
    finally:
        await follower.aclose()
    assert numbers(found) == [1, 2, 3]  # delivered before but retained, then the new one


async def test_after_a_trim_no_pending_list_names_a_deleted_entry(
    url: str, nodes: Callable[..., Awaitable[RedisLog]], server: aioredis.Redis
) -> None:
    log = await nodes()
    await log.create("races/pel")
    for n in range(4):
        await log.append("races/pel", records(n, 1), 1)
    follower = log.follow("races/pel", reader="r")
    try:
        entries = await anext(follower)
    finally:
        await follower.aclose()
    stream = log_keys(prefix_of(url), "races/pel").stream
    await server.xgroup_create(stream, "elsewhere", id="0")  # a second group, read to the end
    await server.xreadgroup("elsewhere", "c", {stream: ">"})
    ids = [e.position for e in entries]
    assert len(ids) == 4
    await log.trim("races/pel", ids[1])
    for group in (b"r:r", b"elsewhere"):
        pending: list[dict[str, Any]] = await server.xpending_range(stream, group, "-", "+", 100)
        assert [p["message_id"] for p in pending] == [i.encode() for i in ids[2:]]
    kept: Any = await server.xrange(stream)
    assert [i for i, _ in kept] == [i.encode() for i in ids[2:]]


async def test_a_partial_trim_is_kept_across_a_restart(nodes: Callable[..., Awaitable[RedisLog]]) -> None:
    log = await nodes()
    await log.create("ingest/part")
    # Concurrent appends with different meta: one group commit, one stream entry, two frames.
    await asyncio.gather(*(log.append("ingest/part", records(3 * n, 3), 3, meta=b"%d" % n) for n in range(2)))
    entries = data_entries(await read_all(log, "ingest/part"))
    assert [e.meta for e in entries] == [b"0", b"1"]
    assert entries[1].position.startswith(entries[0].position.partition("/")[0])  # the same stream entry
    await log.trim("ingest/part", entries[0].position)
    await log.close()
    again = await nodes()
    assert numbers(data_entries(await read_all(again, "ingest/part"))) == [3, 4, 5]
    follower = again.follow("ingest/part", reader="r")
    try:
        assert numbers(await anext(follower)) == [3, 4, 5]
    finally:
        await follower.aclose()
    assert (await again.head("ingest/part")).total == 6


async def test_a_sealed_log_keeps_its_seal_so_a_new_follower_still_ends(
    nodes: Callable[..., Awaitable[RedisLog]],
) -> None:
    log = await nodes()
    await log.create("races/end")
    await log.append("races/end", records(0, 2), 2)
    await log.set_state("races/end", LogState.SEALED)
    entries = await read_all(log, "races/end")
    await log.trim("races/end", entries[-1].position)
    found: list[LogEntry] = []
    async with asyncio.timeout(WAIT):
        async for batch in log.follow("races/end", reader="late"):
            found.extend(batch)
    assert [e.mark for e in found] == [LogState.SEALED]


# -- keys and configuration ------------------------------------------------------------------


async def test_every_key_is_under_the_prefix_with_the_log_hash_tag(
    url: str, nodes: Callable[..., Awaitable[RedisLog]], server: aioredis.Redis
) -> None:
    log = await nodes()
    prefix = prefix_of(url)
    assert log.identity == f"redis:0/{prefix}"
    assert log.shared
    await log.create("ingest/k.1")
    await log.append("ingest/k.1", records(0, 1), 1)
    follower = log.follow("ingest/k.1", reader="r")
    await anext(follower)
    await follower.aclose()
    keys = {key.decode() async for key in server.scan_iter(match=f"{prefix}:*")}
    assert keys == {f"{prefix}:log:{{ingest/k.1}}" + tail for tail in ("", ":h", ":c", ":cz")}
    assert len({key_slot(key.encode()) for key in keys}) == 1
    await log.delete("ingest/k.1")
    assert [key async for key in server.scan_iter(match=f"{prefix}:*")] == []


@pytest.mark.parametrize(
    "bad",
    [
        "redis://127.0.0.1:6379/0?colour=red",
        "redis://127.0.0.1:6379/0?wait=-1",
        "redis://127.0.0.1:6379/0?wait=one",
        "redis://127.0.0.1:6379/0?wait_timeout_ms=0",
        "redis://127.0.0.1:6379/0?prefix=",
        "redis://127.0.0.1:6379/0?prefix=a%20b",
        "redis://127.0.0.1:6379/zero",
        "redis://:s3cret@127.0.0.1:port/0",
    ],
)
def test_bad_urls_are_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_LOG_URL") as refused:
        RedisLog(bad, clock=ManualClock())
    assert "s3cret" not in str(refused.value)


async def test_an_unreachable_server_fails_at_start_up_naming_the_setting() -> None:
    log = RedisLog("redis://:s3cret@127.0.0.1:1/0", clock=ManualClock())
    with pytest.raises(ConfigurationError, match="SLUICEGATE_LOG_URL") as refused:
        await log.open()
    assert "s3cret" not in str(refused.value)


# -- connections -----------------------------------------------------------------------------


async def test_a_closed_or_cancelled_follow_leaves_no_connection_behind(
    url: str, nodes: Callable[..., Awaitable[RedisLog]], server: aioredis.Redis
) -> None:
    log = await nodes()
    prefix = prefix_of(url)
    await log.create("races/conn")
    assert await followers(server, prefix) == 0

    follower = log.follow("races/conn", reader="r")
    waiting = asyncio.ensure_future(anext(follower))
    await eventually(lambda: _count_is(server, prefix, 1, blocked=True), "a blocked follower")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await follower.aclose()
    await eventually(lambda: _count_is(server, prefix, 0), "no follower connection")

    async def follow() -> None:
        async for _ in log.follow("races/conn", reader="r"):
            pass

    task = asyncio.ensure_future(follow())
    await eventually(lambda: _count_is(server, prefix, 1, blocked=True), "a blocked follower")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: _count_is(server, prefix, 0), "no follower connection")


async def test_closing_the_log_ends_its_followers(
    url: str, nodes: Callable[..., Awaitable[RedisLog]], server: aioredis.Redis
) -> None:
    log = await nodes()
    prefix = prefix_of(url)
    await log.create("races/shut")
    follower = log.follow("races/shut", reader="r")
    try:
        waiting = asyncio.ensure_future(anext(follower))
        await eventually(lambda: _count_is(server, prefix, 1, blocked=True), "a blocked follower")
        await log.close()
        with pytest.raises(LogUnavailable, match="closed"):
            async with asyncio.timeout(WAIT):
                await waiting
    finally:
        await follower.aclose()
    await eventually(lambda: _count_is(server, prefix, 0), "no follower connection")


async def _count_is(server: aioredis.Redis, prefix: str, expected: int, *, blocked: bool = False) -> bool:
    return await followers(server, prefix, blocked=blocked) == expected
