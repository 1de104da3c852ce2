"""IngestService in process: uploads into the session's log, batching, concurrency, retries and
the DLQ, lifecycle, hashes, reads, restarts and a takeover by another node.

On real parts: the spool log in the test's folder (Redis for two nodes), SQLite and
PostgreSQL, a file object store, the memory broker. Time is a ManualClock: nothing
sleeps for real seconds. Hashing, compression and file work run in threads, so after
moving the clock the tests wait (briefly, bounded) for what proves the outcome.
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
from sluicegate.engines.broker import broker_from_url
from sluicegate.engines.log import LogNotFound
from sluicegate.engines.objects import ObjectStore, ObjectStoreUnavailable, object_store_from_url
from sluicegate.engines.store import Store
from sluicegate.engines.store.leases import Leases
from sluicegate.errors import APIError, ErrCode
from sluicegate.security.identity import Identity
from sluicegate.services.ingest import dlq, readback, schemas
from sluicegate.services.ingest.models import BatchRow, IngestSessionRow, SessionState, SessionType, StartRequest
from sluicegate.services.ingest.processor import log_name
from sluicegate.services.ingest.service import IngestConfig, IngestService, channel_of
from tests.logs import drop_log, fresh_log_url, make_log
from tests.seeds import IOT_SENSORS_V1
from tests.waiting import advance_until, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from pathlib import Path

    from sluicegate.engines.broker import Broker, BrokerMessage
    from sluicegate.engines.log import SessionLog

IDENT = Identity(subject="s", tenant=1, role="user", scopes=frozenset(), method="bearer")
OTHER = Identity(subject="o", tenant=2, role="user", scopes=frozenset(), method="bearer")
LEASE = 10.0

#: Records carry their own times, independent of the service's clock.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_US = 1_767_225_600_000_000  # record times are in microseconds

NOT_FOUND_DETAILS = {
    "message": "No active session found with this ID",
    "suggestions": ["Verify session ID is correct", "Check if session expired (max 24 hours)", "Start a new session"],
}


def canonical(record: Any) -> bytes:
    """A record's canonical bytes: its JSON as sent, without whitespace (the tests send orjson's)."""
    return orjson.dumps(record)


def us(seconds: int) -> int:
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
            raise ObjectStoreUnavailable(f"put {key} failed: endpoint down at /srv/secret/path")
        await super().put(key, data)


class Events:
    """Every event of a session's channel: the retained backlog, then what is published."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    @classmethod
    async def watch(cls, broker: Broker, channel: str) -> Events:
        events = cls()
        sub = await broker.subscribe(channel, from_start=True)
        events.items.extend(orjson.loads(m.data) for m in sub.backlog)
        assert sub.start(events.sink)
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
    log_url: str
    clock: ManualClock
    opened: list[Any] = field(default_factory=list)

    def new_log(self) -> SessionLog:
        return make_log(self.log_url, self.tmp / "data", self.clock, fsync=False)

    async def service(
        self, objects: ObjectStore | None = None, *, holder: str = "spool", **options: Any
    ) -> IngestService:
        used = self.new_log()
        await used.open()
        leases = Leases(self.store, self.clock, holder=holder, seconds=LEASE)
        service = IngestService(
            self.store, objects or self.objects, self.broker, used, leases, self.clock, IngestConfig(**options)
        )
        await service.open()
        self.opened.extend([used, service])
        return service

    async def stop(self, service: IngestService) -> None:
        """A graceful stop of a node: its processors end, its leases go, its log closes."""
        await service.close()
        await service.log.close()
        self.opened.remove(service)
        self.opened.remove(service.log)

    def gated(self) -> GatedObjects:
        return GatedObjects(self.tmp / "objects")

    def flaky(self, fail_next: int) -> FlakyObjects:
        return FlakyObjects(self.tmp / "objects", fail_next)

    async def batch_rows(self, session_id: str) -> list[BatchRow]:
        async with self.store.session() as db:
            query = select(BatchRow).where(BatchRow.session_id == session_id).order_by(BatchRow.seq)
            return list((await db.scalars(query)).all())

    async def row(self, session_id: str) -> IngestSessionRow:
        async with self.store.session() as db:
            row = await db.get(IngestSessionRow, session_id)
        assert row is not None
        return row

    async def rows_reach(self, session_id: str, processed: int) -> list[BatchRow]:
        for _ in range(500):
            rows = await self.batch_rows(session_id)
            if sum(r.state == "processed" for r in rows) >= processed:
                return rows
            await asyncio.sleep(0.01)
        raise AssertionError(f"{processed} batch(es) never stored")

    async def state_is(self, session_id: str, state: str) -> IngestSessionRow:
        for _ in range(500):
            row = await self.row(session_id)
            if row.state == state:
                return row
            await asyncio.sleep(0.01)
        raise AssertionError(f"the session never became {state} (it is {row.state})")


