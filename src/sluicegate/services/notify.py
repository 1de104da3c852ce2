"""Waiting for work done elsewhere: a request that must wait for a session's processor
(ending an ingestion session with ``waitForCompletion``, closing a race session) wakes
on the session's messages on the broker, from whichever node processes it, and looks
at the database each time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sluicegate.engines.broker import Broker, BrokerMessage

__all__ = ["wait_until", "wakeups"]

T = TypeVar("T")

#: The longest wait between two looks, should a message be lost (a broker outage).
RECHECK_SECONDS = 1.0


@contextlib.asynccontextmanager
async def wakeups(broker: Broker, channel: str) -> AsyncIterator[asyncio.Event]:
    """An event set whenever a message is published on ``channel`` from now on."""
    subscription = await broker.subscribe(channel)
    event = asyncio.Event()

    def sink(message: BrokerMessage) -> bool:
        event.set()
        return True

    subscription.start(sink)
    try:
        yield event
    finally:
        subscription.close()


async def wait_until(check: Callable[[], Awaitable[T | None]], wake: asyncio.Event, within: float) -> T | None:
    """Call ``check`` until it returns something, each time ``wake`` is set (and at least
    every second), for at most ``within`` seconds of real time (a request's wait, like
    any HTTP timeout).

    Returns:
        What ``check`` returned last (``None`` when the time ran out).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        wake.clear()
        found = await check()
        remaining = deadline - loop.time()
        if found is not None or remaining <= 0:
            return found
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, RECHECK_SECONDS)):
                await wake.wait()
