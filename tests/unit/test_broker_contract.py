"""A contract suite for the Broker protocol, run against every implementation.

Only the public protocol is used (publish, subscribe, history, channels, stats and the
Subscription's backlog/gap/start/close/closed/wait_closed), so that a Redis or NATS
broker can be added as another ``broker`` fixture param and must pass the same tests.
Positions are opaque: their order is only ever compared through what the broker
itself returns (history, backlogs), never by parsing them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from sluicegate.clock import ManualClock
from sluicegate.engines.broker import BrokerMessage, ChannelStats, Gap, broker_from_url
from sluicegate.engines.broker.memory import MemoryBroker
from sluicegate.errors import APIError, ErrCode
from tests.brokers import KINDS, drop, fresh_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sluicegate.engines.broker import Broker

HISTORY_SIZE = 5
HISTORY_SECONDS = 60.0
PENDING_LIMIT = 4


MALFORMED_POSITIONS = ["", "abc", "x-y", "-5"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def broker(broker_kind: str, clock: ManualClock) -> AsyncIterator[Broker]:
    url = fresh_url(broker_kind)
    built = broker_from_url(
        url,
        history_size=HISTORY_SIZE,
        history_seconds=HISTORY_SECONDS,
        pending_limit=PENDING_LIMIT,
        clock=clock,
    )
    await built.open()
    try:
        yield built
    finally:
        await built.close()
        await drop(url)


class Collector:
    """A sink that records what it is given, and refuses once told to."""

    def __init__(self, accept: int | None = None) -> None:
        self.messages: list[BrokerMessage] = []
        self.accept = accept  # how many to accept before refusing (None: all)

    def __call__(self, message: BrokerMessage) -> bool:
        self.messages.append(message)
        return self.accept is None or len(self.messages) < self.accept

    @property
    def data(self) -> list[bytes]:
        return [m.data for m in self.messages]


#: How long a shared broker gets to show that it delivers nothing more (negative checks only).
REMOTE_QUIET_SECONDS = 0.2


async def settle(broker: Broker | None = None) -> None:
    """Let what is in flight arrive: for the memory broker, a few loop turns; a shared
    broker delivers through its reader task, so it gets a short quiet period."""
    for _ in range(5):
        await asyncio.sleep(0)
    if broker is not None and not isinstance(broker, MemoryBroker):
        await asyncio.sleep(REMOTE_QUIET_SECONDS)


async def arrived(sink: Collector, count: int) -> None:
    """Wait (up to 5 s) until ``sink`` holds ``count`` messages (at once for the memory broker)."""
    await eventually(lambda: len(sink.messages) >= count)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` for up to 5 s: a sink is a plain function, with no event to wait on."""
    async with asyncio.timeout(5.0):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


async def publish_all(broker: Broker, channel: str, payloads: list[bytes]) -> list[str]:
    return [await broker.publish(channel, data) for data in payloads]


