"""RaceService in process: points into the session's log, idle archives, retries, close, takeover.

On real parts: the spool log in the test's folder (or Redis, for two nodes), SQLite and
PostgreSQL, a file object store, the memory broker. Time is a ManualClock: nothing
sleeps for real seconds. Compression and file work run in threads, so after moving the
clock the tests wait (briefly, bounded) for the outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import zstandard
from obstore.store import LocalStore
from sqlalchemy import update

from sluicegate.clock import ManualClock
from sluicegate.engines.broker import broker_from_url
from sluicegate.engines.log import LogError, LogNotFound
from sluicegate.engines.objects import ObjectStore, ObjectStoreUnavailable, object_store_from_url
from sluicegate.engines.store import Store
from sluicegate.engines.store.leases import Leases
from sluicegate.errors import APIError, ErrCode
from sluicegate.observability.metrics import Metrics
from sluicegate.security.identity import Identity
from sluicegate.services.races.models import RaceSessionRow, SessionIn, SessionState
from sluicegate.services.races.processor import log_name
from sluicegate.services.races.service import RaceConfig, RaceService, point_line
from tests.logs import drop_log, fresh_log_url, make_log
from tests.waiting import advance_until, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sluicegate.engines.broker import Broker
    from sluicegate.engines.log import SessionLog

IDENT = Identity(subject="s", tenant=1, role="admin", scopes=frozenset(), method="api_key")
OTHER = Identity(subject="o", tenant=2, role="admin", scopes=frozenset(), method="api_key")
LEASE = 10.0


def points(n: int, start: int = 0) -> list[bytes]:
    return [point_line(f"2026-01-01T00:00:{i % 60:02d}Z", "lap", "ios", {"i": i}) for i in range(start, start + n)]


def unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


class FlakyObjects(ObjectStore):
    """A local store whose first ``failures`` puts fail as if the endpoint were down."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(LocalStore(root), description=f"flaky file://{root}")
        self.failures = failures
        self.puts: list[str] = []

    async def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        if len(self.puts) <= self.failures:
            raise ObjectStoreUnavailable(f"put {key} failed: endpoint down")
        await super().put(key, data)


@dataclass
class Harness:
    tmp: Path
    store: Store
    objects: ObjectStore
    broker: Broker
    log_url: str
    clock: ManualClock = field(default_factory=ManualClock)
    opened: list[Any] = field(default_factory=list)

    def new_log(self) -> SessionLog:
        return make_log(self.log_url, self.tmp / "data", self.clock, fsync=False)

    async def service(
        self,
        objects: ObjectStore | None = None,
        *,
        holder: str = "node-a",
        session_log: SessionLog | None = None,
        **options: Any,
    ) -> RaceService:
        config = RaceConfig(idle_seconds=30, retry_initial_seconds=1, retry_max_seconds=4, **options)
        used = session_log or self.new_log()
        await used.open()
        leases = Leases(self.store, self.clock, holder=holder, seconds=LEASE)
        service = RaceService(
            self.store, objects or self.objects, used, self.broker, leases, self.clock, config, Metrics(namespace="t")
        )
        await service.open()
        self.opened.extend([service, used])
        return service

    def flaky(self, failures: int) -> FlakyObjects:
        return FlakyObjects(self.tmp / "objects", failures)

    async def archive(self, key: str) -> bytes:
        return unzstd(await self.objects.get(key))

    async def keys(self) -> list[str]:
        return sorted(info.key for info in await self.objects.list(""))

    async def row(self, session_id: str) -> RaceSessionRow:
        async with self.store.session() as db:
            row = await db.get(RaceSessionRow, session_id)
        assert row is not None
        return row


async def harness(tmp_path: Path, database_url: str, log_kind: str) -> AsyncIterator[Harness]:
    store = Store(database_url)
    await store.open()
    clock = ManualClock()
    broker = broker_from_url("memory://", history_size=100, history_seconds=3600, pending_limit=100, clock=clock)
    await broker.open()
    url = fresh_log_url(log_kind)
    made = Harness(tmp_path, store, object_store_from_url(f"file://{tmp_path / 'objects'}"), broker, url, clock)
    try:
        yield made
    finally:
        for thing in reversed(made.opened):
            await thing.close()
        await broker.close()
        await store.close()
        await drop_log(url)


