"""RaceService in process: ingest, idle flush to zstd archives, retries, recovery.

Time is a ManualClock: nothing sleeps for real seconds. Compression and file work run in
threads, so after moving the clock the tests wait (briefly, bounded) for a condition.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import zstandard
from obstore.store import LocalStore

from sluicegate.clock import ManualClock
from sluicegate.engines.objects import ObjectStore, ObjectStoreUnavailable, object_store_from_url
from sluicegate.engines.spool import ACTIVE
from sluicegate.engines.store import Store
from sluicegate.errors import APIError, ErrCode
from sluicegate.observability.metrics import Metrics
from sluicegate.security.identity import Identity
from sluicegate.services.placement import Placement
from sluicegate.services.races.models import SessionIn, SessionState
from sluicegate.services.races.service import RaceConfig, RaceService, point_line
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

IDENT = Identity(subject="s", tenant=1, role="admin", scopes=frozenset(), method="api_key")
OTHER = Identity(subject="o", tenant=2, role="admin", scopes=frozenset(), method="api_key")


# -- helpers -----------------------------------------------------------------------------


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
    clock: ManualClock = field(default_factory=ManualClock)
    services: list[RaceService] = field(default_factory=list)

    @property
    def objects_root(self) -> Path:
        return self.tmp / "objects"

    @property
    def spool_dir(self) -> Path:
        return self.tmp / "spool"

    def service(self, objects: ObjectStore | None = None, **options: Any) -> RaceService:
        config = RaceConfig(
            spool_dir=self.spool_dir, idle_seconds=30, retry_initial_seconds=1, retry_max_seconds=4, **options
        )
        service = RaceService(self.store, objects or self.objects, self.clock, config, Metrics(namespace="t"))
        self.services.append(service)
        return service

    def flaky(self, failures: int) -> FlakyObjects:
        return FlakyObjects(self.objects_root, failures)

    async def archive(self, key: str) -> bytes:
        return unzstd(await self.objects.get(key))

    async def keys(self) -> list[str]:
        return [info.key for info in await self.objects.list("")]


@pytest.fixture
async def h(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    store = Store(database_url)
    await store.open()
    harness = Harness(tmp_path, store, object_store_from_url(f"file://{tmp_path / 'objects'}"))
    try:
        yield harness
    finally:
        for service in harness.services:
            await service.close()
        await store.close()


async def started(h: Harness, stream: str = "runner", **options: Any) -> tuple[RaceService, str]:
    service = h.service(**options)
    await service.open()
    out = await service.create(IDENT, SessionIn(stream=stream, metadata={"car": 7}))
    return service, out.id


async def ingest_all(service: RaceService, stream: str, lines: list[bytes]) -> list[int]:
    return [await service.ingest(stream, data) for data in lines]


async def archived(service: RaceService, session_id: str, count: int = 1) -> None:
    """Wait until ``count`` batches are archived: recorded, and gone from the spool."""

    def done() -> bool:
        session = service.sessions.get(session_id)
        if session is None:  # closed and settled
            return True
        return len(session.archived_keys) >= count and all(seq > count for seq in session.spool.pending)

    await until(done, f"{count} archive(s) recorded")


# -- ingest and idle flush ---------------------------------------------------------------


async def test_points_are_archived_once_idle_seconds_have_passed(h: Harness) -> None:
    service, sid = await started(h)
    lines = points(3)
    assert await ingest_all(service, "runner", lines) == [1, 2, 3]
    await until(lambda: h.clock.sleepers == 1, "the idle watcher sleeping")

    await h.clock.advance(29)
    await asyncio.sleep(0.05)
    assert await h.keys() == []
    out = await service.describe(IDENT, sid)
    assert (out.data_points, out.spooled_points, out.archived_keys) == (3, 3, [])

    await h.clock.advance(1)
    await archived(service, sid)
    key = f"races/runner/{sid}/000001.jsonl.zst"
    assert await h.keys() == [key]
    assert await h.archive(key) == b"".join(lines)
    out = await service.describe(IDENT, sid)
    assert out.state == SessionState.OPEN
    assert (out.data_points, out.spooled_points, out.archived_keys) == (3, 0, [key])
    assert out.bytes == len(b"".join(lines))
    assert out.metadata == {"car": 7}
    assert (out.failed_attempts, out.last_error) == (0, None)
    assert not (h.spool_dir / sid / "000001.pending.jsonl").exists()


async def test_each_point_restarts_the_idle_timer(h: Harness) -> None:
    service, sid = await started(h)
    await service.ingest("runner", points(1)[0])
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(20)
    await service.ingest("runner", points(1, 1)[0])
    await h.clock.advance(20)  # 40 s since the first point, 20 since the last
    await asyncio.sleep(0.05)
    assert await h.keys() == []
    await h.clock.advance(10)
    await archived(service, sid)
    [key] = await h.keys()
    assert await h.archive(key) == b"".join(points(2))


async def test_a_second_idle_period_gives_the_next_sequence(h: Harness) -> None:
    service, sid = await started(h)
    first, second = points(3), points(2, 3)
    await ingest_all(service, "runner", first)
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(service, sid)

    assert await ingest_all(service, "runner", second) == [4, 5]  # totals go on counting
    await until(lambda: h.clock.sleepers == 1, "a new idle watcher")
    await h.clock.advance(30)
    await archived(service, sid, 2)

    keys = [f"races/runner/{sid}/000001.jsonl.zst", f"races/runner/{sid}/000002.jsonl.zst"]
    assert await h.keys() == keys
    assert await h.archive(keys[0]) == b"".join(first)
    assert await h.archive(keys[1]) == b"".join(second)
    out = await service.describe(IDENT, sid)
    assert (out.data_points, out.spooled_points, out.archived_keys) == (5, 0, keys)
    assert out.bytes == len(b"".join(first + second))


async def test_ingest_for_an_unknown_stream_is_refused(h: Harness) -> None:
    service, _ = await started(h)
    with pytest.raises(APIError) as caught:
        await service.ingest("nobody", points(1)[0])
    assert caught.value.message == "No session present for the stream ID"
    assert caught.value.code == ErrCode.INVALID_ARGUMENT
    assert caught.value.status == 400


async def test_a_spool_failure_is_an_internal_error_for_the_client(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    service, sid = await started(h)
    spool = service.by_stream["runner"].spool

    def full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "_write", full)
    with pytest.raises(APIError) as caught:
        await service.ingest("runner", points(1)[0])
    assert caught.value.code == ErrCode.INTERNAL
    assert caught.value.message == "Failed to set up stream handler"
    assert (await service.describe(IDENT, sid)).data_points == 0


async def test_create_twice_for_one_stream_already_exists(h: Harness) -> None:
    service, _ = await started(h)
    with pytest.raises(APIError) as caught:
        await service.create(IDENT, SessionIn(stream="runner"))
    assert caught.value.code == ErrCode.ALREADY_EXISTS
    assert caught.value.status == 409
    other = await service.create(IDENT, SessionIn(stream="someone-else"))  # other streams are fine
    assert other.state == SessionState.OPEN


async def test_create_describes_a_fresh_session(h: Harness) -> None:
    service = h.service()
    out = await service.create(IDENT, SessionIn(stream="runner"))
    assert out.stream == "runner"
    assert out.state == SessionState.OPEN
    assert (out.data_points, out.bytes, out.spooled_points, out.archived_keys) == (0, 0, 0, [])
    assert out.created_at == h.clock.now()
    assert out.closed_at is None


# -- close -------------------------------------------------------------------------------


async def test_close_session_archives_and_returns_closed(h: Harness) -> None:
    service, sid = await started(h)
    lines = points(4)
    await ingest_all(service, "runner", lines)
    await h.clock.advance(5)
    out, closed = await service.close_session(IDENT, sid)
    assert closed is True
    assert out.state == SessionState.CLOSED
    assert out.closed_at == h.clock.now()
    key = f"races/runner/{sid}/000001.jsonl.zst"
    assert (out.data_points, out.spooled_points, out.archived_keys) == (4, 0, [key])
    assert await h.archive(key) == b"".join(lines)
    assert not (h.spool_dir / sid).exists()

    # closed: no more points, the row answers, a new session may start
    with pytest.raises(APIError, match="No session present for the stream ID"):
        await service.ingest("runner", lines[0])
    again = await service.describe(IDENT, sid)
    assert (again.state, again.data_points, again.archived_keys) == (SessionState.CLOSED, 4, [key])
    assert again.bytes == len(b"".join(lines))
    again_out, again_closed = await service.close_session(IDENT, sid)
    assert again_closed is True
    assert again_out.state == SessionState.CLOSED
    fresh = await service.create(IDENT, SessionIn(stream="runner"))
    assert fresh.id != sid


async def test_closing_an_empty_session_archives_nothing(h: Harness) -> None:
    service, sid = await started(h)
    out, closed = await service.close_session(IDENT, sid)
    assert closed is True
    assert (out.state, out.data_points, out.archived_keys) == (SessionState.CLOSED, 0, [])
    assert await h.keys() == []


async def test_close_after_an_idle_archive_adds_only_the_new_points(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(2))
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(service, sid)
    await ingest_all(service, "runner", points(1, 2))
    out, closed = await service.close_session(IDENT, sid)
    assert closed
    assert out.data_points == 3
    assert [k.rsplit("/", 1)[1] for k in out.archived_keys] == ["000001.jsonl.zst", "000002.jsonl.zst"]
    assert await h.archive(out.archived_keys[1]) == points(1, 2)[0]


async def test_another_tenant_gets_404_everywhere(h: Harness) -> None:
    service, sid = await started(h)
    await service.ingest("runner", points(1)[0])
    with pytest.raises(APIError) as caught:
        await service.describe(OTHER, sid)
    assert caught.value.code == ErrCode.NOT_FOUND
    assert caught.value.status == 404
    with pytest.raises(APIError, match="Race session not found"):
        await service.close_session(OTHER, sid)
    with pytest.raises(APIError, match="Race session not found"):
        async for _ in service.read(OTHER, sid):
            pass
    assert (await service.describe(IDENT, sid)).state == SessionState.OPEN  # untouched

    await service.close_session(IDENT, sid)
    with pytest.raises(APIError, match="Race session not found"):  # closed: answered from the database
        await service.describe(OTHER, sid)
    with pytest.raises(APIError, match="Race session not found"):
        await service.close_session(OTHER, sid)
    with pytest.raises(APIError, match="Race session not found"):
        await service.describe(IDENT, "0" * 32)


async def test_read_returns_archived_then_spooled_points_in_order(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(3))
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(service, sid)
    await ingest_all(service, "runner", points(2, 3))
    assert b"".join([chunk async for chunk in service.read(IDENT, sid)]) == b"".join(points(5))
    await service.close_session(IDENT, sid)
    assert b"".join([chunk async for chunk in service.read(IDENT, sid)]) == b"".join(points(5))


async def test_metrics_count_points_and_archives(h: Harness) -> None:
    service, sid = await started(h)
    await ingest_all(service, "runner", points(3))
    registry = service.metrics.registry
    assert registry.get_sample_value("t_race_points_accepted_total") == 3
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(service, sid)
    assert registry.get_sample_value("t_race_archives_total") == 1
    assert (registry.get_sample_value("t_race_archive_bytes_total") or 0) > 0
    assert registry.get_sample_value("t_race_spooled_points") == 0


# -- retries -----------------------------------------------------------------------------


async def test_failed_uploads_are_retried_with_capped_exponential_backoff(h: Harness) -> None:
    objects = h.flaky(failures=4)
    service = h.service(objects)
    out = await service.create(IDENT, SessionIn(stream="runner"))
    sid = out.id
    lines = points(3)
    await ingest_all(service, "runner", lines)
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await until(lambda: len(objects.puts) == 1 and h.clock.sleepers == 1, "the first failed upload")

    described = await service.describe(IDENT, sid)
    assert described.failed_attempts == 1
    assert described.last_error is not None
    assert described.last_error.startswith("ObjectStoreUnavailable")
    assert (described.data_points, described.spooled_points, described.archived_keys) == (3, 3, [])
    pending = h.spool_dir / sid / "000001.pending.jsonl"
    assert pending.read_bytes() == b"".join(lines)  # the spool keeps the points

    def puts_are(n: int) -> Callable[[], bool]:
        return lambda: len(objects.puts) == n

    def failures_are(n: int) -> Callable[[], bool]:
        return lambda: service.sessions[sid].failed_attempts == n

    for attempt, delay in enumerate([1, 2, 4, 4], start=2):  # doubles, capped at retry_max_seconds
        await h.clock.advance(delay / 2)
        await asyncio.sleep(0.02)
        assert len(objects.puts) == attempt - 1, f"retried before {delay}s"
        await h.clock.advance(delay / 2)
        await until(puts_are(attempt), f"attempt {attempt} after {delay}s")
        if attempt <= 4:
            await until(failures_are(attempt), f"{attempt} failed attempts")
            described = await service.describe(IDENT, sid)
            assert described.failed_attempts == attempt
            assert described.spooled_points == 3
            assert pending.exists()

    await archived(service, sid)
    described = await service.describe(IDENT, sid)
    assert (described.failed_attempts, described.last_error) == (0, None)
    assert (described.data_points, described.spooled_points) == (3, 0)
    key = f"races/runner/{sid}/000001.jsonl.zst"
    assert described.archived_keys == [key]
    assert await h.keys() == [key]
    assert await h.archive(key) == b"".join(lines)  # the points, once
    assert not pending.exists()
    assert service.metrics.registry.get_sample_value("t_race_archive_failures_total") == 4


async def test_close_while_the_store_is_down_keeps_retrying_until_it_closes(h: Harness) -> None:
    objects = h.flaky(failures=2)
    service = h.service(objects, close_wait_seconds=0.05)
    out = await service.create(IDENT, SessionIn(stream="runner"))
    await ingest_all(service, "runner", points(2))
    described, closed = await service.close_session(IDENT, out.id)
    assert closed is False
    assert described.state == SessionState.CLOSING
    # (the failure count goes up in the same step as the retry's clock sleep starts)
    await until(lambda: service.sessions[out.id].failed_attempts == 1, "the first failed upload")
    assert len(objects.puts) == 1
    with pytest.raises(APIError, match="No session present"):
        await service.ingest("runner", points(1)[0])
    await h.clock.advance(1)
    await until(lambda: len(objects.puts) == 2)
    await h.clock.advance(2)
    await until(lambda: out.id not in service.sessions, "the session settling")
    final = await service.describe(IDENT, out.id)
    assert (final.state, final.data_points, final.failed_attempts) == (SessionState.CLOSED, 2, 0)
    assert await h.archive(final.archived_keys[0]) == b"".join(points(2))


# -- recovery ----------------------------------------------------------------------------


async def test_spooled_points_are_archived_once_after_a_restart(h: Harness) -> None:
    first, sid = await started(h)
    lines = points(5)
    await ingest_all(first, "runner", lines)
    await first.close()  # no flush: the points stay in the spool
    assert (h.spool_dir / sid / ACTIVE).read_bytes() == b"".join(lines)
    assert await h.keys() == []

    counting = h.flaky(failures=0)
    second = h.service(counting)
    await second.open()
    await archived(second, sid)
    await asyncio.sleep(0.05)
    key = f"races/runner/{sid}/000001.jsonl.zst"
    assert counting.puts == [key]
    assert await h.archive(key) == b"".join(lines)
    out = await second.describe(IDENT, sid)
    assert (out.state, out.data_points, out.spooled_points, out.archived_keys) == (SessionState.OPEN, 5, 0, [key])
    # the session is still open for its stream, and counts on
    assert await second.ingest("runner", points(1, 5)[0]) == 6


async def test_a_batch_whose_upload_failed_is_archived_after_a_restart(h: Harness) -> None:
    down = h.flaky(failures=1000)
    first = h.service(down)
    sid = (await first.create(IDENT, SessionIn(stream="runner"))).id
    lines = points(3)
    await ingest_all(first, "runner", lines)
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await until(lambda: len(down.puts) == 1 and h.clock.sleepers == 1)
    await first.close()
    assert (h.spool_dir / sid / "000001.pending.jsonl").exists()

    second = h.service()
    await second.open()
    await archived(second, sid)
    out = await second.describe(IDENT, sid)
    assert out.archived_keys == [f"races/runner/{sid}/000001.jsonl.zst"]
    assert (out.data_points, out.spooled_points) == (3, 0)
    assert await h.archive(out.archived_keys[0]) == b"".join(lines)


async def test_pending_and_active_spool_files_are_archived_in_order_after_a_restart(h: Harness) -> None:
    down = h.flaky(failures=1000)
    first = h.service(down)
    sid = (await first.create(IDENT, SessionIn(stream="runner"))).id
    await ingest_all(first, "runner", points(2))
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await until(lambda: len(down.puts) == 1)
    await ingest_all(first, "runner", points(3, 2))  # after the rotation: in active.jsonl
    await first.close()

    second = h.service()
    await second.open()
    await archived(second, sid, 2)
    out = await second.describe(IDENT, sid)
    assert [k.rsplit("/", 1)[1] for k in out.archived_keys] == ["000001.jsonl.zst", "000002.jsonl.zst"]
    assert await h.archive(out.archived_keys[0]) == b"".join(points(2))
    assert await h.archive(out.archived_keys[1]) == b"".join(points(3, 2))
    assert (out.data_points, out.spooled_points) == (5, 0)


async def test_a_batch_already_recorded_is_dropped_on_restart_not_uploaded_twice(h: Harness) -> None:
    first, sid = await started(h)
    lines = points(3)
    await ingest_all(first, "runner", lines)
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(first, sid)
    key = f"races/runner/{sid}/000001.jsonl.zst"
    # the crash window: the archive is recorded, the pending file not deleted yet
    pending = h.spool_dir / sid / "000001.pending.jsonl"
    pending.write_bytes(b"".join(lines))
    await first.close()

    counting = h.flaky(failures=0)
    second = h.service(counting)
    await second.open()
    assert not pending.exists()
    await asyncio.sleep(0.05)
    assert counting.puts == []
    out = await second.describe(IDENT, sid)
    assert (out.data_points, out.spooled_points, out.archived_keys) == (3, 0, [key])
    assert out.bytes == len(b"".join(lines))
    assert await h.keys() == [key]
    # and counting goes on from the right total, into the next sequence
    assert await second.ingest("runner", points(1, 3)[0]) == 4
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(second, sid, 2)
    out = await second.describe(IDENT, sid)
    assert out.archived_keys == [key, f"races/runner/{sid}/000002.jsonl.zst"]
    assert out.data_points == 4
    assert await h.archive(key) == b"".join(lines)


async def test_a_session_left_closing_is_settled_after_a_restart(h: Harness) -> None:
    down = h.flaky(failures=1000)
    first = h.service(down, close_wait_seconds=0.05)
    sid = (await first.create(IDENT, SessionIn(stream="runner"))).id
    await ingest_all(first, "runner", points(2))
    _, closed = await first.close_session(IDENT, sid)
    assert closed is False
    await until(lambda: first.sessions[sid].failed_attempts == 1, "the first failed upload")
    await first.close()

    second = h.service()
    await second.open()
    await until(lambda: sid not in second.sessions, "the closing session settling")
    out = await second.describe(IDENT, sid)
    assert (out.state, out.data_points) == (SessionState.CLOSED, 2)
    assert await h.archive(out.archived_keys[0]) == b"".join(points(2))
    assert not (h.spool_dir / sid).exists()
    with pytest.raises(APIError, match="No session present"):
        await second.ingest("runner", points(1)[0])


async def test_closed_sessions_are_not_loaded_again(h: Harness) -> None:
    first, sid = await started(h)
    await ingest_all(first, "runner", points(1))
    await first.close_session(IDENT, sid)
    second = h.service()
    await second.open()
    assert second.sessions == {}
    assert (await second.describe(IDENT, sid)).state == SessionState.CLOSED


# -- concurrency -------------------------------------------------------------------------


async def test_describe_never_counts_a_batch_twice_while_it_is_being_recorded(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, sid = await started(h)
    seen: list[tuple[int, int]] = []
    original = service._save

    async def observing_save(session: Any, **changes: Any) -> None:
        described = await service.describe(IDENT, sid)  # what a client polling the session sees now
        seen.append((described.data_points, described.bytes))
        await original(session, **changes)

    monkeypatch.setattr(service, "_save", observing_save)
    lines = points(3)
    await ingest_all(service, "runner", lines)
    await until(lambda: h.clock.sleepers == 1)
    await h.clock.advance(30)
    await archived(service, sid)
    assert seen, "the archive was recorded"
    assert all(snapshot == (3, len(b"".join(lines))) for snapshot in seen), seen


class OverlapProbe:
    """Stands in for the service's shared compressor and records overlapping calls.

    It compresses with a compressor of its own per call, so that the overlap it detects
    cannot crash the test process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def compress(self, data: bytes) -> bytes:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(0.4)  # widen the window, in the worker thread
            return zstandard.ZstdCompressor(level=3).compress(data)
        finally:
            with self._lock:
                self.active -= 1


