"""Running a connection's tasks together until the first one ends, with ``asyncio.TaskGroup``.

A stream often has several jobs at once (reading what the client sends, relaying a
subscription to it); when one ends (the client left, the subscription ended) the others
must stop. :func:`until_first` does that in one place: the others are cancelled and
awaited, and an exception of the one that ended (not a group) reaches the caller.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["until_first"]


class _Ended(Exception):
    """Raised by a task that returned, so that the group cancels the others."""


async def until_first(*jobs: Coroutine[Any, Any, Any]) -> None:
    """Run ``jobs`` concurrently until one returns or raises; cancel the rest.

    Raises:
        Exception: the first error of a job (itself, not an ``ExceptionGroup``).
    """

    async def run(job: Coroutine[Any, Any, Any]) -> None:
        await job
        raise _Ended

    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(run(job))
    except BaseExceptionGroup as failed:
        errors = [e for e in failed.exceptions if not isinstance(e, _Ended)]
        if errors:
            raise errors[0] from None