@pytest.fixture
async def h(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    async for made in harness(tmp_path, database_url, "spool"):
        yield made


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Harness]:
    """Two nodes' worth: a log on Redis (a shared log) and one SQLite database."""
    async for made in harness(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", "redis"):
        yield made


async def started(h: Harness, stream: str = "runner", **options: Any) -> tuple[RaceService, str]:
    service = await h.service(**options)
    out = await service.create(IDENT, SessionIn(stream=stream, metadata={"car": 7}))
    return service, out.id


async def ingest_all(service: RaceService, stream: str, lines: list[bytes]) -> list[int]:
    return [await service.ingest(stream, data) for data in lines]


async def archived(h: Harness, session_id: str, count: int) -> None:
    """Wait until ``count`` archives are recorded."""
    for _ in range(500):
        if len((await h.row(session_id)).archived_keys) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} archive(s) never recorded")


async def idle(h: Harness, seconds: float = 30.0) -> None:
    await h.clock.advance(seconds)


# -- ingest and idle archives -----------------------------------------------------------------


async def test_points_are_archived_once_idle_seconds_have_passed(h: Harness) -> None:
    service, sid = await started(h)
    lines = points(5)
    assert await ingest_all(service, "runner", lines) == [1, 2, 3, 4, 5]
    await h.clock.advance(29)
    assert (await service.describe(IDENT, sid)).archived_keys == []
    await h.clock.advance(1.5)
    await archived(h, sid, 1)
    key = f"races/runner/{sid}/000001.jsonl.zst"
    assert await h.keys() == [key]
    assert await h.archive(key) == b"".join(lines)
    out = await service.describe(IDENT, sid)
    assert (out.data_points, out.spooled_points, out.archived_keys) == (5, 0, [key])
    assert out.bytes == len(b"".join(lines))


async def test_each_point_restarts_the_idle_timer(h: Harness) -> None:
    service, sid = await started(h)
    await service.ingest("runner", points(1)[0])
    for i in range(1, 4):
        await h.clock.advance(20)
        await service.ingest("runner", points(1, i)[0])
        count = i + 1
        await until(lambda: service.buffered.get(sid) == count, "the point reaching the processor")  # noqa: B023
    assert (await h.row(sid)).archived_keys == []
    await idle(h, 31)
    await archived(h, sid, 1)
    assert (await service.describe(IDENT, sid)).data_points == 4


async def test_a_second_idle_period_gives_the_next_archive(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(3))
    await idle(h, 31)
    await archived(h, sid, 1)
    await ingest_all(service, "runner", points(2, 3))
    await idle(h, 31)
    await archived(h, sid, 2)
    keys = (await service.describe(IDENT, sid)).archived_keys
    assert keys == [f"races/runner/{sid}/000001.jsonl.zst", f"races/runner/{sid}/000002.jsonl.zst"]
    assert await h.archive(keys[1]) == b"".join(points(2, 3))


async def test_points_beyond_the_buffer_limit_are_archived_without_waiting(h: Harness) -> None:
    size = len(b"".join(points(10)))
    service, sid = await started(h, max_buffer_bytes=size)
    await ingest_all(service, "runner", points(10))
    await archived(h, sid, 1)  # no clock moved
    assert await h.archive((await h.row(sid)).archived_keys[0]) == b"".join(points(10))


async def test_a_point_for_a_stream_without_a_session_is_refused(h: Harness) -> None:
    service, _ = await started(h)
    with pytest.raises(APIError) as refused:
        await service.ingest("nobody", points(1)[0])
    assert (refused.value.status, refused.value.message) == (400, "No session present for the stream ID")