async def harness(tmp_path: Path, database_url: str, log_kind: str) -> AsyncIterator[Harness]:
    store = Store(database_url)
    await store.open()
    clock = ManualClock(start=datetime.now(UTC))
    broker = broker_from_url("memory://", history_size=1000, history_seconds=3600, pending_limit=1000, clock=clock)
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
    """Two nodes' worth: the log on Redis (shared by every node) and one SQLite database."""
    async for made in harness(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", "redis"):
        yield made


async def start(h: Harness, service: IngestService, **options: Any) -> tuple[IngestSessionRow, Events]:
    row = await service.start(IDENT, StartRequest(sessionType=SessionType.TELEMETRY, **options))
    return row, await Events.watch(h.broker, channel_of(row.tenant, row.id))


async def upload(service: IngestService, session_id: str, sent: list[dict[str, Any]]) -> dict[str, Any]:
    return await service.upload(IDENT, session_id, orjson.dumps({"records": sent}))


async def read_back(
    service: IngestService,
    session_id: str,
    *,
    start: int | None = None,
    end: int | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    lines = await readback.records(service.store, service.objects, session_id, start=start, end=end, limit=limit)
    return [orjson.loads(line) async for line in lines]


async def refused(call: Awaitable[Any], code: ErrCode) -> APIError:
    with pytest.raises(APIError) as caught:
        await call
    assert caught.value.code == code
    return caught.value


async def waiting_for(h: Harness, seconds: float) -> None:
    """Until some task sleeps on the clock for ``seconds`` from now (a timer or a backoff)."""
    await until(lambda: any(abs(w - seconds) < 1e-3 for w in h.clock.waits), f"a wait of {seconds}s")


# -- batching ------------------------------------------------------------------------------


async def test_full_batches_are_cut_at_once_and_the_rest_after_the_delay(h: Harness) -> None:
    service = await h.service()
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
    await h.rows_reach(session.id, 2)
    await waiting_for(h, 2.0)  # the delay timer of the 7th record
    await h.clock.advance(1.5)
    assert [r.record_count for r in await h.batch_rows(session.id)] == [3, 3]  # not cut before the delay
    await h.clock.advance(0.5)
    rows = await h.rows_reach(session.id, 3)
    assert [e["recordCount"] for e in events.of("batch-received")] == [3, 3, 1]
    processed = events.of("batch-processed")
    assert [e["atomsCreated"] for e in processed] == [3, 3, 1]
    assert sorted(e["batchId"] for e in processed) == [f"batch-00{i}-{session.id[-6:]}" for i in (1, 2, 3)]
    await until(lambda: events.of("progress")[-1]["totalAtomsCreated"] == 7, "the last progress event")
    assert [(r.seq, r.first_index, r.record_count, r.state) for r in rows] == [
        (1, 0, 3, "processed"),
        (2, 3, 3, "processed"),
        (3, 6, 1, "processed"),
    ]
    for row, (low, high) in zip(rows, [(0, 2), (3, 5), (6, 6)], strict=True):  # a row's range covers its records
        assert row.min_ts is not None and row.max_ts is not None
        assert row.min_ts <= us(low) and row.max_ts >= us(high)
    for row, chunk in zip(rows, [sent[0:3], sent[3:6], sent[6:]], strict=True):
        assert row.segment_key == f"ingest/t1/{session.id}/{row.seq:06d}.jsonl.zst"
        assert unzstd(await h.objects.get(row.segment_key)) == b"".join(canonical(r) + b"\n" for r in chunk)
        digests = b"".join(hashlib.sha256(canonical(r)).digest() for r in chunk)
        assert row.atoms_digest == hashlib.sha256(digests).hexdigest()
    view = await service.view(await h.row(session.id))
    assert (view.records_received, view.batches_cut, view.batches_processed, view.atoms_created) == (7, 3, 3, 7)
    assert view.bytes_received == sum(len(canonical(r)) + 1 for r in sent)


async def test_no_more_than_max_concurrent_batches_are_stored_at_once(h: Harness) -> None:
    objects = h.gated()
    service = await h.service(objects)
    session, _ = await start(h, service, batchSize=1, maxConcurrentBatches=2)
    await upload(service, session.id, records(5))
    await until(lambda: objects.inside == 2, "two batches in put")
    rows = await h.batch_rows(session.id)
    assert len(rows) == 5 and {r.state for r in rows} == {"queued"}  # all cut, two being stored
    processor = service.processing[session.id]
    assert sorted(b.state for b in processor.batches.values()) == [
        "processing",
        "processing",
        "queued",
        "queued",
        "queued",
    ]
    objects.gate.set()
    await h.rows_reach(session.id, 5)
    assert objects.peak == 2


async def test_records_of_uploads_through_any_entry_point_are_counted_once(h: Harness) -> None:
    service = await h.service()
    session, _ = await start(h, service, batchSize=4, maxBatchDelayMs=60_000)
    sent = records(10)
    await asyncio.gather(*(upload(service, session.id, sent[i : i + 2]) for i in range(0, 10, 2)))
    view = await service.view(await h.row(session.id))
    assert (view.records_received, view.bytes_received) == (10, sum(len(canonical(r)) + 1 for r in sent))
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    view = await service.view(ended)
    assert (view.state, view.records_received, view.atoms_created) == (SessionState.COMPLETED, 10, 10)
    assert view.bytes_received == sum(len(canonical(r)) + 1 for r in sent)  # from the row, once the log is gone
    with pytest.raises(LogNotFound):
        await service.log.head(log_name(session.id))
    assert (await h.row(session.id)).retired
    assert ended.records_received == 10  # written with the completion, before the log went


# -- retries and the dead-letter queue -----------------------------------------------------


async def test_a_failing_batch_is_retried_with_backoff_then_dead_lettered_then_retried_by_hand(h: Harness) -> None:
    objects = h.flaky(fail_next=4)
    service = await h.service(objects)
    session, events = await start(h, service, batchSize=2, maxRetries=3, retryDelayMs=1000, retryBackoffMultiplier=2)
    await upload(service, session.id, records(2))
    name = f"batch-001-{session.id[-6:]}"
    for attempt, delay in enumerate([1.0, 2.0, 4.0], start=1):
        await until(lambda: len(events.of("error")) == attempt, f"failure {attempt}")  # noqa: B023
        await waiting_for(h, delay)
        assert len(objects.puts) == attempt
        await h.clock.advance(delay - 0.5)
        assert len(objects.puts) == attempt, f"retried before {delay} s"
        await h.clock.advance(0.5)
    await until(lambda: len(events.of("error")) == 4, "the last failure")
    errors = events.of("error")
    assert [e["retrying"] for e in errors] == [True, True, True, False]
    for attempt, event in enumerate(errors, start=1):
        assert (event["errorCode"], event["batchId"]) == ("BATCH_FAILED", name)
        assert event["message"] == (
            f"Batch processing failed (attempt {attempt}): "
            "ObjectStoreUnavailable: The object store is unavailable; retry shortly"
        )
    for _ in range(200):
        if await dlq.dead_letters(service, IDENT):
            break
        await asyncio.sleep(0.01)
    [dead] = await dlq.dead_letters(service, IDENT)
    assert (dead["batchId"], dead["sessionId"], dead["recordCount"], dead["attempts"]) == (name, session.id, 2, 4)
    assert "secret" not in dead["lastError"] and dead["lastError"].startswith("ObjectStoreUnavailable")
    assert dead["failedAt"] is not None
    assert await dlq.dead_letters(service, OTHER) == []
    assert len(objects.puts) == 4  # no fifth attempt

    await refused(dlq.retry_dead(service, OTHER, name), ErrCode.NOT_FOUND)
    assert await dlq.retry_dead(service, IDENT, name) == {"batchId": name, "sessionId": session.id, "status": "queued"}
    [row] = await h.rows_reach(session.id, 1)
    assert (row.state, row.attempts) == ("processed", 0)
    assert await dlq.dead_letters(service, IDENT) == []
    assert [e["batchId"] for e in events.of("batch-requeued")] == [name]
    await refused(dlq.retry_dead(service, IDENT, name), ErrCode.NOT_FOUND)


async def test_ending_with_a_dead_batch_fails_and_retrying_it_completes_the_session(h: Harness) -> None:
    service = await h.service(h.flaky(fail_next=1))
    session, events = await start(h, service, batchSize=2, maxRetries=0)
    sent = records(3)
    await upload(service, session.id, sent)
    await until(lambda: len(events.of("error")) == 1, "the batch dead")
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    name = f"batch-001-{session.id[-6:]}"
    assert ended.state == SessionState.FAILED
    assert ended.error is not None
    assert (ended.error["code"], ended.error["details"]) == ("BATCH_FAILED", name)
    assert ended.error["message"] == "1 batch(es) failed and are in the dead-letter queue"
    assert ended.final_hash is None and ended.finished_at is not None
    assert events.of("session-failed")[0]["deadBatches"] == [name]
    again = await service.end(IDENT, session.id, wait=True, timeout_ms=100)
    assert again.state == SessionState.FAILED  # ending it again reports it
    assert not ended.retired  # the dead batch's records are still in the log
    assert (await service.log.head(log_name(session.id))).total == 3

    await dlq.retry_dead(service, IDENT, name)
    completed = await h.state_is(session.id, "completed")
    assert completed.final_hash == final_hash(sent)
    assert completed.error is None
    assert [r["values"]["i"] for r in await read_back(service, session.id)] == [0, 1, 2]
    await until(lambda: bool(events.of("session-completed")), "the completion event")


# -- lifecycle -----------------------------------------------------------------------------


async def test_pause_resume_and_end_follow_the_state_diagram(h: Harness) -> None:
    service = await h.service()
    session, events = await start(h, service, batchSize=2)
    assert session.state == "active"
    error = await refused(service.resume(IDENT, session.id), ErrCode.CONFLICT)
    assert (error.status, error.details["status"]) == (409, "active")
    assert (await service.pause(IDENT, session.id)).state == "paused"
    await refused(service.pause(IDENT, session.id), ErrCode.CONFLICT)
    error = await refused(upload(service, session.id, records(1)), ErrCode.CONFLICT)
    assert error.message == "Session state conflict"
    assert error.details == {
        "sessionId": session.id,
        "status": "paused",
        "message": "Session is not accepting data",
        "suggestion": "Resume the session to upload data",
    }
    assert (await service.view(await h.row(session.id))).records_received == 0
    assert (await service.resume(IDENT, session.id)).state == "active"
    await upload(service, session.id, records(2))
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(records(2)))
    await until(lambda: "session-completed" in events.types(), "the completion event")
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
    for call in (
        service.pause(IDENT, session.id),
        service.resume(IDENT, session.id),
        upload(service, session.id, records(1)),
        service.cancel(IDENT, session.job_id),
    ):
        error = await refused(call, ErrCode.CONFLICT)
        assert error.details["status"] == "completed"
    again = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (again.state, again.final_hash, again.records_received) == ("completed", ended.final_hash, 2)


async def test_a_paused_session_can_be_ended(h: Harness) -> None:
    service = await h.service()
    session, _ = await start(h, service, batchSize=10, maxBatchDelayMs=60_000)
    await upload(service, session.id, records(3))
    await service.pause(IDENT, session.id)
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(records(3)))


