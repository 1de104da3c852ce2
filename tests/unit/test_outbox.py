"""The bounded per-stream queue: offer/put, overflow, take-all, close."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.errors import StreamClosed
from sluicegate.streaming.codec import Frame
from sluicegate.streaming.outbox import Outbox


def frames(n: int) -> list[Frame]:
    return [Frame(str(i).encode()) for i in range(n)]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_maxsize_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(0)


async def test_offer_queues_until_full() -> None:
    box = Outbox(3)
    assert all(box.offer(f) for f in frames(3))
    assert len(box) == 3
    assert not box.overflowed
    assert not box.closed


async def test_offer_past_full_overflows_and_closes() -> None:
    box = Outbox(2)
    first, second, third = frames(3)
    assert box.offer(first) and box.offer(second)
    assert box.offer(third) is False
    assert box.overflowed
    assert box.overflow.done()
    assert box.closed
    assert len(box) == 2  # what was queued stays for the writer to finish


async def test_offer_after_overflow_is_refused() -> None:
    box = Outbox(1)
    box.offer(Frame(b"a"))
    box.offer(Frame(b"b"))
    assert box.offer(Frame(b"c")) is False
    assert len(box) == 1


async def test_offer_to_closed_outbox_is_refused_without_overflow() -> None:
    box = Outbox(5)
    box.close()
    assert box.offer(Frame(b"a")) is False
    assert not box.overflowed


async def test_overflow_future_wakes_a_waiter() -> None:
    box = Outbox(1)

    async def wait_overflow() -> None:
        await box.overflow

    waiter = asyncio.create_task(wait_overflow())
    box.offer(Frame(b"a"))
    await settle()
    assert not waiter.done()
    box.offer(Frame(b"b"))
    await asyncio.wait_for(waiter, 1)


async def test_take_returns_everything_queued_in_order() -> None:
    box = Outbox(10)
    queued = frames(5)
    for f in queued:
        box.offer(f)
    assert await box.take() == queued
    assert len(box) == 0


async def test_take_waits_for_the_first_frame() -> None:
    box = Outbox(10)
    taker = asyncio.create_task(box.take())
    await settle()
    assert not taker.done()
    frame = Frame(b"x")
    box.offer(frame)
    assert await asyncio.wait_for(taker, 1) == [frame]


async def test_take_after_close_returns_remaining_then_empty() -> None:
    box = Outbox(10)
    queued = frames(2)
    for f in queued:
        box.offer(f)
    box.close()
    assert await box.take() == queued
    assert await box.take() == []


async def test_close_wakes_a_waiting_take_with_empty_list() -> None:
    box = Outbox(10)
    taker = asyncio.create_task(box.take())
    await settle()
    assert not taker.done()
    box.close()
    assert await asyncio.wait_for(taker, 1) == []


async def test_put_queues_without_waiting_when_there_is_room() -> None:
    box = Outbox(2)
    frame = Frame(b"a")
    await asyncio.wait_for(box.put(frame), 1)
    assert await box.take() == [frame]


async def test_put_waits_for_room_and_proceeds_when_consumer_takes() -> None:
    box = Outbox(1)
    first, second = frames(2)
    await box.put(first)
    putter = asyncio.create_task(box.put(second))
    await settle()
    assert not putter.done()
    assert len(box) == 1
    assert await box.take() == [first]
    await asyncio.wait_for(putter, 1)
    assert await box.take() == [second]
    assert not box.overflowed


async def test_several_waiting_putters_keep_within_the_limit() -> None:
    box = Outbox(1)
    await box.put(Frame(b"0"))
    putters = [asyncio.create_task(box.put(Frame(str(i).encode()))) for i in (1, 2, 3)]
    received: list[bytes] = []
    while len(received) < 4:
        taken = await asyncio.wait_for(box.take(), 1)
        assert len(taken) == 1
        received.extend(f.data for f in taken)
        await settle()
    await asyncio.gather(*putters)
    assert sorted(received) == [b"0", b"1", b"2", b"3"]


async def test_put_timeout_trips_overflow_and_raises_stream_closed() -> None:
    box = Outbox(1, put_timeout=0.01)
    await box.put(Frame(b"a"))
    with pytest.raises(StreamClosed, match="did not read in time"):
        await box.put(Frame(b"b"))
    assert box.overflowed
    assert box.closed


async def test_cancelled_put_does_not_queue_its_frame() -> None:
    box = Outbox(1)
    first = Frame(b"a")
    await box.put(first)
    putter = asyncio.create_task(box.put(Frame(b"b")))
    await settle()
    putter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await putter
    assert await box.take() == [first]
    assert not box.overflowed
    assert box.offer(Frame(b"c"))


async def test_put_into_closed_outbox_raises_stream_closed() -> None:
    box = Outbox(1)
    box.close()
    with pytest.raises(StreamClosed):
        await box.put(Frame(b"a"))
    assert not box.overflowed


async def test_close_releases_a_waiting_put_with_stream_closed() -> None:
    box = Outbox(1)
    await box.put(Frame(b"a"))
    putter = asyncio.create_task(box.put(Frame(b"b")))
    await settle()
    box.close()
    with pytest.raises(StreamClosed, match="closed"):
        await asyncio.wait_for(putter, 1)
    assert not box.overflowed
    assert len(box) == 1


async def test_push_control_bypasses_the_limit() -> None:
    box = Outbox(1)
    data, control = Frame(b"data"), Frame.preframed(b": ping\n\n")
    box.offer(data)
    box.push_control(control)
    assert len(box) == 2
    assert not box.overflowed
    assert await box.take() == [data, control]


async def test_push_control_is_accepted_after_close_for_a_final_error() -> None:
    box = Outbox(1)
    box.offer(Frame(b"a"))
    box.offer(Frame(b"b"))  # overflow
    final = Frame(b'{"code":"slow_consumer"}')
    box.push_control(final)
    taken = await box.take()
    assert taken[-1] is final


async def test_push_control_wakes_a_waiting_take() -> None:
    box = Outbox(1)
    taker = asyncio.create_task(box.take())
    await settle()
    frame = Frame(b"ping")
    box.push_control(frame)
    assert await asyncio.wait_for(taker, 1) == [frame]


async def test_discard_drops_queued_frames_and_closes() -> None:
    box = Outbox(5)
    for f in frames(3):
        box.offer(f)
    box.discard()
    assert len(box) == 0
    assert box.closed
    assert await box.take() == []
    assert box.offer(Frame(b"late")) is False
