"""Waiting in tests for work done on threads or other tasks, bounded, never on a timer
that an injectable clock could drive instead."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate.clock import ManualClock


async def until(condition: Callable[[], bool], what: str = "the condition", tries: int = 500) -> None:
    """Yield (10 ms at a time, at most ``tries`` times) until ``condition`` holds."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never held")


async def advance_until(
    clock: ManualClock, condition: Callable[[], bool], step: float, what: str, tries: int = 300
) -> None:
    """Move ``clock`` on by ``step`` (letting the work it wakes run for 10 ms) until ``condition`` holds."""
    for _ in range(tries):
        if condition():
            return
        await clock.advance(step)
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never held")
