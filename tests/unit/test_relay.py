"""follow(): a broker subscription relayed into real StreamOut objects over the MemoryBroker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from sluicegate.clock import ManualClock
from sluicegate.engines.broker.memory import MemoryBroker
from sluicegate.errors import APIError, ErrCode, StreamClosed
from sluicegate.services.relay import follow, memo_frame
from sluicegate.streaming.codec import Frame, MessageCodec
from sluicegate.streaming.outbox import Outbox
from sluicegate.streaming.streams import StreamInfo, StreamOut

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from sluicegate.engines.broker import BrokerMessage, Gap, Subscription

HISTORY_SIZE = 3
PENDING_LIMIT = 2


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def broker(clock: ManualClock) -> MemoryBroker:
    return MemoryBroker(history_size=HISTORY_SIZE, history_seconds=60.0, pending_limit=PENDING_LIMIT, clock=clock)


class Builder:
    """A frame builder that counts how often it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, message: BrokerMessage) -> Frame:
        self.calls += 1
        return Frame(message.data, id=message.position)

    def frame_of(self, message: BrokerMessage) -> Frame:
        return memo_frame(message, "test", self)


def gap_frame(gap: Gap) -> Frame:
    body = {"after": gap.after, "resumedFrom": gap.resumed_from, "reason": gap.reason}
    return Frame(orjson.dumps(body), event="gap")


def make_stream(maxsize: int = 100, *, put_timeout: float | None = None) -> tuple[StreamOut[Any], Outbox]:
    outbox = Outbox(maxsize, put_timeout=put_timeout)
    info = StreamInfo(path="/x", transport="sse", last_event_id=None, auth=None)
    codec: MessageCodec[Any] = MessageCodec(Any)
    return StreamOut(info, codec, outbox), outbox


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def queued(outbox: Outbox) -> list[Frame]:
    """What is queued now, control frames left out; never waits for more."""
    if not len(outbox):
        return []
    return [f for f in await outbox.take() if not f.control]


def publish_now(broker: MemoryBroker, channel: str, data: bytes) -> str:
    """Publish, checking that the publisher never has to wait for anyone."""
    coro: Coroutine[Any, Any, str] = broker.publish(channel, data)
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    position: str = done.value.value
    return position


def start_follow(
    stream: StreamOut[Any],
    subscription: Subscription,
    frame_of: Callable[[BrokerMessage], Frame],
    until: Callable[[BrokerMessage], bool] | None = None,
) -> asyncio.Task[None]:
    return asyncio.create_task(follow(stream, subscription, frame_of, gap_frame=gap_frame, until=until))


async def test_gap_then_backlog_then_live(broker: MemoryBroker) -> None:
    positions = [await broker.publish("c", f"m{i}".encode()) for i in range(HISTORY_SIZE + 3)]
    subscription = await broker.subscribe("c", after=positions[0])
    assert subscription.gap is not None
    stream, outbox = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    live = [publish_now(broker, "c", b"live0"), publish_now(broker, "c", b"live1")]
    await settle()

    frames = await queued(outbox)
    gap, rest = frames[0], frames[1:]
    assert gap.event == "gap"
    assert orjson.loads(gap.data) == {"after": positions[0], "resumedFrom": positions[3], "reason": "expired"}
    assert [f.id for f in rest] == positions[3:] + live
    assert [f.data for f in rest] == [b"m3", b"m4", b"m5", b"live0", b"live1"]
    assert stream.messages_sent == 6
    assert not task.done()

    subscription.close()
    await asyncio.wait_for(task, 1)
    assert task.result() is None


async def test_no_gap_frame_without_gap(broker: MemoryBroker) -> None:
    positions = [await broker.publish("c", f"m{i}".encode()) for i in range(3)]
    subscription = await broker.subscribe("c", after=positions[0])
    stream, outbox = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    assert [f.id for f in await queued(outbox)] == positions[1:]
    subscription.close()
    await asyncio.wait_for(task, 1)


async def test_live_only_opens_the_stream_first(broker: MemoryBroker) -> None:
    await broker.publish("c", b"old")
    subscription = await broker.subscribe("c")
    stream, outbox = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    assert outbox.started
    opened = await outbox.take()
    assert [f.control for f in opened] == [True]  # the open marker, before any message
    position = publish_now(broker, "c", b"new")
    assert [(f.id, f.data) for f in await queued(outbox)] == [(position, b"new")]
    subscription.close()
    await asyncio.wait_for(task, 1)