async def test_a_completing_session_takes_no_data_and_completes_once_its_batches_are_stored(h: Harness) -> None:
    service = await h.service(h.flaky(fail_next=1))
    session, _ = await start(h, service, batchSize=2, retryDelayMs=1000)
    await upload(service, session.id, records(2))
    await waiting_for(h, 1.0)  # the retry's backoff
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=50)  # times out: still completing
    assert ended.state == "completing"
    assert ended.ended_at == h.clock.now()
    error = await refused(upload(service, session.id, records(1)), ErrCode.CONFLICT)
    assert (error.details["status"], error.details["suggestion"]) == ("completing", "Start a new session")
    await refused(service.pause(IDENT, session.id), ErrCode.CONFLICT)
    await refused(service.resume(IDENT, session.id), ErrCode.CONFLICT)
    assert (await service.end(IDENT, session.id, wait=False, timeout_ms=0)).state == "completing"
    await h.clock.advance(1)
    done = await h.state_is(session.id, "completed")
    assert done.final_hash == final_hash(records(2))


@pytest.mark.parametrize("before", ["active", "paused", "completing"])
async def test_cancel_is_allowed_from_every_unfinished_state(h: Harness, before: str) -> None:
    service = await h.service(h.flaky(fail_next=1))
    session, events = await start(h, service, batchSize=2, maxBatchDelayMs=60_000)
    await upload(service, session.id, records(2))  # fails once, then sleeps before its retry
    await waiting_for(h, 1.0)
    if before == "paused":
        await service.pause(IDENT, session.id)
    elif before == "completing":
        await service.end(IDENT, session.id, wait=False, timeout_ms=0)
    assert (await h.row(session.id)).state == before
    cancelled = await service.cancel(IDENT, session.job_id)
    assert cancelled.state == "cancelled"
    assert (cancelled.error, cancelled.finished_at is not None) == (None, True)
    [event] = events.of("session-cancelled")
    assert (event["reason"], event["atomsCreated"]) == ("CANCELLED", 0)
    await until(lambda: session.id not in service.processing, "the processor stopping")
    assert (await h.row(session.id)).retired
    with pytest.raises(LogNotFound):
        await service.log.head(log_name(session.id))
    await h.clock.advance(10)  # the retry went with the session
    assert (await service.view(await h.row(session.id))).atoms_created == 0
    again = await service.cancel(IDENT, session.job_id)
    assert again.state == "cancelled"
    assert (await service.end(IDENT, session.id, wait=True, timeout_ms=5000)).state == "cancelled"
    for call in (upload(service, session.id, records(1)), service.pause(IDENT, session.id)):
        error = await refused(call, ErrCode.CONFLICT)
        assert error.details["status"] == "cancelled"