async def test_concurrent_flushes_never_share_the_compressor_between_threads(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = h.service()
    probe = OverlapProbe()
    monkeypatch.setattr(service, "_compressor", probe, raising=False)
    ids = [(await service.create(IDENT, SessionIn(stream=f"s{i}"))).id for i in range(2)]
    for i in range(2):
        await ingest_all(service, f"s{i}", points(3))
    await until(lambda: h.clock.sleepers == 2)
    await h.clock.advance(30)
    for sid in ids:
        await archived(service, sid)
    assert probe.max_active <= 1


async def test_points_acknowledged_while_closing_are_archived(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    service, sid = await started(h)
    spool = service.by_stream["runner"].spool
    gate = threading.Event()
    original = spool._write

    def gated(data: bytes) -> None:
        gate.wait(5)
        original(data)

    monkeypatch.setattr(spool, "_write", gated)
    lines = points(2)
    first = asyncio.ensure_future(service.ingest("runner", lines[0]))
    await until(spool._lock.locked, "the first write in flight")
    second = asyncio.ensure_future(service.ingest("runner", lines[1]))  # accepted: the session is open
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(service.close_session(IDENT, sid))
    await until(lambda: bool(spool._lock._waiters), "the closing rotation waiting for the write")
    gate.set()
    assert await first == 1
    assert await second == 2
    out, closed = await closing
    await h.clock.advance(60)
    await asyncio.sleep(0.05)
    described = await service.describe(IDENT, sid)
    assert described.spooled_points == 0, f"{described.spooled_points} point(s) left in the spool"
    assert closed is True
    assert out.state == SessionState.CLOSED
    assert b"".join([await h.archive(k) for k in described.archived_keys]) == b"".join(lines)


# -- several nodes on one database ---------------------------------------------------------


async def test_each_node_holds_the_sessions_it_opened_and_names_the_holder_of_the_others(h: Harness) -> None:
    def node(name: str) -> RaceService:
        config = RaceConfig(
            spool_dir=h.tmp / name, idle_seconds=30, placement=Placement(node_url=f"http://{name}.internal:8000")
        )
        service = RaceService(h.store, h.objects, h.clock, config, Metrics(namespace="t"))
        h.services.append(service)
        return service

    node_a = node("a")
    await node_a.open()
    out = await node_a.create(IDENT, SessionIn(stream="runner", metadata={}))
    await ingest_all(node_a, "runner", points(2))
    node_b = node("b")
    await node_b.open()  # B starts after A opened it: it must not take it (A's spool is on A)
    assert out.id not in node_b.sessions and "runner" not in node_b.by_stream
    assert await node_b.holder(IDENT, out.id) == "http://a.internal:8000"
    assert await node_b.stream_holder("runner") == "http://a.internal:8000"
    assert await node_b.stream_holder("walker") is None  # no open session: B's own 400
    assert await node_b.holder(OTHER, out.id) is None  # another tenant: B's own 404
    assert await node_a.holder(IDENT, out.id) is None and await node_a.stream_holder("runner") is None
    with pytest.raises(APIError) as taken:  # one open session per stream, whichever node is asked
        await node_b.create(IDENT, SessionIn(stream="runner", metadata={}))
    assert taken.value.code is ErrCode.ALREADY_EXISTS