async def test_each_message_is_framed_once_for_every_subscriber(broker: MemoryBroker) -> None:
    builder = Builder()
    streams = [make_stream() for _ in range(3)]
    subscriptions = [await broker.subscribe("c") for _ in streams]
    tasks = [start_follow(s, sub, builder.frame_of) for (s, _), sub in zip(streams, subscriptions, strict=True)]
    await settle()
    positions = [publish_now(broker, "c", f"m{i}".encode()) for i in range(3)]
    await settle()
    assert builder.calls == 3

    per_outbox = [await queued(outbox) for _, outbox in streams]
    assert all([f.id for f in frames] == positions for frames in per_outbox)
    for i in range(3):
        first = per_outbox[0][i]
        assert all(frames[i] is first for frames in per_outbox)

    # A late subscriber resuming from the backlog gets the very same frames, built no more.
    late_stream, late_outbox = make_stream()
    late = await broker.subscribe("c", after=positions[0])
    late_task = start_follow(late_stream, late, builder.frame_of)
    await settle()
    late_frames = await queued(late_outbox)
    assert [f.id for f in late_frames] == positions[1:]
    assert late_frames[0] is per_outbox[0][1]
    assert late_frames[1] is per_outbox[0][2]
    assert builder.calls == 3

    await broker.close()
    await asyncio.wait_for(asyncio.gather(*tasks, late_task), 1)


async def test_until_ends_after_the_matching_live_message(broker: MemoryBroker) -> None:
    subscription = await broker.subscribe("c")
    stream, outbox = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of, until=lambda m: m.data == b"stop")
    await settle()
    publish_now(broker, "c", b"a")
    publish_now(broker, "c", b"stop")
    publish_now(broker, "c", b"b")
    await asyncio.wait_for(task, 1)
    assert task.result() is None
    assert [f.data for f in await queued(outbox)] == [b"a", b"stop"]
    assert subscription.closed
    assert (await broker.stats("c")).subscribers == 0


async def test_until_ends_after_the_matching_backlog_message(broker: MemoryBroker) -> None:
    first = await broker.publish("c", b"first")
    for data in (b"a", b"stop", b"b"):
        await broker.publish("c", data)
    subscription = await broker.subscribe("c", after=first)
    stream, outbox = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of, until=lambda m: m.data == b"stop")
    await asyncio.wait_for(task, 1)
    publish_now(broker, "c", b"later")
    assert [f.data for f in await queued(outbox)] == [b"a", b"stop"]
    assert subscription.closed
    assert (await broker.stats("c")).subscribers == 0


async def test_a_full_subscriber_is_cut_off_while_others_get_everything(broker: MemoryBroker) -> None:
    builder = Builder()
    fast = [make_stream(100) for _ in range(2)]
    slow_stream, slow_outbox = make_stream(2)
    everyone = [*fast, (slow_stream, slow_outbox)]
    subscriptions = [await broker.subscribe("c") for _ in everyone]
    tasks = [start_follow(s, sub, builder.frame_of) for (s, _), sub in zip(everyone, subscriptions, strict=True)]
    await settle()
    assert (await broker.stats("c")).subscribers == 3

    positions = [publish_now(broker, "c", f"m{i}".encode()) for i in range(10)]  # nobody reads meanwhile
    await settle()

    assert slow_outbox.overflowed
    assert slow_stream.closed
    assert subscriptions[2].closed
    assert tasks[2].done() and tasks[2].result() is None
    slow_ids = [f.id for f in await queued(slow_outbox)]
    assert slow_ids == positions[: len(slow_ids)]  # a prefix, then nothing
    for _, outbox in fast:
        assert not outbox.overflowed
        assert [f.id for f in await queued(outbox)] == positions
    assert (await broker.stats("c")).subscribers == 2
    assert builder.calls == 10

    more = publish_now(broker, "c", b"more")
    for _, outbox in fast:
        assert [f.id for f in await queued(outbox)] == [more]
    assert await queued(slow_outbox) == []

    await broker.close()
    await asyncio.wait_for(asyncio.gather(*tasks[:2]), 1)


