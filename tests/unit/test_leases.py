"""Leases in the database and the processors that run under them, on SQLite and PostgreSQL,
with the manual clock: who holds a session's work, for how long, and who takes it over."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from sluicegate.clock import ManualClock
from sluicegate.engines.store import Store
from sluicegate.engines.store.leases import LeaseRow, Leases
from sluicegate.services.processing import Lease, Processors
from tests.waiting import advance_until, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SECONDS = 10.0


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = Store(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def leases(store: Store, clock: ManualClock, holder: str) -> Leases:
    return Leases(store, clock, holder=holder, seconds=SECONDS)


async def test_a_free_lease_is_taken_and_refused_to_others_until_it_expires(store: Store, clock: ManualClock) -> None:
    a, b = leases(store, clock, "a"), leases(store, clock, "b")
    assert await a.acquire("ingest", "s1") == 1
    assert await b.acquire("ingest", "s1") is None
    await clock.advance(SECONDS - 0.5)
    assert await b.acquire("ingest", "s1") is None
    await clock.advance(1.0)  # expired: a stopped renewing
    assert await b.acquire("ingest", "s1") == 2
    assert await a.renew("ingest", ["s1"]) == set()  # a finds out it lost it
    assert await a.acquire("ingest", "s1") is None


async def test_renewing_keeps_a_lease_past_its_first_expiry(store: Store, clock: ManualClock) -> None:
    a, b = leases(store, clock, "a"), leases(store, clock, "b")
    await a.acquire("races", "s1")
    await a.acquire("races", "s2")
    for _ in range(3):
        await clock.advance(SECONDS * 0.6)
        assert await a.renew("races", ["s1", "s2", "never-taken"]) == {"s1", "s2"}
    assert await b.acquire("races", "s1") is None


async def test_kinds_are_separate_leases(store: Store, clock: ManualClock) -> None:
    a, b = leases(store, clock, "a"), leases(store, clock, "b")
    await a.acquire("ingest", "same-id")
    assert await b.acquire("races", "same-id") == 1


async def test_a_released_lease_is_taken_at_once_with_a_new_epoch(store: Store, clock: ManualClock) -> None:
    a, b = leases(store, clock, "a"), leases(store, clock, "b")
    assert await a.acquire("ingest", "s1") == 1
    await b.release("ingest", "s1")  # not b's: nothing happens
    assert await b.acquire("ingest", "s1") is None
    await a.release("ingest", "s1")
    assert await b.acquire("ingest", "s1") == 2


async def test_a_forgotten_lease_starts_over(store: Store, clock: ManualClock) -> None:
    a = leases(store, clock, "a")
    await a.acquire("ingest", "s1")
    await a.forget("ingest", "s1")
    async with store.session() as db:
        assert (await db.scalars(select(LeaseRow))).all() == []
    assert await a.acquire("ingest", "s1") == 1


async def test_free_finds_keys_without_a_live_lease(store: Store, clock: ManualClock) -> None:
    a, b = leases(store, clock, "a"), leases(store, clock, "b")
    await a.acquire("ingest", "held")
    await a.acquire("ingest", "expires")
    await clock.advance(SECONDS / 2)
    await a.renew("ingest", ["held"])
    await clock.advance(SECONDS / 2 + 0.1)
    async with store.session() as db:
        rows = (await db.scalars(select(LeaseRow.key).where(b.free("ingest", LeaseRow.key)))).all()
    assert sorted(rows) == ["expires"]


# -- processors ------------------------------------------------------------------------------


class Work:
    """Sessions to process and what each node's processors did with them."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.finished: set[str] = set()
        self.runs: list[tuple[str, str, int]] = []  # (node, key, epoch)
        self.release: dict[str, asyncio.Event] = {key: asyncio.Event() for key in keys}

    def node(self, name: str, store: Store, clock: ManualClock) -> Processors:
        held = leases(store, clock, name)

        async def candidates(limit: int) -> list[str]:
            async with store.session() as db:
                free = (await db.scalars(select(LeaseRow.key).where(~held.free("ingest", LeaseRow.key)))).all()
            return [k for k in self.keys if k not in self.finished and k not in free][:limit]

        async def run(lease: Lease) -> None:
            self.runs.append((name, lease.key, lease.epoch))
            await self.release[lease.key].wait()
            self.finished.add(lease.key)

        return Processors("ingest", held, clock, candidates=candidates, run=run)


async def test_each_session_runs_once_and_a_dead_nodes_sessions_are_taken_over(
    store: Store, clock: ManualClock
) -> None:
    work = Work(["s1", "s2", "s3"])
    a, b = work.node("a", store, clock), work.node("b", store, clock)
    await a.open()
    assert await a.ensure("s1") and await a.ensure("s2")
    await b.open()
    assert not await b.ensure("s1")  # a holds it
    await until(lambda: len(work.runs) == 3, "every session running")  # b's first look, at its start
    assert sorted(key for _, key, _ in work.runs) == ["s1", "s2", "s3"]  # once each, on one node or the other
    on_a = {key for node, key, _ in work.runs if node == "a"}
    # a dies: its ticks stop and nothing is released
    assert a._loop is not None
    a._loop.cancel()
    for task in a.running.values():
        task.cancel()
    await advance_until(clock, lambda: len(work.runs) == 3 + len(on_a), b.tick, "b taking over a's sessions")
    assert {key for node, key, epoch in work.runs[3:]} == on_a
    assert all(node == "b" and epoch == 2 for node, _, epoch in work.runs[3:])
    for event in work.release.values():
        event.set()
    await until(lambda: work.finished == {"s1", "s2", "s3"}, "the sessions finishing")
    await until(lambda: not b.running, "b's processors returning")
    async with store.session() as db:
        assert (await db.scalars(select(LeaseRow).where(LeaseRow.holder == "b"))).all() == []  # forgotten
    await b.close()


async def test_a_processor_whose_lease_was_taken_is_stopped(store: Store, clock: ManualClock) -> None:
    work = Work(["s1"])
    a, b = work.node("a", store, clock), work.node("b", store, clock)
    await a.open()
    await a.ensure("s1")
    await until(lambda: len(work.runs) == 1, "a running s1")
    task = a.running["s1"]
    # a stalls (no renewal) past the lease; b takes it; a's next renewal finds out
    await clock.advance(SECONDS + 1)  # a's ticks are behind: the manual clock ran them all at once
    await leases(store, clock, "b").release("ingest", "s1")  # not b's: no effect
    async with store.session() as db:
        row = await db.get(LeaseRow, ("ingest", "s1"))
        assert row is not None
        row.expires_at = 0.0  # as if a had not renewed in time
    assert await b.ensure("s1")
    await clock.advance(a.tick)
    await until(task.done, "a's processor to stop")
    assert task.cancelled()
    assert "s1" not in a.running
    work.release["s1"].set()
    await a.close()
    await b.close()


async def test_closing_releases_leases_for_another_node_at_once(store: Store, clock: ManualClock) -> None:
    work = Work(["s1"])
    a, b = work.node("a", store, clock), work.node("b", store, clock)
    await a.open()
    await a.ensure("s1")
    await until(lambda: len(work.runs) == 1, "a running s1")
    await a.close()
    assert await b.ensure("s1")
    await until(lambda: len(work.runs) == 2, "b running s1")
    work.release["s1"].set()
    await b.close()