# -- finalHash -----------------------------------------------------------------------------


async def test_final_hash_is_the_hash_of_the_atom_digests_in_upload_order(h: Harness) -> None:
    service = await h.service()
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
    assert ended.state == "completed"
    assert ended.final_hash == final_hash(everything)
    assert ended.final_hash != final_hash(list(reversed(everything)))
    assert [(r.first_index, r.record_count) for r in await h.batch_rows(session.id)] == [(0, 4), (4, 4), (8, 2)]
    assert ended.records_received == 10
    await until(lambda: bool(events.of("session-completed")), "the completion event")
    completed = events.of("session-completed")[0]
    assert (completed["totalRecords"], completed["totalAtoms"]) == (10, 10)


async def test_an_empty_session_completes_with_the_hash_of_nothing(h: Harness) -> None:
    service = await h.service()
    session, _ = await start(h, service)
    ended = await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", hashlib.sha256(b"").hexdigest())


# -- reading back --------------------------------------------------------------------------


async def test_records_are_merged_across_batches_in_timestamp_order(h: Harness) -> None:
    service = await h.service()
    session, _ = await start(h, service, batchSize=3, maxBatchDelayMs=60_000)
    order = [5, 1, 9, 3, 7, 0, 8, 2, 6, 4]  # batches: [5 1 9] [3 7 0] [8 2 6] [4]
    sent: list[dict[str, Any]] = [{"timestamp": stamp(i), "values": {"i": i}} for i in order]
    await upload(service, session.id, sent[:4])
    await upload(service, session.id, sent[4:])
    await h.rows_reach(session.id, 3)
    live = await read_back(service, session.id)  # the open record is not stored yet
    assert [r["values"]["i"] for r in live] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert len(await h.batch_rows(session.id)) == 4
    assert await read_back(service, session.id) == sorted(sent, key=lambda r: r["values"]["i"])
    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(2), end=us(6))] == [2, 3, 4, 5, 6]
    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(7))] == [7, 8, 9]
    assert [r["values"]["i"] for r in await read_back(service, session.id, end=us(1))] == [0, 1]
    assert [r["values"]["i"] for r in await read_back(service, session.id, limit=3)] == [0, 1, 2]
    assert [r["values"]["i"] for r in await read_back(service, session.id, start=us(3), limit=2)] == [3, 4]
    assert await read_back(service, session.id, start=us(4) + 1, end=us(5) - 1) == []
    assert await read_back(service, session.id, start=us(10)) == []