async def test_slow_backlog_replay_ends_with_slow_consumer(broker: MemoryBroker) -> None:
    start = await broker.publish("c", b"start")
    backlog = [await broker.publish("c", f"b{i}".encode()) for i in range(HISTORY_SIZE - 1)]
    subscription = await broker.subscribe("c", after=start)
    assert [m.position for m in subscription.backlog] == backlog
    stream, outbox = make_stream(1, put_timeout=None)
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    assert not task.done()  # blocked sending the backlog: the client reads nothing yet
    assert len(outbox) == 1

    for i in range(PENDING_LIMIT + 1):  # more than may wait while the backlog is replayed
        publish_now(broker, "c", f"new{i}".encode())
    assert subscription.closed

    sent: list[Frame] = []
    for _ in range(20):  # now the client reads
        if task.done():
            break
        sent += await queued(outbox)
        await settle()
    with pytest.raises(APIError) as info:
        await task
    assert info.value.code is ErrCode.SLOW_CONSUMER
    sent += await queued(outbox)
    assert [f.id for f in sent] == backlog  # the backlog went out, then the error
    assert (await broker.stats("c")).subscribers == 0


async def test_pending_within_the_limit_during_a_slow_replay_follows_the_backlog(clock: ManualClock) -> None:
    broker = MemoryBroker(history_size=10, history_seconds=60.0, pending_limit=PENDING_LIMIT, clock=clock)
    start = await broker.publish("c", b"start")
    backlog = [await broker.publish("c", f"b{i}".encode()) for i in range(4)]
    subscription = await broker.subscribe("c", after=start)
    stream, outbox = make_stream(3, put_timeout=None)
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    assert len(outbox) == 3  # the fourth backlog frame waits for room
    pending = [publish_now(broker, "c", f"p{i}".encode()) for i in range(PENDING_LIMIT)]
    assert not subscription.closed

    sent = await queued(outbox)  # the client reads: the rest of the backlog, then what waited
    await settle()
    sent += await queued(outbox)
    live = publish_now(broker, "c", b"live")
    sent += await queued(outbox)
    assert [f.id for f in sent] == [*backlog, *pending, live]
    assert not task.done()
    subscription.close()
    await asyncio.wait_for(task, 1)


async def test_cancelling_follow_closes_the_subscription(broker: MemoryBroker) -> None:
    subscription = await broker.subscribe("c")
    stream, _ = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    assert (await broker.stats("c")).subscribers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert subscription.closed
    assert (await broker.stats("c")).subscribers == 0


async def test_cancelling_during_backlog_replay_closes_the_subscription(broker: MemoryBroker) -> None:
    start = await broker.publish("c", b"start")
    for i in range(HISTORY_SIZE - 1):
        await broker.publish("c", f"b{i}".encode())
    subscription = await broker.subscribe("c", after=start)
    stream, _ = make_stream(1, put_timeout=None)
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert subscription.closed
    assert (await broker.stats("c")).subscribers == 0


async def test_broker_close_ends_follow(broker: MemoryBroker) -> None:
    subscription = await broker.subscribe("c")
    stream, _ = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    await broker.close()
    await asyncio.wait_for(task, 1)
    assert task.result() is None
    assert subscription.closed


async def test_a_closed_stream_ends_follow_at_the_next_message(broker: MemoryBroker) -> None:
    subscription = await broker.subscribe("c")
    stream, outbox = make_stream()
    task = start_follow(stream, subscription, Builder().frame_of)
    await settle()
    outbox.discard()  # the client went away
    publish_now(broker, "c", b"x")
    await asyncio.wait_for(task, 1)
    assert subscription.closed
    assert (await broker.stats("c")).subscribers == 0


async def test_a_closed_stream_during_backlog_raises_and_closes(broker: MemoryBroker) -> None:
    first = await broker.publish("c", b"first")
    await broker.publish("c", b"second")
    subscription = await broker.subscribe("c", after=first)
    stream, outbox = make_stream()
    outbox.close()
    with pytest.raises(StreamClosed):
        await follow(stream, subscription, Builder().frame_of, gap_frame=gap_frame)
    assert subscription.closed
    assert (await broker.stats("c")).subscribers == 0


async def test_memo_frame_builds_once_per_key() -> None:
    from sluicegate.engines.broker import BrokerMessage

    message = BrokerMessage("c", "e-1", b"{}", 0.0)
    builder = Builder()
    first = memo_frame(message, "sse", builder)
    assert memo_frame(message, "sse", builder) is first
    assert builder.calls == 1
    other = memo_frame(message, "ws", builder)
    assert other is not first
    assert builder.calls == 2
