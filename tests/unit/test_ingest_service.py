"""IngestService in process: batching, concurrency, retries and the DLQ, lifecycle, hashes, reads, recovery.

Time is a ManualClock: nothing sleeps for real seconds. Hashing, compression and file work
run in threads, so after moving the clock the tests wait (briefly, bounded) for a condition.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import zstandard
from obstore.store import LocalStore
from sqlalchemy import select

from sluicegate.clock import ManualClock
from sluicegate.engines.broker import BrokerMessage, broker_from_url
from sluicegate.engines.objects import ObjectStore, ObjectStoreUnavailable, object_store_from_url
from sluicegate.engines.store import Store
from sluicegate.errors import APIError, ErrCode
from sluicegate.security.identity import Identity
from sluicegate.services.ingest.models import (
    BatchRow,
    BatchState,
    IngestSessionRow,
    SessionState,
    SessionType,
    StartRequest,
)
from sluicegate.services.ingest.service import IngestConfig, IngestService, LiveSession
from sluicegate.services.placement import Placement
from tests.seeds import IOT_SENSORS_V1
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from pathlib import Path

    from sluicegate.engines.broker import Broker, Subscription

IDENT = Identity(subject="s", tenant=1, role="user", scopes=frozenset(), method="bearer")
OTHER = Identity(subject="o", tenant=2, role="user", scopes=frozenset(), method="bearer")

#: Records carry their own times, independent of the service's clock.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_US = 1_767_225_600_000_000  # record times are in microseconds


def canonical(record: Any) -> bytes:
    """A record's canonical bytes: its JSON as sent, without whitespace (the tests send orjson's)."""
    return orjson.dumps(record)


NOT_FOUND_DETAILS = {
    "message": "No active session found with this ID",
    "suggestions": [
        "Verify session ID is correct",
        "Check if session expired (max 24 hours)",
        "Start a new session",
    ],
}


# -- helpers -------------------------------------------------------------------------------


async def settle() -> None:
    """Give thread work a moment, to show that something does *not* happen."""
    await asyncio.sleep(0.05)


def us(seconds: int) -> int:
    """The time of ``stamp(seconds)`` as the service indexes it (microseconds since the epoch)."""
    return T0_US + 1_000_000 * seconds


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"timestamp": stamp(i), "values": {"i": i, "temperature": 20.5 + i}} for i in range(start, start + n)]


def final_hash(sent: list[dict[str, Any]]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(canonical(r)).digest() for r in sent)).hexdigest()


def unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


class GatedObjects(ObjectStore):
    """A local store whose puts wait for ``gate``, counting how many wait at once."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(LocalStore(root), description=f"gated file://{root}")
        self.gate = asyncio.Event()
        self.inside = 0
        self.peak = 0

    async def put(self, key: str, data: bytes) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.gate.wait()
        finally:
            self.inside -= 1
        await super().put(key, data)


