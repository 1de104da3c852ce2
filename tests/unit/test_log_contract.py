"""A contract suite for the SessionLog protocol, run against every implementation.

The spool in a folder of the test's own, Redis and NATS JetStream in a namespace of the
test's own on the machine's servers. Only the public protocol is used. Tests marked as
needing a shared log open a second instance on the same URL, as a second node would.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

from sluicegate.clock import ManualClock
from sluicegate.engines.log import LogClosed, LogEntry, LogNotFound, LogState
from tests.logs import LOG_KINDS, drop_log, fresh_log_url, make_log
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from sluicegate.engines.log import SessionLog

#: One unit of real time for waits on a live follower (the follower reacts in milliseconds).
WAIT = 10.0


def records(first: int, count: int, width: int = 0) -> bytes:
    """``count`` JSON lines numbered from ``first`` (padded to about ``width`` bytes each)."""
    pad = "x" * max(width - 20, 0)
    return b"".join(b'{"n":%d,"p":"%s"}\n' % (n, pad.encode()) for n in range(first, first + count))


def numbers(entries: list[LogEntry]) -> list[int]:
    """The record numbers of ``entries`` (written by :func:`records`), in order."""
    import orjson

    return [orjson.loads(line)["n"] for entry in entries for line in entry.data.splitlines()]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=LOG_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def nodes(kind: str, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Callable[[], SessionLog]]:
    """Makes opened logs on one namespace: ``nodes()`` is a node's log (the spool can only
    have one open at a time: the folder is the node's)."""
    url = fresh_log_url(kind)
    opened: list[SessionLog] = []

    def make() -> SessionLog:
        log = make_log(url, tmp_path / "data", clock)
        opened.append(log)
        return log

    yield make
    for log in opened:
        with contextlib.suppress(Exception):
            await log.close()
    await drop_log(url)


@pytest.fixture
async def log(nodes: Callable[[], SessionLog]) -> SessionLog:
    made = nodes()
    await made.open()
    return made


async def second_node(log: SessionLog, nodes: Callable[[], SessionLog]) -> SessionLog:
    """Another node's log on the same namespace (skips for a log that is not shared)."""
    if not log.shared:
        pytest.skip("the spool is one process's")
    other = nodes()
    await other.open()
    return other


async def read_all(log: SessionLog, name: str, start: int = 0) -> list[LogEntry]:
    found: list[LogEntry] = []
    async for entries in log.read(name, start=start):
        found.extend(entries)
    return found


async def follow_until(
    log: SessionLog, name: str, reader: str, done: Callable[[list[LogEntry]], bool]
) -> list[LogEntry]:
    """Follow ``name`` until ``done`` says enough (or the log is sealed)."""
    found: list[LogEntry] = []
    async with asyncio.timeout(WAIT):
        follower = log.follow(name, reader=reader)
        try:
            async for entries in follower:
                found.extend(entries)
                if done(found):
                    break
        finally:
            await follower.aclose()
    return found


def data_entries(entries: list[LogEntry]) -> list[LogEntry]:
    return [e for e in entries if e.mark is None]


# -- creating and appending ---------------------------------------------------------------


async def test_a_log_never_created_refuses_appends_and_has_no_head(log: SessionLog) -> None:
    with pytest.raises(LogNotFound):
        await log.append("ingest/missing", records(0, 1), 1)
    with pytest.raises(LogNotFound):
        await log.head("ingest/missing")


async def test_appends_get_contiguous_indices_and_the_head_counts_them(log: SessionLog, clock: ManualClock) -> None:
    await log.create("ingest/a")
    empty = await log.head("ingest/a")
    assert (empty.total, empty.bytes, empty.state, empty.appended_at) == (0, 0, LogState.OPEN, None)
    first = await log.append("ingest/a", records(0, 3), 3)
    await clock.advance(2.5)
    second = await log.append("ingest/a", records(3, 2), 2, meta=b"10 20")
    assert (first.first, first.total) == (0, 3)
    assert (second.first, second.total) == (3, 5)
    head = await log.head("ingest/a")
    assert head.total == 5
    assert head.bytes == len(records(0, 5))
    assert head.state == LogState.OPEN
    assert head.appended_at == pytest.approx(clock.now().timestamp(), abs=0.002)


async def test_creating_a_log_again_keeps_what_it_holds(log: SessionLog) -> None:
    await log.create("races/a")
    await log.append("races/a", records(0, 2), 2)
    await log.create("races/a")
    assert (await log.head("races/a")).total == 2