async def test_a_log_failure_is_the_seeds_internal_error(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = await started(h)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise LogError("disk full")

    monkeypatch.setattr(service.log, "append", broken)
    with pytest.raises(APIError) as refused:
        await service.ingest("runner", points(1)[0])
    assert (refused.value.status, refused.value.message) == (500, "Failed to set up stream handler")


async def test_a_stream_has_one_open_session(h: Harness) -> None:
    service, _ = await started(h)
    with pytest.raises(APIError) as refused:
        await service.create(IDENT, SessionIn(stream="runner"))
    assert refused.value.code == ErrCode.ALREADY_EXISTS


async def test_a_new_session_is_open_and_empty(h: Harness) -> None:
    service, sid = await started(h)
    out = await service.describe(IDENT, sid)
    assert (out.state, out.data_points, out.spooled_points, out.archived_keys, out.metadata) == (
        SessionState.OPEN,
        0,
        0,
        [],
        {"car": 7},
    )


# -- closing ---------------------------------------------------------------------------------


async def test_closing_archives_what_the_log_holds_and_refuses_later_points(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(4))
    out, done = await service.close_session(IDENT, sid)
    assert done
    assert out.state == SessionState.CLOSED
    assert out.archived_keys == [f"races/runner/{sid}/000001.jsonl.zst"]
    assert out.data_points == 4
    assert await h.archive(out.archived_keys[0]) == b"".join(points(4))
    with pytest.raises(APIError, match="No session present"):
        await service.ingest("runner", points(1)[0])
    again, done_again = await service.close_session(IDENT, sid)
    assert done_again and again.archived_keys == out.archived_keys
    reopened = await service.create(IDENT, SessionIn(stream="runner"))  # the stream can open a new session
    assert reopened.id != sid


async def test_closing_an_empty_session_archives_nothing(h: Harness) -> None:
    service, sid = await started(h)
    out, done = await service.close_session(IDENT, sid)
    assert done and out.archived_keys == [] and out.state == SessionState.CLOSED
    assert await h.keys() == []


async def test_closing_after_an_idle_archive_adds_only_the_new_points(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(3))
    await idle(h, 31)
    await archived(h, sid, 1)
    await ingest_all(service, "runner", points(2, 3))
    out, _ = await service.close_session(IDENT, sid)
    assert len(out.archived_keys) == 2
    assert await h.archive(out.archived_keys[1]) == b"".join(points(2, 3))


async def test_points_racing_a_close_are_either_refused_or_archived(h: Harness) -> None:
    service, sid = await started(h)

    async def post(i: int) -> int | None:
        try:
            return await service.ingest("runner", points(1, i)[0])
        except APIError:
            return None

    posts = [asyncio.ensure_future(post(i)) for i in range(100)]
    await asyncio.sleep(0)
    out, done = await service.close_session(IDENT, sid)
    acked = [a for a in await asyncio.gather(*posts) if a is not None]
    assert done
    archived_lines = b"".join([await h.archive(key) for key in out.archived_keys]).splitlines()
    assert len(archived_lines) == len(acked) == out.data_points  # every acknowledged point, once


# -- read back, tenants, metrics ------------------------------------------------------------


async def test_read_gives_archived_then_logged_points_in_order(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(3))
    await idle(h, 31)
    await archived(h, sid, 1)
    await ingest_all(service, "runner", points(2, 3))
    data = b"".join([chunk async for chunk in service.read(IDENT, sid)])
    assert data == b"".join(points(5))


async def test_another_tenant_gets_404_everywhere(h: Harness) -> None:
    service, sid = await started(h)
    for call in (
        service.describe(OTHER, sid),
        service.close_session(OTHER, sid),
        service.read(OTHER, sid).__anext__(),
    ):
        with pytest.raises(APIError) as refused:
            await call
        assert refused.value.status == 404
    assert (await service.describe(IDENT, sid)).state == SessionState.OPEN


async def test_metrics_count_points_and_archives(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(3))
    await until(lambda: service.buffered.get(sid) == 3, "the points reaching the processor")
    assert service.metrics.race_points._value.get() == 3
    assert service.metrics.race_spooled_points._value.get() == 3
    await idle(h, 31)
    await archived(h, sid, 1)
    await until(lambda: service.metrics.race_archives._value.get() == 1, "the archive counted")
    assert service.metrics.race_spooled_points._value.get() == 0


# -- failures and retries -------------------------------------------------------------------


async def test_failed_archives_are_retried_with_capped_exponential_backoff(h: Harness) -> None:
    objects = h.flaky(failures=4)
    service = await h.service(objects)
    sid = (await service.create(IDENT, SessionIn(stream="runner"))).id
    await ingest_all(service, "runner", points(2))
    await idle(h, 31)
    await until(lambda: len(objects.puts) == 1, "the first attempt")
    for attempt, wait in enumerate([1, 2, 4, 4], start=2):  # doubling, capped at retry_max_seconds
        await until(lambda: any(abs(x - wait) < 1e-6 for x in h.clock.waits), f"the wait of {wait}s")  # noqa: B023
        row = await h.row(sid)  # recorded before the wait
        assert row.failed_attempts == attempt - 1
        assert row.last_error is not None and "unavailable" in row.last_error.lower()
        assert "endpoint down" not in row.last_error  # not the driver's own words
        await h.clock.advance(wait - 0.01)
        assert len(objects.puts) == attempt - 1
        await h.clock.advance(0.02)
        await until(lambda: len(objects.puts) == attempt, f"attempt {attempt}")  # noqa: B023
    await archived(h, sid, 1)
    row = await h.row(sid)
    assert (row.failed_attempts, row.last_error) == (0, None)
    assert await h.archive(row.archived_keys[0]) == b"".join(points(2))


# -- restart and takeover ------------------------------------------------------------------------


async def test_points_in_the_log_are_archived_once_after_a_restart(h: Harness) -> None:
    first, sid = await started(h, holder="spool")
    await ingest_all(first, "runner", points(4))
    await first.close()  # a stop; the log keeps the points
    await first.log.close()
    second = await h.service(holder="spool")
    await ingest_all(second, "runner", points(2, 4))  # the stream's session is still open
    out, done = await second.close_session(IDENT, sid)
    assert done
    data = b"".join([await h.archive(key) for key in out.archived_keys])
    assert data == b"".join(points(6))


async def test_a_cut_recorded_before_a_crash_is_archived_again_with_the_same_points(h: Harness) -> None:
    service, sid = await started(h, holder="spool")
    await ingest_all(service, "runner", points(3))
    await service.close()
    async with h.store.session() as db:  # a crash after the cut was recorded, before its archive
        await db.execute(update(RaceSessionRow).where(RaceSessionRow.id == sid).values(cut_seq=1, cut_end=2))
    await service.log.close()
    again = await h.service(holder="spool")
    await archived(h, sid, 1)
    row = await h.row(sid)
    assert await h.archive(row.archived_keys[0]) == b"".join(points(2))  # what the cut said, not more
    out, _ = await again.close_session(IDENT, sid)
    assert b"".join([await h.archive(k) for k in out.archived_keys]) == b"".join(points(3))


async def test_a_session_left_closing_is_closed_after_a_restart(h: Harness) -> None:
    service, sid = await started(h, holder="spool")
    await ingest_all(service, "runner", points(2))
    await service.close()
    async with h.store.session() as db:  # the close stopped between its two steps
        await db.execute(
            update(RaceSessionRow).where(RaceSessionRow.id == sid).values(state=SessionState.CLOSING.value)
        )
    await service.log.close()
    await h.service(holder="spool")
    for _ in range(500):
        if (await h.row(sid)).state == SessionState.CLOSED.value:
            break
        await asyncio.sleep(0.01)
    row = await h.row(sid)
    assert row.state == SessionState.CLOSED.value
    assert b"".join([await h.archive(k) for k in row.archived_keys]) == b"".join(points(2))


async def test_a_dead_nodes_session_is_taken_over_and_archived_once(shared: Harness) -> None:
    a = await shared.service(holder="node-a")
    b = await shared.service(holder="node-b")
    sid = (await a.create(IDENT, SessionIn(stream="car"))).id
    assert [await (a if i % 2 else b).ingest("car", p) for i, p in enumerate(points(6))] == [1, 2, 3, 4, 5, 6]
    # a dies: its processors stop without a word to the database
    assert a.processors._loop is not None
    a.processors._loop.cancel()
    for task in a.processors.running.values():
        task.cancel()
    await b.ingest("car", points(1, 6)[0])
    await advance_until(shared.clock, lambda: sid in b.processors.running, LEASE / 4, "b taking the session over")
    out, done = await b.close_session(IDENT, sid)
    assert done
    assert out.data_points == 7
    assert b"".join([await shared.archive(k) for k in out.archived_keys]) == b"".join(points(7))
    assert (await b.create(IDENT, SessionIn(stream="car"))).id != sid


async def test_any_node_counts_a_streams_points_exactly(shared: Harness) -> None:
    a = await shared.service(holder="node-a")
    b = await shared.service(holder="node-b")
    sid = (await b.create(IDENT, SessionIn(stream="car"))).id
    counts = await asyncio.gather(*((a if i % 2 else b).ingest("car", p) for i, p in enumerate(points(40))))
    assert sorted(counts) == list(range(1, 41))
    assert (await a.describe(IDENT, sid)).data_points == (await b.describe(IDENT, sid)).data_points == 40
    _, done = await a.close_session(IDENT, sid)
    assert done
    with pytest.raises(APIError, match="No session present"):
        await b.ingest("car", points(1)[0])
    with pytest.raises(LogNotFound):  # archived: the log is gone
        await b.log.head(log_name(sid))


async def test_a_session_in_another_log_is_refused_and_an_old_one_closes_at_once(h: Harness) -> None:
    service, elsewhere = await started(h, stream="far")
    legacy = (await service.create(IDENT, SessionIn(stream="old"))).id
    async with h.store.session() as db:
        await db.execute(update(RaceSessionRow).where(RaceSessionRow.id == elsewhere).values(log="spool:another"))
        await db.execute(update(RaceSessionRow).where(RaceSessionRow.id == legacy).values(log=None))
    service._streams.clear()  # a node that has not seen these streams yet
    for call in (service.ingest("far", points(1)[0]), service.close_session(IDENT, elsewhere)):
        with pytest.raises(APIError) as refused:
            await call
        assert refused.value.status == 503 and "SLUICEGATE_LOG_URL" in refused.value.message
    out, done = await service.close_session(IDENT, legacy)
    assert done and out.state == SessionState.CLOSED
    assert (await h.row(elsewhere)).state == SessionState.OPEN.value