async def test_records_lines_are_the_canonical_bytes(h: Harness) -> None:
    service = await h.service()
    session, _ = await start(h, service, batchSize=2)
    sent = [{"values": {"b": 2, "a": 1}, "timestamp": stamp(1)}, {"timestamp": stamp(0), "values": {}}]
    await service.upload(IDENT, session.id, b'{"records": [ %s , %s ]}' % (canonical(sent[0]), canonical(sent[1])))
    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    lines = await readback.records(h.store, h.objects, session.id, start=None, end=None, limit=10)
    assert [line async for line in lines] == [canonical(sent[1]) + b"\n", canonical(sent[0]) + b"\n"]


# -- restarts ------------------------------------------------------------------------------


async def stored_exactly_once(h: Harness, service: IngestService, session_id: str, sent: list[dict[str, Any]]) -> None:
    back = await read_back(service, session_id)
    assert sorted(back, key=lambda r: r["values"]["i"]) == sent
    rows = await h.batch_rows(session_id)
    assert all(r.state == "processed" for r in rows)
    assert sum(r.record_count for r in rows) == len(sent)


async def test_acknowledged_records_not_batched_survive_a_restart(h: Harness) -> None:
    first = await h.service()
    session, _ = await start(h, first, batchSize=100, maxBatchDelayMs=60_000)
    sent = records(7)
    await upload(first, session.id, sent[:4])
    await upload(first, session.id, sent[4:])
    await h.stop(first)
    assert await h.batch_rows(session.id) == []
    second = await h.service()
    assert (await second.view(await h.row(session.id))).records_received == 7
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(sent))
    await stored_exactly_once(h, second, session.id, sent)
    assert [(r.first_index, r.record_count) for r in await h.batch_rows(session.id)] == [(0, 7)]


