"""The JetStream broker as several nodes see it: two JetStreamBroker instances sharing
one stream on the machine's NATS server, the way two gateway processes do."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import nats
import pytest

from sluicegate.clock import ManualClock
from sluicegate.engines import nats_connect
from sluicegate.engines.broker import Gap, broker_from_url
from sluicegate.engines.broker import jetstream as module
from sluicegate.engines.broker.jetstream import JetStreamBroker
from sluicegate.errors import APIError, ConfigurationError, ErrCode
from tests.brokers import NATS, drop, fresh_url, two_nodes
from tests.unit.test_broker_contract import Collector, arrived, eventually, settle

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.js import JetStreamContext

HISTORY_SECONDS = 60.0
Nodes = tuple[JetStreamBroker, JetStreamBroker]


def stream_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["stream"][0]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    built = fresh_url("nats")
    yield built
    await drop(built)


@pytest.fixture
async def js() -> AsyncIterator[JetStreamContext]:
    """A plain client, to look at the server the way an operator would."""
    connection = await nats.connect(NATS)
    yield connection.jetstream()
    await connection.close()


@pytest.fixture
async def nodes(url: str, clock: ManualClock) -> AsyncIterator[Nodes]:
    async with two_nodes(
        lambda: JetStreamBroker(url, history_size=100, history_seconds=HISTORY_SECONDS, pending_limit=1000, clock=clock)
    ) as pair:
        yield pair


async def consumers(js: JetStreamContext, url: str) -> int:
    return (await js.stream_info(stream_of(url))).state.consumer_count


async def test_the_url_names_the_broker_and_its_stream(url: str, clock: ManualClock) -> None:
    broker = broker_from_url(url, history_size=5, history_seconds=60, pending_limit=4, clock=clock)
    assert isinstance(broker, JetStreamBroker)
    assert broker.subject("t1/a") == f"{stream_of(url).lower()}.ch.OQYS6YI"
    for bad in ("nats://127.0.0.1:4222?stream=a.b", "nats://127.0.0.1:4222?stream=", "nats://h?stream=X&other=1"):
        with pytest.raises(ConfigurationError, match="SLUICEGATE_BROKER_URL"):
            JetStreamBroker(bad, history_size=5, history_seconds=60, pending_limit=4, clock=clock)


async def test_an_unreachable_server_fails_at_start_up_naming_the_setting(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_connect, "OPEN_TIMEOUT_SECONDS", 0.5)
    broker = JetStreamBroker("nats://127.0.0.1:1", history_size=5, history_seconds=60, pending_limit=4, clock=clock)
    with pytest.raises(ConfigurationError, match="SLUICEGATE_BROKER_URL: cannot reach NATS"):
        await broker.open()
    await broker.close()


async def test_a_node_with_other_settings_updates_the_stream(
    url: str, clock: ManualClock, js: JetStreamContext
) -> None:
    for size in (5, 7):
        broker = JetStreamBroker(url, history_size=size, history_seconds=60, pending_limit=4, clock=clock)
        await broker.open()
        await broker.check()
        await broker.close()
        info = await js.stream_info(stream_of(url))
        assert info.config.max_msgs_per_subject == size
        assert info.config.max_age == 120


async def test_a_long_backlog_is_read_whole_and_in_order(nodes: Nodes) -> None:
    a, b = nodes
    positions = [await a.publish("long", f"m{i}".encode()) for i in range(60)]
    await a.publish("other", b"interleaved")
    positions += [await a.publish("long", f"m{i}".encode()) for i in range(60, 90)]
    sub = await b.subscribe("long", from_start=True)
    assert [m.position for m in sub.backlog] == positions
    assert [m.data for m in sub.backlog] == [f"m{i}".encode() for i in range(90)]
    sub.close()
    sub = await b.subscribe("long", after=positions[20])
    assert sub.gap is None
    assert [m.position for m in sub.backlog] == positions[21:]
    sub.close()
    assert (await b.stats("long")).retained == 90


async def test_messages_expired_by_the_clock_are_purged_and_reported_as_a_gap(
    nodes: Nodes, clock: ManualClock, js: JetStreamContext, url: str
) -> None:
    a, b = nodes
    old = [await a.publish("c", f"old{i}".encode()) for i in range(12)]
    await clock.advance(HISTORY_SECONDS + 1)
    new = await a.publish("c", b"new")
    page = await b.history("c")
    assert [m.position for m in page.messages] == [new]
    # On the server, only the newest expired message is left, as the chain's anchor.
    subject = a.subject("c")
    info = await js.stream_info(stream_of(url), subjects_filter=subject)
    assert info.state.subjects == {subject: 2}
    assert (await b.stats("c")).retained == 1
    sub = await b.subscribe("c", after=old[3])
    assert sub.gap == Gap(after=old[3], resumed_from=new, reason="expired")
    assert [m.position for m in sub.backlog] == [new]
    sub.close()
    sub = await b.subscribe("c", after=old[-1])  # nothing after it was lost
    assert sub.gap is None
    assert [m.position for m in sub.backlog] == [new]
    sub.close()


async def test_messages_purged_on_the_server_are_reported_as_a_gap(
    nodes: Nodes, js: JetStreamContext, url: str
) -> None:
    a, b = nodes
    positions = [await a.publish("c", f"m{i}".encode()) for i in range(5)]
    await js.purge_stream(stream_of(url), subject=a.subject("c"), keep=2)
    sub = await b.subscribe("c", after=positions[0])
    assert sub.gap == Gap(after=positions[0], resumed_from=positions[3], reason="expired")
    assert [m.position for m in sub.backlog] == positions[3:]
    sub.close()
    page = await b.history("c", after=positions[2])
    assert page.gap is None
    assert [m.position for m in page.messages] == positions[3:]


async def test_positions_past_the_stream_or_malformed_are_refused(nodes: Nodes) -> None:
    a, b = nodes
    position = await a.publish("c", b"x")
    for bad in (str(int(position) + 1), "0", "007x", "1e3", "٣", "9" * 5000):
        with pytest.raises(APIError) as info:
            await b.subscribe("c", after=bad)
        assert info.value.code is ErrCode.INVALID_ARGUMENT
    assert (await b.stats("c")).subscribers == 0
    # A position of another channel is no error: that channel's messages after it, if any.
    later = await a.publish("d", b"y")
    page = await b.history("c", after=later)
    assert page.messages == []
    assert page.gap is None


async def test_any_channel_name_is_one_subject_token(nodes: Nodes) -> None:
    a, b = nodes
    names = ["t1/a.b", "*", ">", "with space", "ünïcödé/频道", "a.*.>", ""]
    for name in names:
        await a.publish(name, name.encode())
    for name in names:
        assert [m.data for m in (await b.history(name)).messages] == [name.encode()]
    assert [s.channel for s in await b.channels()] == sorted(names)
    assert [s.channel for s in await b.channels("a.")] == ["a.*.>"]


async def test_a_reader_whose_consumer_vanished_resumes_without_loss(
    nodes: Nodes, js: JetStreamContext, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "READ_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(module, "READ_GRACE_SECONDS", 0.3)
    a, b = nodes
    sub = await b.subscribe("c")
    sink = Collector()
    assert sub.start(sink)
    first = await a.publish("c", b"one")
    await arrived(sink, 1)
    for info in await js.consumers_info(stream_of(url)):
        await js.delete_consumer(stream_of(url), info.name)
    rest = [await a.publish("c", f"m{i}".encode()) for i in range(3)]
    await arrived(sink, 4)
    await settle(b)
    assert [m.position for m in sink.messages] == [first, *rest]
    sub.close()


async def test_a_message_that_breaks_the_chain_is_still_delivered_once(
    nodes: Nodes, js: JetStreamContext, url: str
) -> None:
    a, b = nodes
    sub = await b.subscribe("c")
    sink = Collector()
    assert sub.start(sink)
    first = await a.publish("c", b"one")
    foreign = await js.publish(a.subject("c"), b"from a plain client", headers={"Sg-Prev": "0"})
    again = await a.publish("c", b"two")
    await arrived(sink, 3)
    await settle(b)
    assert [m.position for m in sink.messages] == [first, str(foreign.seq), again]
    sub.close()


async def test_no_consumer_outlives_its_subscriptions(nodes: Nodes, js: JetStreamContext, url: str) -> None:
    a, b = nodes
    for i in range(30):
        await a.publish("long", f"m{i}".encode())
    subs = [await node.subscribe(channel, from_start=True) for node in (a, b) for channel in ("long", "x", "y")]
    for sub in subs:
        assert sub.start(Collector())
    await b.history("long")  # a scan long enough to use a consumer of its own
    await b.stats("long")
    counted = 0
    async with asyncio.timeout(5):
        while counted != 6:  # one reader per channel per node, each started in the background
            counted = await consumers(js, url)
    for sub in subs:
        sub.close()
    await eventually(lambda: not a._tasks and not b._tasks)
    assert await consumers(js, url) == 0
    kept = await a.subscribe("kept")
    assert await consumers(js, url) in (0, 1)  # its reader's consumer is being created
    await a.close()  # closing the broker ends the subscription and deletes the consumer
    assert kept.closed
    assert await consumers(js, url) == 0


async def test_empty_and_oversized_payloads(nodes: Nodes) -> None:
    a, b = nodes
    position = await a.publish("c", b"")
    assert [(m.position, m.data) for m in (await b.history("c")).messages] == [(position, b"")]
    with pytest.raises(APIError) as info:
        await a.publish("c", b"x" * (2 << 20))
    assert info.value.code is ErrCode.PAYLOAD_TOO_LARGE