async def test_concurrent_appends_are_each_stored_once_in_index_order(log: SessionLog) -> None:
    await log.create("races/many")
    appended = await asyncio.gather(*(log.append("races/many", records(n, 1), 1) for n in range(200)))
    ranges = sorted((a.first, a.total) for a in appended)
    assert [first for first, _ in ranges] == list(range(200))  # one index each, none shared
    assert all(total >= first + 1 for first, total in ranges)
    entries = await read_all(log, "races/many")
    by_index = {a.first: n for n, a in enumerate(appended)}
    assert numbers(data_entries(entries)) == [by_index[i] for i in range(200)]  # the log's order is the indices'
    assert [e.first for e in data_entries(entries)] == sorted(e.first for e in data_entries(entries))
    assert (await log.head("races/many")).total == 200


async def test_each_entry_keeps_its_meta_and_its_first_index(log: SessionLog) -> None:
    await log.create("ingest/meta")
    await asyncio.gather(*(log.append("ingest/meta", records(10 * n, 10), 10, meta=b"m%d" % n) for n in range(5)))
    entries = data_entries(await read_all(log, "ingest/meta"))
    for entry in entries:
        lines = numbers([entry])
        assert entry.count == len(lines)
        assert {n // 10 for n in lines} == {int(entry.meta[1:])}  # records stay with their own meta
    assert sorted(n for e in entries for n in numbers([e])) == list(range(50))
    assert sum(e.count for e in entries) == 50


async def test_an_append_of_several_megabytes_reads_back_whole(log: SessionLog) -> None:
    await log.create("ingest/big")
    before = await log.append("ingest/big", records(0, 1), 1)
    big = records(1, 20_000, width=150)  # about 3 MB: more than NATS takes in one message
    appended = await log.append("ingest/big", big, 20_000, meta=b"1 2")
    assert (before.total, appended.first, appended.total) == (1, 1, 20_001)
    entries = data_entries(await read_all(log, "ingest/big"))
    assert b"".join(e.data for e in entries) == records(0, 1) + big
    assert {e.meta for e in entries if e.first >= 1} == {b"1 2"}
    head = await log.head("ingest/big")
    assert (head.total, head.bytes) == (20_001, len(records(0, 1)) + len(big))


async def test_meta_a_header_cannot_carry_is_refused(log: SessionLog) -> None:
    await log.create("ingest/badmeta")
    with pytest.raises(ValueError, match="meta"):
        await log.append("ingest/badmeta", records(0, 1), 1, meta=b"a\nb")
    with pytest.raises(ValueError, match="meta"):
        await log.append("ingest/badmeta", records(0, 1), 1, meta=b"x" * 201)
    assert (await log.head("ingest/badmeta")).total == 0


async def test_two_nodes_appending_to_one_log_count_exactly(log: SessionLog, nodes: Callable[[], SessionLog]) -> None:
    other = await second_node(log, nodes)
    await log.create("races/shared")
    appended = await asyncio.gather(
        *(
            (log if n % 2 else other).append("races/shared", records(n, 1 + n % 3), 1 + n % 3, meta=b"%d" % (n % 2))
            for n in range(100)
        )
    )
    total = sum(1 + n % 3 for n in range(100))
    spans = sorted((a.first, a.first + 1 + n % 3) for n, a in enumerate(appended))
    assert spans[0][0] == 0
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # no overlap, no hole
    assert spans[-1][1] == total
    assert (await log.head("races/shared")).total == (await other.head("races/shared")).total == total
    assert sum(e.count for e in data_entries(await read_all(other, "races/shared"))) == total


# -- state: pause, reopen, seal -------------------------------------------------------------


async def test_a_paused_log_refuses_appends_until_it_is_opened_again(log: SessionLog) -> None:
    await log.create("ingest/p")
    await log.append("ingest/p", records(0, 1), 1)
    paused = await log.set_state("ingest/p", LogState.PAUSED)
    assert (paused.state, paused.total) == (LogState.PAUSED, 1)
    with pytest.raises(LogClosed) as refused:
        await log.append("ingest/p", records(1, 1), 1)
    assert refused.value.state == LogState.PAUSED
    assert (await log.set_state("ingest/p", LogState.PAUSED)).state == LogState.PAUSED  # again: nothing changes
    await log.set_state("ingest/p", LogState.OPEN)
    assert (await log.append("ingest/p", records(1, 1), 1)).first == 1


async def test_a_sealed_log_refuses_appends_for_good_and_its_total_is_final(log: SessionLog) -> None:
    await log.create("ingest/s")
    await log.append("ingest/s", records(0, 4), 4)
    sealed = await log.set_state("ingest/s", LogState.SEALED)
    assert (sealed.state, sealed.total, sealed.bytes) == (LogState.SEALED, 4, len(records(0, 4)))
    with pytest.raises(LogClosed) as refused:
        await log.append("ingest/s", records(4, 1), 1)
    assert refused.value.state == LogState.SEALED
    for state in (LogState.OPEN, LogState.PAUSED):
        with pytest.raises(LogClosed):
            await log.set_state("ingest/s", state)
    assert (await log.set_state("ingest/s", LogState.SEALED)).total == 4
    assert (await log.head("ingest/s")).state == LogState.SEALED


async def test_a_seal_on_one_node_refuses_the_next_append_on_another(
    log: SessionLog, nodes: Callable[[], SessionLog]
) -> None:
    other = await second_node(log, nodes)
    await log.create("races/s2")
    await other.append("races/s2", records(0, 1), 1)  # the other node has appended before: it knows the log
    await log.set_state("races/s2", LogState.PAUSED)
    with pytest.raises(LogClosed):
        await other.append("races/s2", records(1, 1), 1)
    await log.set_state("races/s2", LogState.OPEN)
    assert (await other.append("races/s2", records(1, 1), 1)).first == 1
    sealed = await log.set_state("races/s2", LogState.SEALED)
    with pytest.raises(LogClosed):
        await other.append("races/s2", records(2, 1), 1)
    assert sealed.total == (await other.head("races/s2")).total == 2


async def test_appends_racing_a_seal_are_either_refused_or_inside_the_final_total(log: SessionLog) -> None:
    await log.create("races/race")

    async def one(n: int) -> int | None:
        try:
            return (await log.append("races/race", records(n, 1), 1)).total
        except LogClosed:
            return None

    tasks = [asyncio.ensure_future(one(n)) for n in range(100)]
    await asyncio.sleep(0)
    sealed = await log.set_state("races/race", LogState.SEALED)
    results = await asyncio.gather(*tasks)
    accepted = [r for r in results if r is not None]
    assert len(accepted) == sealed.total  # every acknowledged append is inside the final total
    assert all(total <= sealed.total for total in accepted)
    assert sum(e.count for e in data_entries(await read_all(log, "races/race"))) == sealed.total


# -- reading and following -----------------------------------------------------------------


async def test_read_from_an_index_gives_the_entries_holding_it_and_after(log: SessionLog) -> None:
    await log.create("races/r")
    for n in range(0, 9, 3):
        await log.append("races/r", records(n, 3), 3, meta=b"%d" % n)
    entries = data_entries(await read_all(log, "races/r", start=4))
    assert entries[0].first <= 4 < entries[0].end
    assert numbers(entries)[-1] == 8
    assert all(e.end > 4 for e in entries)
    assert await read_all(log, "races/r", start=9) == []


async def test_follow_gives_what_is_there_then_what_arrives_and_ends_at_the_seal(log: SessionLog) -> None:
    await log.create("ingest/f")
    await log.append("ingest/f", records(0, 2), 2)
    found: list[LogEntry] = []

    async def follow() -> None:
        async for entries in log.follow("ingest/f", reader="r1"):
            found.extend(entries)

    follower = asyncio.ensure_future(follow())
    await until(lambda: sum(e.count for e in found) == 2, "the first entries")
    await log.append("ingest/f", records(2, 3), 3)
    await until(lambda: sum(e.count for e in found) == 5, "the new entries")
    await log.set_state("ingest/f", LogState.PAUSED)
    await log.set_state("ingest/f", LogState.OPEN)
    await log.append("ingest/f", records(5, 1), 1)
    await log.set_state("ingest/f", LogState.SEALED)
    async with asyncio.timeout(WAIT):
        await follower  # the seal ends it
    assert numbers(data_entries(found)) == list(range(6))
    assert [e.mark for e in found if e.mark is not None] == [LogState.PAUSED, LogState.OPEN, LogState.SEALED]
    assert found[-1].mark == LogState.SEALED
    assert found[-1].first == 6  # a mark's index is the log's total at the change
    marks = [i for i, e in enumerate(found) if e.mark is not None]
    assert numbers(found[: marks[0]]) == list(range(5))  # marks come in order with the records


async def test_follow_sees_appends_made_on_another_node(log: SessionLog, nodes: Callable[[], SessionLog]) -> None:
    other = await second_node(log, nodes)
    await log.create("races/fx")
    found: list[LogEntry] = []

    async def follow() -> None:
        async for entries in log.follow("races/fx", reader="r1"):
            found.extend(entries)

    follower = asyncio.ensure_future(follow())
    for n in range(10):
        await other.append("races/fx", records(n, 1), 1)
    await other.set_state("races/fx", LogState.SEALED)
    async with asyncio.timeout(WAIT):
        await follower
    assert numbers(data_entries(found)) == list(range(10))


async def test_a_new_reader_starts_from_the_first_retained_entry(
    log: SessionLog, nodes: Callable[[], SessionLog]
) -> None:
    await log.create("ingest/takeover")
    for n in range(0, 6, 2):
        await log.append("ingest/takeover", records(n, 2), 2)
    first = await follow_until(log, "ingest/takeover", "e1", lambda found: sum(e.count for e in found) >= 6)
    assert numbers(first) == list(range(6))
    await log.append("ingest/takeover", records(6, 1), 1)
    taker = await second_node(log, nodes) if log.shared else log
    again = await follow_until(taker, "ingest/takeover", "e2", lambda found: sum(e.count for e in found) >= 7)
    assert numbers(data_entries(again)) == list(range(7))  # what the first reader had read, too


async def test_trimmed_entries_are_not_read_again_and_the_head_keeps_counting(log: SessionLog) -> None:
    await log.create("races/t")
    for n in range(0, 12, 3):
        await log.append("races/t", records(n, 3), 3)
    entries = data_entries(await read_all(log, "races/t"))
    second = next(e for e in entries if e.first <= 4 < e.end)
    await log.trim("races/t", second.position)
    rest = data_entries(await read_all(log, "races/t"))
    assert rest and rest[0].first == second.end
    assert numbers(rest) == list(range(second.end, 12))
    head = await log.head("races/t")
    assert (head.total, head.bytes) == (12, len(records(0, 12)))
    assert (await log.append("races/t", records(12, 1), 1)).first == 12
    followed = await follow_until(
        log, "races/t", "after-trim", lambda found: sum(e.count for e in found) >= 12 - second.end + 1
    )
    assert numbers(data_entries(followed)) == list(range(second.end, 13))


async def test_trimming_everything_keeps_the_counters_and_the_state(log: SessionLog) -> None:
    await log.create("races/all")
    await log.append("races/all", records(0, 5), 5)
    await log.set_state("races/all", LogState.PAUSED)
    entries = await read_all(log, "races/all")
    await log.trim("races/all", entries[-1].position)
    assert data_entries(await read_all(log, "races/all")) == []
    head = await log.head("races/all")
    assert (head.total, head.state) == (5, LogState.PAUSED)
    with pytest.raises(LogClosed):
        await log.append("races/all", records(5, 1), 1)
    await log.set_state("races/all", LogState.OPEN)
    assert (await log.append("races/all", records(5, 1), 1)).first == 5


# -- deleting and restarting -----------------------------------------------------------------


async def test_a_deleted_log_is_gone_and_can_be_made_again(log: SessionLog) -> None:
    await log.create("ingest/d")
    await log.append("ingest/d", records(0, 3), 3)
    await log.delete("ingest/d")
    with pytest.raises(LogNotFound):
        await log.head("ingest/d")
    with pytest.raises(LogNotFound):
        await log.append("ingest/d", records(3, 1), 1)
    await log.delete("ingest/d")  # deleting a missing log does nothing
    await log.create("ingest/d")
    assert (await log.head("ingest/d")).total == 0


async def test_logs_are_independent(log: SessionLog) -> None:
    await log.create("races/x")
    await log.create("races/y")
    await log.append("races/x", records(0, 2), 2)
    await log.set_state("races/y", LogState.SEALED)
    assert (await log.append("races/x", records(2, 1), 1)).first == 2
    assert (await log.head("races/y")).total == 0
    assert numbers(data_entries(await read_all(log, "races/x"))) == [0, 1, 2]


async def test_a_log_outlives_the_process_that_wrote_it(log: SessionLog, nodes: Callable[[], SessionLog]) -> None:
    await log.create("ingest/r")
    await log.append("ingest/r", records(0, 3), 3, meta=b"first")
    await log.set_state("ingest/r", LogState.PAUSED)
    await log.close()
    again = nodes()  # the same namespace (and, for the spool, the same folder) after a restart
    await again.open()
    head = await again.head("ingest/r")
    assert (head.total, head.state) == (3, LogState.PAUSED)
    entries = await read_all(again, "ingest/r")
    assert numbers(data_entries(entries)) == [0, 1, 2]
    assert data_entries(entries)[0].meta == b"first"
    await again.set_state("ingest/r", LogState.OPEN)
    assert (await again.append("ingest/r", records(3, 1), 1)).first == 3


async def test_check_passes_on_an_open_log(log: SessionLog) -> None:
    await log.check()
    assert log.identity