async def test_batches_cut_but_not_stored_are_stored_once_after_a_restart(h: Harness) -> None:
    objects = h.gated()
    first = await h.service(objects)
    session, _ = await start(h, first, batchSize=3, maxBatchDelayMs=60_000)
    sent = records(7)
    await upload(first, session.id, sent)
    await until(lambda: objects.inside == 2, "both full batches cut and in put")
    await h.stop(first)
    assert [(r.seq, r.state) for r in await h.batch_rows(session.id)] == [(1, "queued"), (2, "queued")]
    second = await h.service()
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(sent))
    await stored_exactly_once(h, second, session.id, sent)
    rows = await h.batch_rows(session.id)
    assert [(r.seq, r.first_index, r.record_count) for r in rows] == [(1, 0, 3), (2, 3, 3), (3, 6, 1)]


async def test_batches_stored_before_a_restart_are_not_stored_again(h: Harness) -> None:
    first = await h.service()
    session, events = await start(h, first, batchSize=3, maxBatchDelayMs=60_000)
    sent = records(7)
    await upload(first, session.id, sent)
    await h.rows_reach(session.id, 2)
    await h.stop(first)
    second = await h.service()
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(sent))
    await stored_exactly_once(h, second, session.id, sent)
    assert len(await h.batch_rows(session.id)) == 3
    assert len(events.of("batch-processed")) == 3  # each once


async def test_a_dead_batch_retried_by_hand_is_not_lost_by_a_restart(h: Harness) -> None:
    first = await h.service(GatedObjects(h.tmp / "objects"))
    session, _ = await start(h, first, batchSize=3, maxRetries=0)
    sent = records(3)
    await upload(first, session.id, sent)
    await until(lambda: session.id in first.processing and 1 in first.processing[session.id].batches, "the cut")
    await h.stop(first)  # its put never returned
    async with h.store.session() as db:
        row = await db.scalar(select(BatchRow).where(BatchRow.session_id == session.id))
        assert row is not None
        row.state = "dead"  # as if it had died
    second = await h.service()
    await dlq.retry_dead(second, IDENT, f"batch-001-{session.id[-6:]}")
    ended = await second.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(sent))
    assert await read_back(second, session.id) == sent


# -- schemas and timestamps ----------------------------------------------------------------