class FlakyObjects(ObjectStore):
    """A local store whose next ``fail_next`` puts fail as if the endpoint were down."""

    def __init__(self, root: Path, fail_next: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(LocalStore(root), description=f"flaky file://{root}")
        self.fail_next = fail_next
        self.puts: list[str] = []

    async def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ObjectStoreUnavailable(f"put {key} failed: endpoint down")
        await super().put(key, data)


class Events:
    """Every event of a session's channel: the retained backlog, then what is published."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.subscription: Subscription | None = None

    @classmethod
    async def watch(cls, broker: Broker, channel: str) -> Events:
        events = cls()
        sub = await broker.subscribe(channel, from_start=True)
        events.items.extend(orjson.loads(m.data) for m in sub.backlog)
        assert sub.start(events.sink)
        events.subscription = sub
        return events

    def sink(self, message: BrokerMessage) -> bool:
        self.items.append(orjson.loads(message.data))
        return True

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.items if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for e in self.items]


@dataclass
class Harness:
    tmp: Path
    store: Store
    objects: ObjectStore
    broker: Broker
    clock: ManualClock
    services: list[IngestService] = field(default_factory=list)

    @property
    def objects_root(self) -> Path:
        return self.tmp / "objects"

    def service(self, objects: ObjectStore | None = None, **options: Any) -> IngestService:
        config = IngestConfig(spool_dir=self.tmp / "spool", fsync=False, **options)
        service = IngestService(self.store, objects or self.objects, self.broker, self.clock, config)
        self.services.append(service)
        return service

    async def opened(self, objects: ObjectStore | None = None, **options: Any) -> IngestService:
        service = self.service(objects, **options)
        await service.open()
        return service

    def gated(self) -> GatedObjects:
        return GatedObjects(self.objects_root)

    def flaky(self, fail_next: int) -> FlakyObjects:
        return FlakyObjects(self.objects_root, fail_next)

    async def batch_rows(self, session_id: str) -> list[BatchRow]:
        async with self.store.session() as db:
            query = select(BatchRow).where(BatchRow.session_id == session_id).order_by(BatchRow.seq)
            return list((await db.scalars(query)).all())

    async def session_row(self, session_id: str) -> IngestSessionRow:
        async with self.store.session() as db:
            row = await db.get(IngestSessionRow, session_id)
        assert row is not None
        return row


@pytest.fixture
async def h(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    store = Store(database_url)
    await store.open()
    clock = ManualClock(start=datetime.now(UTC))
    broker = broker_from_url("memory://", history_size=1000, history_seconds=3600, pending_limit=1000, clock=clock)
    await broker.open()
    harness = Harness(tmp_path, store, object_store_from_url(f"file://{tmp_path / 'objects'}"), broker, clock)
    try:
        yield harness
    finally:
        for service in harness.services:
            await service.close()
        await broker.close()
        await store.close()


async def start(h: Harness, service: IngestService, **options: Any) -> tuple[LiveSession, Events]:
    session = await service.start(IDENT, StartRequest(sessionType=SessionType.TELEMETRY, **options))
    return session, await Events.watch(h.broker, session.channel)


async def upload(service: IngestService, session_id: str, sent: list[dict[str, Any]]) -> dict[str, Any]:
    return await service.upload(IDENT, session_id, orjson.dumps({"records": sent}))


async def read_back(
    service: IngestService,
    session_id: str,
    *,
    start: int | None = None,
    end: int | None = None,
    limit: int = 10_000,
    identity: Identity = IDENT,
) -> list[dict[str, Any]]:
    lines = await service.records(identity, session_id, start=start, end=end, limit=limit)
    return [orjson.loads(line) async for line in lines]


async def refused(call: Awaitable[Any], code: ErrCode) -> APIError:
    with pytest.raises(APIError) as caught:
        await call
    assert caught.value.code == code
    return caught.value


# -- batching ------------------------------------------------------------------------------


async def test_full_batches_are_cut_at_once_and_the_rest_after_the_delay(h: Harness) -> None:
    service = await h.opened()
    session, events = await start(h, service, batchSize=3, maxBatchDelayMs=2000)
    sent = records(7)
    answer = await upload(service, session.id, sent)
    assert answer == {
        "sessionId": session.id,
        "recordsReceived": 7,
        "recordsProcessed": 0,
        "recordsQueued": 7,
        "batchId": f"batch-001-{session.id[-6:]}",
        "processingTimeMs": 0.0,
        "status": "active",
    }
    assert session.batches_cut == 2  # cut while answering, no time passed
    await until(lambda: session.batches_processed == 2, "two batches processed")
    await until(lambda: h.clock.sleepers == 2, "the sweeper and the delay timer sleeping")

    await h.clock.advance(1.5)
    await settle()
    assert (session.batches_cut, session.batches_processed, session.open_count) == (2, 2, 1)
    assert [e["recordCount"] for e in events.of("batch-received")] == [3, 3]

    await h.clock.advance(0.5)
    await until(lambda: session.batches_processed == 3, "the last batch processed")
    assert session.atoms_created == 7
    assert [e["recordCount"] for e in events.of("batch-received")] == [3, 3, 1]
    processed = events.of("batch-processed")
    assert [e["atomsCreated"] for e in processed] == [3, 3, 1]
    assert sorted(e["batchId"] for e in processed) == [f"batch-00{i}-{session.id[-6:]}" for i in (1, 2, 3)]
    assert events.of("progress")[-1]["totalAtomsCreated"] == 7

    rows = await h.batch_rows(session.id)
    assert [(r.seq, r.first_index, r.record_count, r.state) for r in rows] == [
        (1, 0, 3, "processed"),
        (2, 3, 3, "processed"),
        (3, 6, 1, "processed"),
    ]
    for row, (low, high) in zip(rows, [(0, 2), (3, 5), (6, 6)], strict=True):  # a row's range covers its records
        assert row.min_ts is not None
        assert row.max_ts is not None
        assert row.min_ts <= us(low)
        assert row.max_ts >= us(high)
    for row, chunk in zip(rows, [sent[0:3], sent[3:6], sent[6:]], strict=True):
        assert row.segment_key == f"ingest/t1/{session.id}/{row.seq:06d}.jsonl.zst"
        assert unzstd(await h.objects.get(row.segment_key)) == b"".join(canonical(r) + b"\n" for r in chunk)
        assert (
            row.atoms_digest
            == hashlib.sha256(b"".join(hashlib.sha256(canonical(r)).digest() for r in chunk)).hexdigest()
        )


async def test_a_partial_batch_is_cut_by_the_delay_alone(h: Harness) -> None:
    service = await h.opened()
    session, events = await start(h, service, batchSize=100, maxBatchDelayMs=500)
    await upload(service, session.id, records(2))
    await upload(service, session.id, records(3, 2))
    assert session.batches_cut == 0
    await until(lambda: h.clock.sleepers == 2, "the delay timer sleeping")
    await h.clock.advance(0.25)
    await settle()
    assert session.batches_cut == 0
    await h.clock.advance(0.25)
    await until(lambda: session.batches_processed == 1, "the delayed batch processed")
    assert [e["recordCount"] for e in events.of("batch-received")] == [5]
    assert [(r.first_index, r.record_count) for r in await h.batch_rows(session.id)] == [(0, 5)]


async def test_no_more_than_max_concurrent_batches_are_stored_at_once(h: Harness) -> None:
    objects = h.gated()
    service = await h.opened(objects)
    session, _ = await start(h, service, batchSize=1, maxConcurrentBatches=2)
    await upload(service, session.id, records(5))
    assert session.batches_cut == 5
    await until(lambda: objects.inside == 2, "two batches in put")
    await settle()
    assert (objects.inside, objects.peak) == (2, 2)
    states = sorted(b.state for b in session.batches.values())
    assert states == ["processing", "processing", "queued", "queued", "queued"]

    objects.gate.set()
    await until(lambda: session.batches_processed == 5, "every batch processed")
    assert objects.peak == 2
    assert session.atoms_created == 5
    assert [r.state for r in await h.batch_rows(session.id)] == ["processed"] * 5


async def test_bytes_received_count_each_record_once_while_the_spool_is_emptied_and_after_the_end(
    h: Harness,
) -> None:
    service = await h.opened()
    session, _ = await start(h, service, batchSize=4, maxBatchDelayMs=60_000)
    sent = records(8)
    expected = sum(len(canonical(r)) + 1 for r in sent)  # one line each
    seen: list[int] = []

    async def sample() -> None:  # what a status request would report, at every step of the loop
        while True:
            seen.append(session.bytes_received)
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    try:
        await upload(service, session.id, sent)
        await until(lambda: session.batches_processed == 2 and session.spool.active_points == 0, "the spool emptied")
        ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    finally:
        sampler.cancel()
    assert seen and max(seen) == expected
    assert isinstance(ended, LiveSession) and ended.bytes_received == expected
    assert (await h.session_row(session.id)).bytes_received == expected


# -- retries and the dead-letter queue -----------------------------------------------------


async def test_a_failing_batch_is_retried_with_backoff_then_dead_lettered_then_retried_by_hand(
    h: Harness,
) -> None:
    objects = h.flaky(fail_next=4)
    service = await h.opened(objects)
    session, events = await start(h, service, batchSize=2, maxRetries=3, retryDelayMs=1000, retryBackoffMultiplier=2.0)
    await upload(service, session.id, records(2))
    batch = session.batches[1]
    batch_id = batch.batch_id

    async def failures(n: int) -> None:
        await until(lambda: len(events.of("error")) == n, f"failure {n}")

    for attempt, delay in enumerate([1.0, 2.0, 4.0], start=1):
        await failures(attempt)
        await until(lambda: h.clock.sleepers == 2, f"the retry sleeping after failure {attempt}")
        assert batch.state == BatchState.RETRYING
        assert len(objects.puts) == attempt
        await h.clock.advance(delay - 0.5)
        await settle()
        assert len(objects.puts) == attempt, f"retried before {delay} s"
        await h.clock.advance(0.5)

    await until(lambda: batch.state == BatchState.DEAD and batch.task is None, "the batch dead-lettered")
    assert len(objects.puts) == 4
    assert h.clock.sleepers == 1  # only the sweeper: no fifth attempt is scheduled
    errors = events.of("error")
    assert [e["retrying"] for e in errors] == [True, True, True, False]
    for attempt, event in enumerate(errors, start=1):
        assert event["errorCode"] == "BATCH_FAILED"
        assert event["batchId"] == batch_id
        assert event["message"].startswith(f"Batch processing failed (attempt {attempt}): ObjectStoreUnavailable: ")
        assert "endpoint down" in event["message"]

    [dead] = await service.dead_letters(IDENT)
    assert dead["batchId"] == batch_id
    assert dead["sessionId"] == session.id
    assert (dead["recordCount"], dead["attempts"]) == (2, 4)
    assert dead["lastError"].startswith("ObjectStoreUnavailable: put ingest/t1/")
    assert dead["failedAt"] is not None
    assert await service.dead_letters(OTHER) == []
    [row] = await h.batch_rows(session.id)
    assert (row.state, row.attempts) == ("dead", 4)
    assert session.atoms_created == 0

    await refused(service.retry_dead(OTHER, batch_id), ErrCode.NOT_FOUND)
    answer = await service.retry_dead(IDENT, batch_id)
    assert answer == {"batchId": batch_id, "sessionId": session.id, "status": "queued"}
    await until(lambda: session.atoms_created == 2, "the retried batch stored")
    assert await service.dead_letters(IDENT) == []
    [row] = await h.batch_rows(session.id)
    assert (row.state, row.attempts) == ("processed", 0)
    assert [e["batchId"] for e in events.of("batch-processed")] == [batch_id]
    await refused(service.retry_dead(IDENT, batch_id), ErrCode.NOT_FOUND)


async def test_ending_with_a_dead_batch_fails_the_session(h: Harness) -> None:
    objects = h.flaky(fail_next=1)
    service = await h.opened(objects)
    session, _ = await start(h, service, batchSize=2, maxRetries=0)
    await upload(service, session.id, records(2))
    batch = session.batches[1]
    await until(lambda: batch.state == BatchState.DEAD and batch.task is None, "the batch dead-lettered")

    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.FAILED
    assert ended.error is not None
    assert ended.error["code"] == "BATCH_FAILED"
    assert ended.error["details"] == batch.batch_id
    assert ended.error["message"] == "1 batch(es) failed and are in the dead-letter queue"
    assert ended.final_hash is None
    row = await h.session_row(session.id)
    assert row.state == "failed"
    assert row.error is not None
    assert row.error["code"] == "BATCH_FAILED"
    assert row.finished_at is not None


async def test_ending_a_failed_session_again_reports_it(h: Harness) -> None:
    service = await h.opened(h.flaky(fail_next=1))
    session, _ = await start(h, service, batchSize=1, maxRetries=0)
    await upload(service, session.id, records(1))
    batch = session.batches[1]
    await until(lambda: batch.state == BatchState.DEAD and batch.task is None, "the batch dead-lettered")
    assert (await service.end(IDENT, session.id, wait=True, timeout_ms=5000)).state == SessionState.FAILED
    again = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert again.state == SessionState.FAILED


# -- lifecycle -----------------------------------------------------------------------------


async def test_pause_resume_and_end_follow_the_state_diagram(h: Harness) -> None:
    service = await h.opened()
    session, events = await start(h, service, batchSize=2)
    assert session.state == SessionState.ACTIVE
    assert (await h.session_row(session.id)).state == "active"

    error = await refused(service.resume(IDENT, session.id), ErrCode.CONFLICT)
    assert error.status == 409
    assert error.details["status"] == "active"
    assert (await service.pause(IDENT, session.id)).state == SessionState.PAUSED
    assert (await h.session_row(session.id)).state == "paused"
    await refused(service.pause(IDENT, session.id), ErrCode.CONFLICT)
    error = await refused(upload(service, session.id, records(1)), ErrCode.CONFLICT)
    assert error.message == "Session state conflict"
    assert error.details == {
        "sessionId": session.id,
        "status": "paused",
        "message": "Session is not accepting data",
        "suggestion": "Resume the session to upload data",
    }
    assert session.records_received == 0

    assert (await service.resume(IDENT, session.id)).state == SessionState.ACTIVE
    await upload(service, session.id, records(2))
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.COMPLETED
    assert ended.final_hash == final_hash(records(2))
    assert session.id not in service.live
    assert events.types() == [
        "session-started",
        "session-paused",
        "session-resumed",
        "batch-received",
        "batch-processed",
        "progress",
        "session-completed",
    ]
    completed = events.of("session-completed")[0]
    assert (completed["sessionId"], completed["totalRecords"], completed["totalAtoms"]) == (session.id, 2, 2)

    # finished: answered from the database
    for call in (
        service.pause(IDENT, session.id),
        service.resume(IDENT, session.id),
        upload(service, session.id, records(1)),
        service.cancel(IDENT, session.job_id),
    ):
        error = await refused(call, ErrCode.CONFLICT)
        assert error.details["status"] == "completed"
    again = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert isinstance(again, IngestSessionRow)
    assert (again.state, again.final_hash) == ("completed", ended.final_hash)
    assert (again.records_received, again.finished_at is not None) == (2, True)


async def test_a_paused_session_can_be_ended(h: Harness) -> None:
    service = await h.opened()
    session, _ = await start(h, service, batchSize=10, maxBatchDelayMs=60_000)
    await upload(service, session.id, records(3))
    await service.pause(IDENT, session.id)
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == (SessionState.COMPLETED, final_hash(records(3)))


async def test_a_completing_session_takes_no_data_and_completes_once_its_batches_are_stored(h: Harness) -> None:
    service = await h.opened(h.flaky(fail_next=1))
    session, _ = await start(h, service, batchSize=2, retryDelayMs=1000)
    await upload(service, session.id, records(2))
    await until(lambda: h.clock.sleepers == 2, "the retry sleeping")

    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=50)  # times out: still completing
    assert ended.state == SessionState.COMPLETING
    assert ended.ended_at == h.clock.now()
    assert (await h.session_row(session.id)).state == "completing"
    error = await refused(upload(service, session.id, records(1)), ErrCode.CONFLICT)
    assert error.details["status"] == "completing"
    assert error.details["suggestion"] == "Start a new session"
    await refused(service.pause(IDENT, session.id), ErrCode.CONFLICT)
    await refused(service.resume(IDENT, session.id), ErrCode.CONFLICT)
    assert (await service.end(IDENT, session.id, wait=False, timeout_ms=0)).state == SessionState.COMPLETING

    await h.clock.advance(1)
    await until(lambda: session.state == SessionState.COMPLETED, "the session completed")
    assert session.final_hash == final_hash(records(2))
    assert (await h.session_row(session.id)).final_hash == session.final_hash


@pytest.mark.parametrize("before", ["active", "paused", "completing"])
async def test_cancel_is_allowed_from_every_unfinished_state(h: Harness, before: str) -> None:
    service = await h.opened(h.flaky(fail_next=1))
    session, events = await start(h, service, batchSize=2, maxBatchDelayMs=60_000)
    await upload(service, session.id, records(2))  # fails once, then sleeps before its retry
    await until(lambda: h.clock.sleepers == 2, "the retry sleeping")
    if before == "paused":
        await service.pause(IDENT, session.id)
    elif before == "completing":
        await service.end(IDENT, session.id, wait=False, timeout_ms=0)
    assert session.state == before

    cancelled = await service.cancel(IDENT, session.job_id)
    assert cancelled.state == SessionState.CANCELLED
    assert session.id not in service.live
    assert not (h.tmp / "spool" / session.id).exists()
    row = await h.session_row(session.id)
    assert (row.state, row.error, row.finished_at is not None) == ("cancelled", None, True)
    [event] = events.of("session-cancelled")
    assert (event["reason"], event["atomsCreated"]) == ("CANCELLED", 0)
    await h.clock.advance(10)  # the retry was cancelled with the session
    await settle()
    assert session.atoms_created == 0

    again = await service.cancel(IDENT, session.job_id)
    assert isinstance(again, IngestSessionRow)
    assert again.state == "cancelled"
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == "cancelled"
    for call in (upload(service, session.id, records(1)), service.pause(IDENT, session.id)):
        error = await refused(call, ErrCode.CONFLICT)
        assert error.details["status"] == "cancelled"


# -- finalHash -----------------------------------------------------------------------------


async def test_final_hash_is_the_hash_of_the_atom_digests_in_upload_order(h: Harness) -> None:
    service = await h.opened()
    session, events = await start(h, service, batchSize=4, maxBatchDelayMs=60_000)
    uploads: list[list[dict[str, Any]]] = [
        records(3),
        [
            {"values": {"z": 1, "a": [3, 2, 1], "ü": "naïve ✓"}, "timestamp": stamp(100), "extra": None},
            {"timestamp": stamp(-5), "values": {"nested": {"b": True, "a": 1.25}}},
            *records(3, 3),
        ],
        records(2, 50),
    ]
    for sent in uploads:
        await upload(service, session.id, sent)
    everything = [r for sent in uploads for r in sent]

    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.COMPLETED
    assert ended.final_hash == final_hash(everything)
    assert ended.final_hash != final_hash(list(reversed(everything)))
    assert [(r.first_index, r.record_count) for r in await h.batch_rows(session.id)] == [(0, 4), (4, 4), (8, 2)]
    row = await service.find(IDENT, session.id)
    assert isinstance(row, IngestSessionRow)
    assert (row.final_hash, row.records_received, row.state) == (ended.final_hash, 10, "completed")
    completed = events.of("session-completed")[0]
    assert (completed["totalRecords"], completed["totalAtoms"]) == (10, 10)


async def test_an_empty_session_completes_with_the_hash_of_nothing(h: Harness) -> None:
    service = await h.opened()
    session, _ = await start(h, service)
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == (SessionState.COMPLETED, hashlib.sha256(b"").hexdigest())


# -- reading back --------------------------------------------------------------------------


async def test_records_are_merged_across_batches_in_timestamp_order(h: Harness) -> None:
    service = await h.opened()
    session, _ = await start(h, service, batchSize=3, maxBatchDelayMs=60_000)
    order = [5, 1, 9, 3, 7, 0, 8, 2, 6, 4]  # batches: [5 1 9] [3 7 0] [8 2 6] [4]
    sent: list[dict[str, Any]] = [{"timestamp": stamp(i), "values": {"i": i}} for i in order]
    await upload(service, session.id, sent[:4])
    await upload(service, session.id, sent[4:])
    await until(lambda: session.batches_processed == 3, "three full batches stored")

    live = await read_back(service, session.id)  # the open record is not stored yet
    assert [r["values"]["i"] for r in live] == [0, 1, 2, 3, 5, 6, 7, 8, 9]

    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert len(await h.batch_rows(session.id)) == 4
    assert [r["values"]["i"] for r in await read_back(service, session.id)] == list(range(10))
    assert await read_back(service, session.id) == sorted(sent, key=lambda r: r["values"]["i"])

    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(2), end=us(6))] == [2, 3, 4, 5, 6]
    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(7))] == [7, 8, 9]
    assert [r["values"]["i"] for r in await read_back(service, session.id, end=us(1))] == [0, 1]
    assert [r["values"]["i"] for r in await read_back(service, session.id, limit=3)] == [0, 1, 2]
    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(3), limit=2)] == [3, 4]
    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(4) + 1, end=us(5) - 1)] == []
    assert await read_back(service, session.id, start=us(10)) == []
    assert await read_back(service, session.id, limit=0) == []


async def test_records_lines_are_the_canonical_bytes(h: Harness) -> None:
    service = await h.opened()
    session, _ = await start(h, service, batchSize=2)
    sent = [{"values": {"b": 2, "a": 1}, "timestamp": stamp(1)}, {"timestamp": stamp(0), "values": {}}]
    await upload(service, session.id, sent)
    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    lines = await service.records(IDENT, session.id, start=None, end=None, limit=10)
    assert [line async for line in lines] == [canonical(sent[1]) + b"\n", canonical(sent[0]) + b"\n"]


# -- recovery ------------------------------------------------------------------------------


async def stored_exactly_once(h: Harness, service: IngestService, session_id: str, sent: list[dict[str, Any]]) -> None:
    back = await read_back(service, session_id)
    assert sorted(back, key=lambda r: r["values"]["i"]) == sent
    rows = await h.batch_rows(session_id)
    assert all(r.state == "processed" for r in rows)
    assert sum(r.record_count for r in rows) == len(sent)


async def test_acknowledged_records_not_batched_survive_a_restart(h: Harness) -> None:
    first = await h.opened()
    session, _ = await start(h, first, batchSize=100, maxBatchDelayMs=60_000)
    sent = records(7)
    await upload(first, session.id, sent[:4])
    await upload(first, session.id, sent[4:])
    await first.close()
    h.services.remove(first)
    assert await h.batch_rows(session.id) == []

    second = await h.opened()
    recovered = second.live[session.id]
    assert (recovered.state, recovered.records_received) == (SessionState.ACTIVE, 7)
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.COMPLETED
    assert ended.final_hash == final_hash(sent)
    await stored_exactly_once(h, second, session.id, sent)
    assert [(r.first_index, r.record_count) for r in await h.batch_rows(session.id)] == [(0, 7)]


async def test_batches_cut_but_not_stored_are_stored_once_after_a_restart(h: Harness) -> None:
    objects = h.gated()
    first = await h.opened(objects)
    session, _ = await start(h, first, batchSize=3, maxBatchDelayMs=60_000)
    sent = records(7)
    await upload(first, session.id, sent)
    await until(lambda: objects.inside == 2, "both full batches recorded and in put")
    await first.close()
    h.services.remove(first)
    assert await h.batch_rows(session.id) == []  # a row is written once a batch is stored (or dead)

    second = await h.opened()
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.COMPLETED
    assert ended.final_hash == final_hash(sent)
    await stored_exactly_once(h, second, session.id, sent)
    rows = await h.batch_rows(session.id)
    assert [(r.seq, r.first_index, r.record_count) for r in rows] == [(1, 0, 3), (2, 3, 3), (3, 6, 1)]


async def test_batches_stored_before_a_restart_are_not_stored_again(h: Harness) -> None:
    first = await h.opened()
    session, _ = await start(h, first, batchSize=3, maxBatchDelayMs=60_000)
    sent = records(7)
    await upload(first, session.id, sent)
    await until(lambda: session.batches_processed == 2, "two batches stored")
    await first.close()
    h.services.remove(first)

    second = await h.opened()
    recovered = second.live[session.id]
    assert (recovered.atoms_created, recovered.batches_processed, recovered.next_seq) == (6, 2, 4)
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.COMPLETED
    assert ended.final_hash == final_hash(sent)
    await stored_exactly_once(h, second, session.id, sent)
    assert len(await h.batch_rows(session.id)) == 3


async def test_a_dead_batch_retried_by_hand_is_not_lost_by_a_restart(h: Harness) -> None:
    first = await h.opened(h.flaky(fail_next=1))
    session, _ = await start(h, first, batchSize=3, maxRetries=0)
    sent = records(3)
    await upload(first, session.id, sent)
    batch = session.batches[1]
    await until(lambda: batch.state == BatchState.DEAD and batch.task is None, "the batch dead-lettered")
    await first.retry_dead(IDENT, batch.batch_id)
    await first.close()  # stops before the retried batch is stored
    h.services.remove(first)
    assert [r.state for r in await h.batch_rows(session.id)] == ["queued"]

    second = await h.opened()
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert ended.state == SessionState.COMPLETED
    assert await read_back(second, session.id) == sent
    assert ended.final_hash == final_hash(sent)


# -- schemas and timestamps ----------------------------------------------------------------


def reading(i: int, temperature: Any = 21.5) -> dict[str, Any]:
    return {"timestamp": stamp(i), "values": {"temperature": temperature, "humidity": 40}}


async def test_a_session_schema_refuses_the_upload_with_the_seed_body(h: Harness) -> None:
    service = await h.opened()
    await service.put_schema(IDENT, IOT_SENSORS_V1)
    session, _ = await start(h, service, schemaName="iot-sensors-v1")
    sent = [reading(i) for i in range(43)]
    sent[42] = reading(42, temperature="invalid")
    error = await refused(upload(service, session.id, sent), ErrCode.INVALID_ARGUMENT)
    assert error.message == "Invalid data format"
    assert error.details == {
        "batchId": f"batch-001-{session.id[-6:]}",
        "invalidRecords": [
            {
                "recordIndex": 42,
                "field": "temperature",
                "value": "invalid",
                "expectedType": "float",
                "message": "Cannot parse 'invalid' as float",
            }
        ],
        "suggestion": "Fix invalid records and resubmit batch",
    }
    assert session.records_received == 0
    await upload(service, session.id, sent[:42])
    assert session.records_received == 42
    await refused(
        service.start(IDENT, StartRequest(sessionType=SessionType.TELEMETRY, schemaName="nope")), ErrCode.NOT_FOUND
    )


async def test_a_missing_timestamp_is_reported_once_under_a_schema(h: Harness) -> None:
    service = await h.opened()
    await service.put_schema(IDENT, IOT_SENSORS_V1)
    session, _ = await start(h, service, schemaName="iot-sensors-v1")
    record = {"values": {"temperature": 20, "humidity": 30}}
    error = await refused(upload(service, session.id, [record]), ErrCode.INVALID_ARGUMENT)
    assert [(p["recordIndex"], p["field"]) for p in error.details["invalidRecords"]] == [(0, "timestamp")]


async def test_a_timestamp_accepted_on_upload_is_read_back_at_its_time(h: Harness) -> None:
    service = await h.opened()
    session, _ = await start(h, service, batchSize=2)
    sent = [reading(1), {"timestamp": "2026-01-01T00:00:05z", "values": {"temperature": 20, "humidity": 30}}]
    try:
        await upload(service, session.id, sent)
    except APIError:  # refusing it, as check_records does, would be consistent too
        return
    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert await read_back(service, session.id, start=us(2)) == [sent[1]]


# -- tenants -------------------------------------------------------------------------------


async def test_another_tenant_gets_the_seed_not_found_everywhere(h: Harness) -> None:
    service = await h.opened()
    session, _ = await start(h, service, batchSize=2)
    await upload(service, session.id, records(2))
    await until(lambda: session.batches_processed == 1, "the batch stored")

    async def not_found(call: Awaitable[Any], session_id: str = session.id) -> None:
        error = await refused(call, ErrCode.NOT_FOUND)
        assert error.status == 404
        assert error.message == "Session not found"
        assert error.details == {"sessionId": session_id, **NOT_FOUND_DETAILS}
        assert error.body() == {"error": "Session not found", "code": "not_found", **error.details}

    def calls() -> list[Awaitable[Any]]:
        return [
            service.find(OTHER, session.id),
            service.upload(OTHER, session.id, orjson.dumps({"records": records(1)})),
            service.end(OTHER, session.id, wait=True, timeout_ms=1000),
            service.pause(OTHER, session.id),
            service.resume(OTHER, session.id),
            service.records(OTHER, session.id, start=None, end=None, limit=10),
        ]

    for call in calls():
        await not_found(call)
    await refused(service.cancel(OTHER, session.job_id), ErrCode.NOT_FOUND)
    await refused(service.find_job(OTHER, session.job_id), ErrCode.NOT_FOUND)
    assert session.state == SessionState.ACTIVE
    assert session.records_received == 2

    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)  # finished: from the database now
    for call in calls():
        await not_found(call)
    await refused(service.cancel(OTHER, session.job_id), ErrCode.NOT_FOUND)
    await not_found(service.find(IDENT, "stream-session-nope"), "stream-session-nope")


# -- expiry --------------------------------------------------------------------------------


async def test_an_idle_session_expires_after_its_ttl(h: Harness) -> None:
    service = await h.opened(session_ttl_seconds=100)
    session, events = await start(h, service)
    await until(lambda: h.clock.sleepers == 1, "the sweeper sleeping")
    await h.clock.advance(100)  # sweeps at 25, 50, 75 and 100 s: idle for 100 s is not too long
    await settle()
    assert session.id in service.live
    assert (await h.session_row(session.id)).state == "active"
    await h.clock.advance(25)
    await until(lambda: session.id not in service.live, "the session expired")

    assert session.state == SessionState.CANCELLED
    row = await service.find(IDENT, session.id)
    assert isinstance(row, IngestSessionRow)
    assert row.state == "cancelled"
    assert row.error is not None
    assert (row.error["code"], row.error["message"]) == ("SESSION_EXPIRED", "No activity for too long")
    [event] = events.of("session-cancelled")
    assert event["reason"] == "SESSION_EXPIRED"


async def test_activity_postpones_expiry(h: Harness) -> None:
    service = await h.opened(session_ttl_seconds=100)
    session, _ = await start(h, service, batchSize=1)
    await until(lambda: h.clock.sleepers == 1, "the sweeper sleeping")
    await h.clock.advance(90)
    await upload(service, session.id, records(1))
    await until(lambda: session.batches_processed == 1, "the batch stored")
    await h.clock.advance(85)  # at 175 s: idle for 85 s
    await settle()
    assert session.state == SessionState.ACTIVE
    await h.clock.advance(25)  # at 200 s: idle for 110 s
    await until(lambda: session.id not in service.live, "the session expired")
    assert session.error is not None
    assert session.error["code"] == "SESSION_EXPIRED"
    assert session.atoms_created == 1


# -- several nodes on one database ---------------------------------------------------------


async def test_each_node_holds_the_sessions_it_started_and_names_the_holder_of_the_others(h: Harness) -> None:
    def node(name: str) -> IngestService:
        config = IngestConfig(
            spool_dir=h.tmp / name, fsync=False, placement=Placement(node_url=f"http://{name}.internal:8000")
        )
        service = IngestService(h.store, h.objects, h.broker, h.clock, config)
        h.services.append(service)
        return service

    node_a = node("a")
    await node_a.open()
    session, _ = await start(h, node_a, batchSize=100, maxBatchDelayMs=60_000)
    await upload(node_a, session.id, records(3))
    node_b = node("b")
    await node_b.open()  # B starts after A's session: it must not take it (A's spool is on A)
    assert session.id not in node_b.live
    assert await node_b.holder(IDENT, session_id=session.id) == "http://a.internal:8000"
    assert await node_b.holder(IDENT, job_id=session.job_id) == "http://a.internal:8000"
    assert await node_a.holder(IDENT, session_id=session.id) is None  # A answers itself
    assert await node_b.holder(OTHER, session_id=session.id) is None  # another tenant: B's own 404
    assert await node_b.holder(IDENT, session_id="stream-session-unknown") is None

    await node_a.close()
    h.services.remove(node_a)
    again = node("a")  # A restarts at the same address: it holds its session again
    await again.open()
    assert session.id in again.live
    assert again.live[session.id].records_received == 3
    await again.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert await node_b.holder(IDENT, session_id=session.id) is None  # finished: any node answers


async def test_any_node_lists_the_dead_letter_queue_and_names_the_holder_of_a_dead_batch(h: Harness) -> None:
    def node(name: str, objects: ObjectStore) -> IngestService:
        config = IngestConfig(
            spool_dir=h.tmp / name, fsync=False, placement=Placement(node_url=f"http://{name}.internal:8000")
        )
        service = IngestService(h.store, objects, h.broker, h.clock, config)
        h.services.append(service)
        return service

    node_a, node_b = node("a", h.flaky(fail_next=1)), node("b", h.objects)
    await node_a.open()
    await node_b.open()
    session, _ = await start(h, node_a, batchSize=2, maxRetries=0)
    await upload(node_a, session.id, records(2))
    batch = session.batches[1]
    await until(lambda: batch.state == BatchState.DEAD and batch.task is None, "the batch dead-lettered on A")

    [on_a] = await node_a.dead_letters(IDENT)
    assert await node_b.dead_letters(IDENT) == [on_a]  # from the batch's row, as A has it in memory
    assert (on_a["batchId"], on_a["sessionId"], on_a["recordCount"]) == (batch.batch_id, session.id, 2)
    assert await node_b.dead_letters(OTHER) == []
    assert await node_b.holder(IDENT, batch_id=batch.batch_id) == "http://a.internal:8000"  # the retry goes to A
    assert await node_a.holder(IDENT, batch_id=batch.batch_id) is None
    assert await node_b.holder(OTHER, batch_id=batch.batch_id) is None  # another tenant: B's own 404
    assert await node_b.holder(IDENT, batch_id="batch-999-000000") is None

    await node_a.retry_dead(IDENT, batch.batch_id)
    await until(lambda: session.atoms_created == 2, "the retried batch stored on A")
    assert await node_b.dead_letters(IDENT) == []
    assert await node_b.holder(IDENT, batch_id=batch.batch_id) is None  # no longer dead