def payloads(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


async def assert_invalid_argument(awaitable: Awaitable[object]) -> None:
    with pytest.raises(APIError) as info:
        await awaitable
    assert info.value.code is ErrCode.INVALID_ARGUMENT


# -- positions -------------------------------------------------------------------------


async def test_positions_are_distinct_and_in_publish_order(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", 4))
    assert len(set(positions)) == 4
    page = await broker.history("c")
    assert [m.position for m in page.messages] == positions
    assert [m.data for m in page.messages] == payloads("m", 4)
    assert all(m.channel == "c" for m in page.messages)
    assert page.last_position == positions[-1]
    assert page.gap is None


async def test_resuming_after_each_position_gives_the_rest_in_order(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", 4))
    for i, position in enumerate(positions):
        page = await broker.history("c", after=position)
        assert [m.position for m in page.messages] == positions[i + 1 :]
        assert page.gap is None


async def test_published_at_comes_from_the_clock(broker: Broker, clock: ManualClock) -> None:
    await broker.publish("c", b"a")
    await clock.advance(7)
    await broker.publish("c", b"b")
    page = await broker.history("c")
    assert [m.published_at for m in page.messages] == [
        clock.now().timestamp() - 7,
        clock.now().timestamp(),
    ]


# -- subscribe: backlog and live --------------------------------------------------------


async def test_subscribe_without_position_gets_only_new_messages(broker: Broker) -> None:
    await publish_all(broker, "c", payloads("old", 3))
    sub = await broker.subscribe("c")
    assert sub.backlog == []
    assert sub.gap is None
    sink = Collector()
    assert sub.start(sink) is True
    new = await publish_all(broker, "c", payloads("new", 2))
    await arrived(sink, 2)
    await settle(broker)
    assert [m.position for m in sink.messages] == new
    assert sink.data == payloads("new", 2)
    sub.close()


async def test_subscribe_after_position_backlog_is_exactly_what_follows(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", 4))
    sub = await broker.subscribe("c", after=positions[1])
    assert [m.position for m in sub.backlog] == positions[2:]
    assert [m.data for m in sub.backlog] == [b"m2", b"m3"]
    assert sub.gap is None
    sub.close()


async def test_subscribe_after_last_position_has_empty_backlog(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", 3))
    sub = await broker.subscribe("c", after=positions[-1])
    assert sub.backlog == []
    assert sub.gap is None
    sub.close()


async def test_seam_between_backlog_and_live_has_no_gap_and_no_duplicate(broker: Broker) -> None:
    # HISTORY_SIZE messages in all, so that the history still holds every one.
    before = await publish_all(broker, "c", payloads("before", 2))
    sub = await broker.subscribe("c", after=before[0])
    between = await publish_all(broker, "c", payloads("between", 2))
    sink = Collector()
    assert sub.start(sink) is True
    after = await publish_all(broker, "c", payloads("after", HISTORY_SIZE - 4))
    await arrived(sink, len(before) - 1 + len(between) + len(after) - len(sub.backlog))
    await settle(broker)
    seen = [m.position for m in sub.backlog] + [m.position for m in sink.messages]
    assert seen == before[1:] + between + after
    assert len(set(seen)) == len(seen)
    # And it agrees with the broker's own history.
    page = await broker.history("c", after=before[0])
    assert [m.position for m in page.messages] == seen
    sub.close()


async def test_start_delivers_pending_before_anything_newer(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    pending = await publish_all(broker, "c", payloads("p", 2))
    sink = Collector()
    await settle(broker)
    assert sink.messages == []  # nothing is delivered before start
    assert sub.start(sink) is True
    assert [m.position for m in sink.messages] == pending
    live = await broker.publish("c", b"live")
    await arrived(sink, 3)
    assert [m.position for m in sink.messages] == [*pending, live]
    sub.close()


async def test_pending_up_to_the_limit_is_delivered(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    pending = await publish_all(broker, "c", payloads("p", PENDING_LIMIT))
    sink = Collector()
    await settle(broker)
    assert sub.start(sink) is True
    assert [m.position for m in sink.messages] == pending
    assert not sub.closed
    sub.close()


async def test_more_pending_than_the_limit_fails_start(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    await publish_all(broker, "c", payloads("p", PENDING_LIMIT + 1))
    sink = Collector()
    await settle(broker)
    assert sub.start(sink) is False
    assert sub.closed
    await asyncio.wait_for(sub.wait_closed(), 1)
    await broker.publish("c", b"later")
    await settle(broker)
    assert sink.messages == []
    assert (await broker.stats("c")).subscribers == 0


# -- ending a subscription ----------------------------------------------------------------


async def test_sink_refusing_ends_the_subscription(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    other = await broker.subscribe("c")
    other_sink = Collector()
    assert other.start(other_sink)
    assert (await broker.stats("c")).subscribers == 2
    waiter = asyncio.create_task(sub.wait_closed())
    await settle()
    assert not waiter.done()

    sink = Collector(accept=2)
    assert sub.start(sink) is True
    await publish_all(broker, "c", payloads("m", 2))
    await arrived(sink, 2)
    assert sink.data == [b"m0", b"m1"]  # the refused message was still handed over
    assert sub.closed
    await asyncio.wait_for(waiter, 1)
    await sub.wait_closed()  # returns at once once closed
    await publish_all(broker, "c", payloads("n", 2))
    await arrived(other_sink, 4)
    await settle(broker)
    assert sink.data == [b"m0", b"m1"]
    assert other_sink.data == [b"m0", b"m1", b"n0", b"n1"]
    assert (await broker.stats("c")).subscribers == 1
    other.close()


async def test_sink_refusing_a_pending_message_fails_start(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    await publish_all(broker, "c", payloads("p", 3))
    sink = Collector(accept=1)
    await settle(broker)
    assert sub.start(sink) is False
    assert sink.data == [b"p0"]
    assert sub.closed
    await broker.publish("c", b"later")
    await settle(broker)
    assert sink.data == [b"p0"]
    assert (await broker.stats("c")).subscribers == 0


async def test_close_stops_delivery_and_is_idempotent(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    sink = Collector()
    assert sub.start(sink)
    await broker.publish("c", b"one")
    await arrived(sink, 1)
    waiter = asyncio.create_task(sub.wait_closed())
    await settle()
    assert not waiter.done()
    sub.close()
    assert sub.closed
    await asyncio.wait_for(waiter, 1)
    sub.close()
    assert sub.closed
    await sub.wait_closed()
    await broker.publish("c", b"two")
    await settle(broker)
    assert sink.data == [b"one"]
    assert (await broker.stats("c")).subscribers == 0


async def test_close_before_start_makes_start_fail(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    await broker.publish("c", b"pending")
    await settle(broker)
    sub.close()
    sink = Collector()
    assert sub.start(sink) is False
    assert sink.messages == []


async def test_broker_close_ends_every_subscription(broker: Broker) -> None:
    await broker.publish("a", b"x")
    started = await broker.subscribe("a")
    assert started.start(Collector())
    unstarted = await broker.subscribe("b")
    resumed = await broker.subscribe("a", after=(await broker.history("a")).messages[0].position)
    waiters = [asyncio.create_task(s.wait_closed()) for s in (started, unstarted, resumed)]
    await settle()
    assert not any(w.done() for w in waiters)
    await broker.close()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert started.closed and unstarted.closed and resumed.closed


# -- history ------------------------------------------------------------------------------


async def test_history_pages(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", 5))
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await broker.history("c", after=after, limit=2)
        assert page.gap is None
        assert page.last_position == positions[-1]
        if not page.messages:
            break
        assert len(page.messages) <= 2
        seen += [m.position for m in page.messages]
        after = page.messages[-1].position
        pages += 1
    assert seen == positions
    assert pages == 3


async def test_history_of_an_unknown_channel_is_empty(broker: Broker) -> None:
    page = await broker.history("never")
    assert page.messages == []
    assert page.gap is None
    assert page.last_position is None


async def test_history_does_not_subscribe(broker: Broker) -> None:
    await broker.publish("c", b"x")
    await broker.history("c")
    assert (await broker.stats("c")).subscribers == 0


# -- retention ----------------------------------------------------------------------------


async def test_history_size_bound_gives_an_expired_gap(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", HISTORY_SIZE + 3))
    retained = positions[-HISTORY_SIZE:]
    assert (await broker.stats("c")).retained == HISTORY_SIZE
    page = await broker.history("c")
    assert [m.position for m in page.messages] == retained

    sub = await broker.subscribe("c", after=positions[0])
    assert sub.gap == Gap(after=positions[0], resumed_from=retained[0], reason="expired")
    assert [m.position for m in sub.backlog] == retained
    sub.close()

    page = await broker.history("c", after=positions[0])
    assert page.gap == Gap(after=positions[0], resumed_from=retained[0], reason="expired")
    assert [m.position for m in page.messages] == retained


async def test_resuming_just_before_the_oldest_retained_is_no_gap(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", HISTORY_SIZE + 3))
    # positions[2] itself was dropped, but nothing after it was: nothing is lost.
    sub = await broker.subscribe("c", after=positions[2])
    assert sub.gap is None
    assert [m.position for m in sub.backlog] == positions[3:]
    sub.close()


async def test_history_seconds_bound_expires_old_messages(broker: Broker, clock: ManualClock) -> None:
    old = await publish_all(broker, "c", payloads("old", 2))
    await clock.advance(HISTORY_SECONDS / 2)
    mid = await broker.publish("c", b"mid")
    await clock.advance(HISTORY_SECONDS / 2 + 1)  # the old ones are now past the age limit
    new = await broker.publish("c", b"new")

    page = await broker.history("c")
    assert [m.position for m in page.messages] == [mid, new]
    assert (await broker.stats("c")).retained == 2

    sub = await broker.subscribe("c", after=old[0])
    assert sub.gap == Gap(after=old[0], resumed_from=mid, reason="expired")
    assert [m.position for m in sub.backlog] == [mid, new]
    sub.close()

    sub = await broker.subscribe("c", after=old[1])  # nothing after it was lost
    assert sub.gap is None
    assert [m.position for m in sub.backlog] == [mid, new]
    sub.close()


async def test_everything_expired_gives_a_gap_with_nothing_to_resume_from(broker: Broker, clock: ManualClock) -> None:
    positions = await publish_all(broker, "c", payloads("m", 3))
    sub = await broker.subscribe("c")  # keeps the channel known
    await clock.advance(HISTORY_SECONDS + 1)
    resumed = await broker.subscribe("c", after=positions[0])
    assert resumed.gap == Gap(after=positions[0], resumed_from=None, reason="expired")
    assert resumed.backlog == []
    resumed.close()
    up_to_date = await broker.subscribe("c", after=positions[-1])
    assert up_to_date.gap is None
    assert up_to_date.backlog == []
    up_to_date.close()
    sub.close()


async def test_expiry_does_not_need_a_publish(broker: Broker, clock: ManualClock) -> None:
    await publish_all(broker, "c", payloads("m", 2))
    await clock.advance(HISTORY_SECONDS + 1)
    assert (await broker.history("c")).messages == []
    assert (await broker.stats("c")).retained == 0


async def test_a_position_from_another_epoch_gives_an_unknown_epoch_gap(broker: Broker, broker_kind: str) -> None:
    if broker_kind != "memory":
        pytest.skip("epochs are a memory-broker notion (a restart loses its history)")
    clock = ManualClock()
    earlier = MemoryBroker(
        history_size=HISTORY_SIZE, history_seconds=HISTORY_SECONDS, pending_limit=PENDING_LIMIT, clock=clock
    )
    foreign = await earlier.publish("c", b"from before the restart")
    await earlier.close()

    positions = await publish_all(broker, "c", payloads("m", 2))
    sub = await broker.subscribe("c", after=foreign)
    assert sub.gap == Gap(after=foreign, resumed_from=positions[0], reason="unknown_epoch")
    assert [m.position for m in sub.backlog] == positions
    sub.close()

    page = await broker.history("c", after=foreign)
    assert page.gap == Gap(after=foreign, resumed_from=positions[0], reason="unknown_epoch")
    assert [m.position for m in page.messages] == positions

    empty = await broker.subscribe("fresh", after=foreign)
    assert empty.gap == Gap(after=foreign, resumed_from=None, reason="unknown_epoch")
    assert empty.backlog == []
    empty.close()
    page = await broker.history("never", after=foreign)
    assert page.gap == Gap(after=foreign, resumed_from=None, reason="unknown_epoch")
    assert page.messages == []


# -- invalid positions --------------------------------------------------------------------


@pytest.mark.parametrize("position", MALFORMED_POSITIONS)
async def test_malformed_position_is_refused_by_subscribe(broker: Broker, position: str) -> None:
    await broker.publish("c", b"x")
    await assert_invalid_argument(broker.subscribe("c", after=position))
    await assert_invalid_argument(broker.subscribe("unknown", after=position))
    assert (await broker.stats("c")).subscribers == 0


@pytest.mark.parametrize("position", MALFORMED_POSITIONS)
async def test_malformed_position_is_refused_by_history(broker: Broker, position: str) -> None:
    await broker.publish("c", b"x")
    await assert_invalid_argument(broker.history("c", after=position))
    await assert_invalid_argument(broker.history("unknown", after=position))


async def test_a_position_ahead_of_the_channel_is_refused(broker: Broker, broker_kind: str) -> None:
    if broker_kind != "memory":
        pytest.skip("forges a position in the memory broker's format")
    first = await broker.publish("slow", b"x")
    head, _, seq = first.rpartition("-")
    ahead = f"{head}-{int(seq) + 5}"
    await assert_invalid_argument(broker.subscribe("slow", after=ahead))
    await assert_invalid_argument(broker.history("slow", after=ahead))
    assert (await broker.stats("slow")).subscribers == 0


async def test_a_position_from_another_channel_is_a_gap_not_a_skip(broker: Broker, broker_kind: str) -> None:
    if broker_kind != "memory":
        pytest.skip("positions of other brokers may be comparable across channels")
    await broker.publish("slow", b"x")
    elsewhere = (await publish_all(broker, "busy", payloads("m", 5)))[-1]
    sub = await broker.subscribe("slow", after=elsewhere)
    assert sub.gap is not None and sub.gap.reason == "expired"
    assert [m.data for m in sub.backlog] == [b"x"]
    sub.close()


# -- channels and stats -------------------------------------------------------------------


async def test_channels_filters_by_prefix_and_sorts(broker: Broker) -> None:
    b_last = (await publish_all(broker, "t1/b", payloads("m", 2)))[-1]
    a_last = await broker.publish("t1/a", b"x")
    await broker.publish("t2/a", b"x")
    await broker.publish("t10/a", b"x")
    sub = await broker.subscribe("t1/c")
    sub_a = await broker.subscribe("t1/a")
    assert sub_a.start(Collector())

    found = await broker.channels("t1/")
    assert found == [
        ChannelStats("t1/a", 1, a_last, 1),
        ChannelStats("t1/b", 0, b_last, 2),
        ChannelStats("t1/c", 1, None, 0),
    ]
    assert [s.channel for s in await broker.channels()] == ["t1/a", "t1/b", "t1/c", "t10/a", "t2/a"]
    assert [s.channel for s in await broker.channels("t1")] == ["t1/a", "t1/b", "t1/c", "t10/a"]
    assert await broker.channels("nothing/") == []
    sub.close()
    sub_a.close()


async def test_stats_of_a_channel(broker: Broker) -> None:
    positions = await publish_all(broker, "c", payloads("m", HISTORY_SIZE + 1))
    sub = await broker.subscribe("c")
    assert await broker.stats("c") == ChannelStats("c", 1, positions[-1], HISTORY_SIZE)
    sub.close()
    assert await broker.stats("c") == ChannelStats("c", 0, positions[-1], HISTORY_SIZE)


async def test_stats_of_an_unknown_channel_is_zeros(broker: Broker) -> None:
    assert await broker.stats("never") == ChannelStats("never", 0, None, 0)


async def test_idle_channels_are_forgotten_once_their_history_expires(broker: Broker, clock: ManualClock) -> None:
    await broker.publish("idle", b"x")
    await broker.publish("watched", b"x")
    sub = await broker.subscribe("watched")
    await clock.advance(HISTORY_SECONDS + 1)
    await broker.publish("fresh", b"x")

    found = {s.channel: s for s in await broker.channels()}
    assert set(found) == {"fresh", "watched"}
    assert found["watched"].subscribers == 1
    assert found["watched"].retained == 0
    idle = await broker.stats("idle")
    assert (idle.subscribers, idle.retained) == (0, 0)
    sub.close()


async def test_a_channel_emptied_by_unsubscribing_is_forgotten(broker: Broker) -> None:
    sub = await broker.subscribe("c")
    assert [s.channel for s in await broker.channels()] == ["c"]
    sub.close()
    assert await broker.channels() == []
    assert await broker.stats("c") == ChannelStats("c", 0, None, 0)


async def test_positions_stay_distinct_after_a_channel_is_forgotten(broker: Broker, clock: ManualClock) -> None:
    first = await broker.publish("c", b"one")
    await clock.advance(HISTORY_SECONDS + 1)
    await broker.channels()  # an idle, expired channel is forgotten here
    second = await broker.publish("c", b"two")
    assert second != first
    sub = await broker.subscribe("c", after=first)
    assert [m.data for m in sub.backlog] == [b"two"]
    sub.close()


async def test_resuming_a_forgotten_channel_reports_the_lost_history(
    broker: Broker, clock: ManualClock, broker_kind: str
) -> None:
    if broker_kind != "memory":
        pytest.skip(
            "a forgotten memory channel loses its generation; a shared broker keeps the channel's "
            "identity, so resuming after its last message rightly reports nothing lost"
        )
    last = (await publish_all(broker, "c", payloads("m", 3)))[-1]
    await clock.advance(HISTORY_SECONDS + 1)
    await broker.channels()
    sub = await broker.subscribe("c", after=last)  # not an error: the history is gone, and says so
    assert sub.gap is not None and sub.gap.reason == "expired"
    assert sub.backlog == []
    sub.close()


# -- channel independence -----------------------------------------------------------------


async def test_channels_are_independent(broker: Broker) -> None:
    subs = {name: await broker.subscribe(name) for name in ("t1/a", "t1/ab", "t1")}
    sinks = {name: Collector() for name in subs}
    for name, sub in subs.items():
        assert sub.start(sinks[name])
    await broker.publish("t1/a", b"a")
    await broker.publish("t1/ab", b"ab")
    await broker.publish("t1", b"t1")
    await broker.publish("t1/a/b", b"a/b")
    for sink in sinks.values():
        await arrived(sink, 1)
    await settle(broker)
    assert sinks["t1/a"].data == [b"a"]
    assert sinks["t1/ab"].data == [b"ab"]
    assert sinks["t1"].data == [b"t1"]
    for name, data in (("t1/a", b"a"), ("t1/ab", b"ab"), ("t1", b"t1"), ("t1/a/b", b"a/b")):
        page = await broker.history(name)
        assert [m.data for m in page.messages] == [data]
        assert [m.channel for m in page.messages] == [name]
    for sub in subs.values():
        sub.close()


async def test_retention_is_per_channel(broker: Broker) -> None:
    await publish_all(broker, "busy", payloads("m", HISTORY_SIZE * 2))
    quiet = await publish_all(broker, "quiet", payloads("q", 2))
    assert [m.position for m in (await broker.history("quiet")).messages] == quiet
    assert (await broker.stats("busy")).retained == HISTORY_SIZE


async def test_subscription_closing_does_not_affect_other_channels(broker: Broker) -> None:
    a = await broker.subscribe("a")
    b = await broker.subscribe("b")
    sink_b = Collector()
    assert a.start(Collector(accept=1))
    assert b.start(sink_b)
    await broker.publish("a", b"x")
    await eventually(lambda: a.closed)
    assert not b.closed
    await broker.publish("b", b"y")
    await arrived(sink_b, 1)
    assert sink_b.data == [b"y"]
    b.close()