def reading(i: int, temperature: Any = 21.5) -> dict[str, Any]:
    return {"timestamp": stamp(i), "values": {"temperature": temperature, "humidity": 40}}


async def test_a_session_schema_refuses_the_upload_with_the_seed_body(h: Harness) -> None:
    service = await h.service()
    await schemas.put_schema(h.store, h.clock, IDENT, IOT_SENSORS_V1)
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
    assert (await service.view(await h.row(session.id))).records_received == 0
    await upload(service, session.id, sent[:42])
    assert (await service.view(await h.row(session.id))).records_received == 42
    await refused(
        service.start(IDENT, StartRequest(sessionType=SessionType.TELEMETRY, schemaName="nope")), ErrCode.NOT_FOUND
    )


async def test_a_missing_timestamp_is_reported_once_under_a_schema(h: Harness) -> None:
    service = await h.service()
    await schemas.put_schema(h.store, h.clock, IDENT, IOT_SENSORS_V1)
    session, _ = await start(h, service, schemaName="iot-sensors-v1")
    error = await refused(
        upload(service, session.id, [{"values": {"temperature": 20, "humidity": 30}}]), ErrCode.INVALID_ARGUMENT
    )
    assert [(p["recordIndex"], p["field"]) for p in error.details["invalidRecords"]] == [(0, "timestamp")]


# -- tenants -------------------------------------------------------------------------------


async def test_another_tenant_gets_the_seed_not_found_everywhere(h: Harness) -> None:
    service = await h.service()
    session, _ = await start(h, service, batchSize=2)
    await upload(service, session.id, records(2))

    async def not_found(call: Awaitable[Any], session_id: str = session.id) -> None:
        error = await refused(call, ErrCode.NOT_FOUND)
        assert (error.status, error.message) == (404, "Session not found")
        assert error.details == {"sessionId": session_id, **NOT_FOUND_DETAILS}

    def calls() -> list[Awaitable[Any]]:
        return [
            service.find(OTHER, session.id),
            service.upload(OTHER, session.id, orjson.dumps({"records": records(1)})),
            service.end(OTHER, session.id, wait=True, timeout_ms=1000),
            service.pause(OTHER, session.id),
            service.resume(OTHER, session.id),
        ]

    for call in calls():
        await not_found(call)
    await refused(service.cancel(OTHER, session.job_id), ErrCode.NOT_FOUND)
    await refused(service.find_job(OTHER, session.job_id), ErrCode.NOT_FOUND)
    assert (await h.row(session.id)).state == "active"
    await service.end(IDENT, session.id, wait=True, timeout_ms=5000)
    for call in calls():
        await not_found(call)
    await not_found(service.find(IDENT, "stream-session-nope"), "stream-session-nope")


# -- expiry and the queue bound ---------------------------------------------------------------


async def test_an_idle_session_expires_after_its_ttl(h: Harness) -> None:
    service = await h.service(session_ttl_seconds=100)
    session, events = await start(h, service)
    await waiting_for(h, 100.0)  # the processor's expiry timer
    await h.clock.advance(99)
    assert (await h.row(session.id)).state == "active"
    await h.clock.advance(2)
    row = await h.state_is(session.id, "cancelled")
    assert row.error is not None
    assert (row.error["code"], row.error["message"]) == ("SESSION_EXPIRED", "No activity for too long")
    await until(lambda: bool(events.of("session-cancelled")), "the cancel event")
    assert events.of("session-cancelled")[0]["reason"] == "SESSION_EXPIRED"


async def test_uploads_postpone_expiry(h: Harness) -> None:
    service = await h.service(session_ttl_seconds=100)
    session, _ = await start(h, service, batchSize=1)
    await waiting_for(h, 100.0)
    await h.clock.advance(90)
    await upload(service, session.id, records(1))
    await h.rows_reach(session.id, 1)
    await h.clock.advance(15)  # 105 s after the start, 15 after the upload
    await waiting_for(h, 85.0)  # the timer moved to 100 s after the upload
    assert (await h.row(session.id)).state == "active"
    await h.clock.advance(86)
    row = await h.state_is(session.id, "cancelled")
    assert row.error is not None and row.error["code"] == "SESSION_EXPIRED"
    assert (await service.view(row)).atoms_created == 1


