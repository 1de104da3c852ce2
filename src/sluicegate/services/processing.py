"""One processor per session, on whichever node holds the session's lease.

A session's processing (its batches, archives, idle flushes and expiry) runs in one
process at a time: the holder of its lease (:mod:`sluicegate.engines.store.leases`).
:class:`Processors` is that rule for one kind of session. Every tick (a quarter of the
lease) it renews the leases this process holds, cancels the processors whose lease was
lost, and takes the leases of unfinished sessions that nobody holds (their node died,
or shut down), starting their processors here. A processor that returns has finished
its session; its lease is forgotten. One that fails is logged and its lease released,
so that a later tick (here or elsewhere) starts it again.

If the database cannot be reached, renewals fail; before a lease can expire the
processors are cancelled (a node that cannot renew must assume another will take over),
and taken up again once the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluicegate.edge import api_error
from sluicegate.engines.log import LogError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sluicegate.clock import Clock
    from sluicegate.engines.log import SessionLog
    from sluicegate.engines.store.leases import Leases

__all__ = ["Lease", "Processors", "follow_into"]

log = logging.getLogger("sluicegate.processing")

#: Sessions a tick takes at most (the rest wait for the next tick, or another node).
TAKE_PER_TICK = 50


@dataclass(frozen=True, slots=True)
class Lease:
    """A processor's tenure over its session.

    Attributes:
        key: the session's id.
        epoch: which acquisition of the lease this is.
        reader: a name for this tenure's log reader (unique across processes and epochs).
    """

    key: str
    epoch: int
    reader: str


async def follow_into(queue: asyncio.Queue[Any], session_log: SessionLog, name: str, lease: Lease) -> None:
    """Put what a processor's log reader yields into ``queue`` (a ``LogError`` too, as an item)."""
    try:
        async with contextlib.aclosing(session_log.follow(name, reader=lease.reader)) as entries:
            async for found in entries:
                await queue.put(found)
    except LogError as exc:
        await queue.put(exc)


class Processors:
    """Runs a processor for each session of one kind that this process holds the lease of.

    Args:
        kind: the lease kind (``ingest``, ``races``).
        leases: the database's leases, as this process.
        clock: drives the ticks.
        candidates: unfinished sessions whose lease is free or expired (at most ``limit``).
        run: the processor of one session; returns once the session is finished.
        fence: stop the processors when the leases cannot be renewed (off where no other
            process can take them: the spool is one process's).
    """

    def __init__(
        self,
        kind: str,
        leases: Leases,
        clock: Clock,
        *,
        candidates: Callable[[int], Awaitable[list[str]]],
        run: Callable[[Lease], Awaitable[None]],
        fence: bool = True,
    ) -> None:
        self.kind = kind
        self.leases = leases
        self.clock = clock
        self.candidates = candidates
        self.run = run
        self.fence = fence
        self.name = f"{kind}_processors"
        self.running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self._starting: dict[str, asyncio.Future[bool]] = {}
        self._closing = False

    @property
    def tick(self) -> float:
        """Seconds between two renewals and scans."""
        return max(self.leases.seconds / 4, 0.01)

    async def open(self) -> None:
        self._renewed_at = self.clock.monotonic()
        self._loop = asyncio.create_task(self._ticks())

    async def close(self) -> None:
        """Stop every processor here and release their leases (another node takes them at once)."""
        self._closing = True
        tasks = [t for t in (self._loop, *self.running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key in list(self.running):
            with contextlib.suppress(Exception):
                await self.leases.release(self.kind, key)
        self.running.clear()

    async def check(self) -> None:
        """Nothing to check beyond the database (checked as the store)."""

    async def ensure(self, key: str) -> bool:
        """Start the processor of ``key`` here now, if nobody holds its lease.

        Returns:
            Whether it runs here.
        """
        if key in self.running:
            return True
        starting = self._starting.get(key)
        if starting is not None:  # being taken already (by a tick, or another request)
            return await asyncio.shield(starting)
        if self._closing:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            started = await self._start(key)
        finally:
            del self._starting[key]
            if not future.done():
                future.set_result(key in self.running)
        return started

    async def _start(self, key: str) -> bool:
        try:
            epoch = await self.leases.acquire(self.kind, key)
        except Exception as exc:
            log.warning("could not take the lease of %s %s: %s", self.kind, key, api_error(exc) or exc)
            return False
        if epoch is None:
            return False
        return self.adopt(key, epoch)

    def adopt(self, key: str, epoch: int) -> bool:
        """Start the processor of ``key`` under a lease this process has just taken (a new
        session's, taken before its row exists, so that no other node's scan takes it first).

        Returns:
            Whether it runs here.
        """
        if self._closing:
            return False
        if key not in self.running:
            lease = Lease(key, epoch, f"{self.leases.holder}.{epoch}")
            self.running[key] = asyncio.create_task(self._run(lease))
        return True

    async def _run(self, lease: Lease) -> None:
        try:
            await self.run(lease)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            mapped = api_error(exc)
            if mapped is not None:
                log.warning("processing %s %s stopped: %s (retried)", self.kind, lease.key, mapped.message)
            else:
                log.exception("processing %s %s failed (retried)", self.kind, lease.key)
            # Released before it leaves ``running``: until then no tick starts it again here.
            with contextlib.suppress(Exception):
                await self.leases.release(self.kind, lease.key)
            self.running.pop(lease.key, None)
            return
        with contextlib.suppress(Exception):
            await self.leases.forget(self.kind, lease.key)
        self.running.pop(lease.key, None)

    async def _ticks(self) -> None:
        first = True  # at start-up, take over at once what nobody holds (a restart's own sessions)
        while True:
            if not first:
                await self.clock.sleep(self.tick)
            first = False
            try:
                async with asyncio.timeout(self.leases.seconds / 2):  # a database that hangs is one that fails
                    await self._renew()
                    await self._take()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                mapped = api_error(exc)
                log.warning("%s leases: %s", self.kind, mapped.message if mapped is not None else repr(exc))
                self._fence()

    async def _renew(self) -> None:
        held = list(self.running)
        kept = await self.leases.renew(self.kind, held) if held else set()
        self._renewed_at = self.clock.monotonic()
        for key in held:
            if key not in kept:
                log.warning("the lease of %s %s was taken by another process: stopping here", self.kind, key)
                task = self.running.pop(key, None)
                if task is not None:
                    task.cancel()

    def _fence(self) -> None:
        """Stop every processor when the leases may have expired unrenewed."""
        if not self.fence or self.clock.monotonic() - self._renewed_at < self.leases.seconds - self.tick:
            return
        for key, task in list(self.running.items()):
            log.warning("cannot renew the lease of %s %s: stopping here until the database answers", self.kind, key)
            task.cancel()
            del self.running[key]

    async def _take(self) -> None:
        for key in await self.candidates(TAKE_PER_TICK):
            if key not in self.running:
                await self.ensure(key)
