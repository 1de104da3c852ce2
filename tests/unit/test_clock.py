"""ManualClock moves only when told; SystemClock is the real, timezone-aware one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from sluicegate.clock import ManualClock, SystemClock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_sleeper_wakes_only_when_advance_passes_its_deadline() -> None:
    clock = ManualClock()
    sleeper = asyncio.create_task(clock.sleep(10))
    await settle()
    assert clock.sleepers == 1
    await clock.advance(9.5)
    assert not sleeper.done()
    await clock.advance(0.5)
    assert sleeper.done()
    assert clock.sleepers == 0


async def test_sleepers_wake_in_deadline_order_at_their_deadline() -> None:
    clock = ManualClock()
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(nap(name, s)) for name, s in [("c", 3), ("a", 1), ("d", 30), ("b", 2)]]
    await settle()
    await clock.advance(5)
    assert woke == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert not tasks[2].done()
    await clock.advance(25)
    assert woke[-1] == ("d", 30.0)
    await asyncio.gather(*tasks)


async def test_equal_deadlines_wake_in_the_order_they_slept() -> None:
    clock = ManualClock()
    woke: list[int] = []

    async def nap(i: int) -> None:
        await clock.sleep(1)
        woke.append(i)

    tasks = [asyncio.create_task(nap(i)) for i in range(4)]
    await settle()
    await clock.advance(1)
    assert woke == [0, 1, 2, 3]
    await asyncio.gather(*tasks)


async def test_sleeper_that_sleeps_again_within_the_advance_wakes_again() -> None:
    clock = ManualClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep(2)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(ticker())
    await settle()
    await clock.advance(5)
    assert ticks == [2.0, 4.0]
    await clock.advance(1)
    assert ticks == [2.0, 4.0, 6.0]
    await task


async def test_non_positive_sleep_wakes_on_zero_advance() -> None:
    clock = ManualClock()
    sleeper = asyncio.create_task(clock.sleep(-1))
    await settle()
    assert not sleeper.done()
    await clock.advance(0)
    assert sleeper.done()


async def test_cancelled_sleeper_is_not_counted() -> None:
    clock = ManualClock()
    sleeper = asyncio.create_task(clock.sleep(1))
    await settle()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.sleepers == 0
    await clock.advance(2)  # waking a cancelled sleeper does nothing
    assert clock.monotonic() == 2.0


async def test_now_and_monotonic_move_with_advance() -> None:
    start = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    clock = ManualClock(start)
    assert clock.now() == start
    assert clock.monotonic() == 0.0
    await clock.advance(90)
    assert clock.now() == start + timedelta(seconds=90)
    assert clock.monotonic() == 90.0
    await clock.advance(0.25)
    assert clock.monotonic() == 90.25


def test_manual_clock_default_start_is_timezone_aware() -> None:
    now = ManualClock().now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_system_clock_now_is_timezone_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=1)


def test_system_clock_monotonic_never_goes_back() -> None:
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first


async def test_system_clock_sleep_zero_returns() -> None:
    await asyncio.wait_for(SystemClock().sleep(0), 1)