async def test_too_many_queued_records_refuse_an_upload_with_a_503(h: Harness) -> None:
    service = await h.service(GatedObjects(h.tmp / "objects"), max_queued_records=5)
    session, _ = await start(h, service, batchSize=2)
    await upload(service, session.id, records(4))
    error = await refused(upload(service, session.id, records(2, 4)), ErrCode.UNAVAILABLE)
    assert error.message == "Too many records are waiting to be processed; retry shortly"
    await upload(service, session.id, records(1, 4))  # under the bound still


# -- several nodes ------------------------------------------------------------------------------


async def test_a_session_is_taken_over_when_its_node_dies_and_loses_nothing(shared: Harness) -> None:
    a = await shared.service(holder="node-a")
    b = await shared.service(holder="node-b")
    session, events = await start(shared, a, batchSize=3, maxBatchDelayMs=60_000)
    sent = records(8)
    await upload(a, session.id, sent[:3])
    await upload(b, session.id, sent[3:5])  # any node takes uploads
    await shared.rows_reach(session.id, 1)
    assert session.id in a.processing and session.id not in b.processing
    # a dies: its processors stop without a word to the database
    assert a.processors._loop is not None
    a.processors._loop.cancel()
    for task in a.processors.running.values():
        task.cancel()
    await upload(b, session.id, sent[5:])
    await advance_until(shared.clock, lambda: session.id in b.processing, LEASE / 4, "b taking the session over")
    ended = await b.end(IDENT, session.id, wait=True, timeout_ms=5000)
    assert (ended.state, ended.final_hash) == ("completed", final_hash(sent))
    await stored_exactly_once(shared, b, session.id, sent)
    assert len(events.of("batch-processed")) == len(await shared.batch_rows(session.id))  # none stored twice


async def test_any_node_lists_the_dead_letter_queue_and_a_retry_reaches_the_holder(shared: Harness) -> None:
    objects = FlakyObjects(shared.tmp / "objects", fail_next=1)
    a = await shared.service(objects, holder="node-a")
    b = await shared.service(holder="node-b")
    session, events = await start(shared, a, batchSize=2, maxRetries=0)
    await upload(b, session.id, records(2))
    name = f"batch-001-{session.id[-6:]}"
    for _ in range(300):
        if await dlq.dead_letters(b, IDENT):
            break
        await asyncio.sleep(0.01)
    assert [d["batchId"] for d in await dlq.dead_letters(b, IDENT)] == [name]
    await dlq.retry_dead(b, IDENT, name)  # a holds the session: it stores the batch at its next look
    await advance_until(
        shared.clock, lambda: bool(events.of("batch-processed")), LEASE / 4, "the retried batch stored by a"
    )
    assert [r.state for r in await shared.batch_rows(session.id)] == ["processed"]


async def test_a_session_in_another_log_is_refused_naming_the_setting_and_an_old_one_can_only_be_cancelled(
    h: Harness,
) -> None:
    service = await h.service()
    elsewhere, _ = await start(h, service)
    legacy, _ = await start(h, service)
    async with h.store.session() as db:  # as another node's spool, and as an earlier version, would record them
        (await db.get(IngestSessionRow, elsewhere.id)).log = "spool:another-node"  # type: ignore[union-attr]
        (await db.get(IngestSessionRow, legacy.id)).log = None  # type: ignore[union-attr]
    for call in (
        upload(service, elsewhere.id, records(1)),
        service.end(IDENT, elsewhere.id, wait=False, timeout_ms=0),
        service.pause(IDENT, elsewhere.id),
        service.cancel(IDENT, elsewhere.job_id),
    ):
        error = await refused(call, ErrCode.UNAVAILABLE)
        assert "SLUICEGATE_LOG_URL" in error.message
    for call in (upload(service, legacy.id, records(1)), service.end(IDENT, legacy.id, wait=False, timeout_ms=0)):
        error = await refused(call, ErrCode.CONFLICT)
        assert error.details["message"].startswith("This session was started by an earlier version")
        assert error.details["suggestion"] == "Cancel it and start a new session"
    assert (await service.cancel(IDENT, legacy.job_id)).state == "cancelled"
    assert (await h.row(elsewhere.id)).state == "active"  # untouched: its own node processes it
