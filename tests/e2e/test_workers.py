"""One node of two workers (``SLUICEGATE_WORKERS=2``) on a shared broker (Redis, which is
also the session log: ``SLUICEGATE_LOG_URL`` unset) and the embedded SQLite database.

The workers share the listening socket and nothing else but the log, the broker and the
database: a connection goes to whichever worker the kernel gives it. The tests open
fresh connections, several at a time (one after the other, the kernel tends to give them
all to one worker), and tell which worker served what from the workers' own metrics files
(``<data dir>/metrics``, one set per process id, as the CLI sets
``PROMETHEUS_MULTIPROC_DIR``): every claim that "both workers took part", or that a
request reached a given worker, is read there. Which worker processes a session is its
lease's holder (``host:pid:random``) in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import orjson
import pytest
import zstandard
from moto.server import ThreadedMotoServer
from prometheus_client.multiprocess import MultiProcessCollector
from websockets.asyncio.client import ClientConnection, connect

from tests.brokers import drop, fresh_url
from tests.e2e.helpers import eventually, receive_until, types
from tests.s3 import free_port
from tests.server import ROOT, UNIT, server_env, start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from tests.server import Server

ADMIN, USER = {"X-API-Key": "sk-workers-admin"}, {"X-API-Key": "sk-workers-user"}
AX_SECRET = "ax-workers"
API = "/api/streaming"
#: Lease seconds: a killed worker's sessions are taken over about this long after.
LEASE = 2.0
UPLOAD_ROUTE = "/api/streaming/sessions/{sessionId}/upload"
#: Rounds of fresh connections a test opens at most before it gives up on both workers serving.
ROUNDS = 25


@dataclass
class Node:
    server: Server
    data_dir: Path
    killed: set[int] = field(default_factory=set)  # workers the tests killed, each after it had started

    @property
    def url(self) -> str:
        return self.server.url

    def workers(self) -> list[int]:
        """The worker processes' ids, in the order they started (a replacement comes last)."""
        return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", self.server.log)]

    def live(self) -> set[int]:
        """The worker processes that have not died."""
        died = {int(pid) for pid in re.findall(r"Child process \[(\d+)\] died", self.server.log)}
        return set(self.workers()) - died

    def started(self) -> int:
        """How many worker processes finished starting."""
        return len(re.findall(r"Application startup complete", self.server.log))

    def kill(self, worker: int) -> None:
        """``kill -9`` of one worker: its leases are left to expire; the supervisor starts another."""
        os.kill(worker, signal.SIGKILL)
        self.killed.add(worker)

    def served(self, counter: str, **labels: str) -> Counter[int]:
        """The counter ``counter`` (with ``labels``) in each worker's own metrics file, by process id."""
        return self._read("counter_*.db", counter, labels)

    def open_streams(self) -> Counter[int]:
        """Streams open now (SSE and WebSocket), in each worker's own gauge file, by process id."""
        return self._read("gauge_livesum_*.db", "sluicegate_open_streams", {})

    def _read(self, files: str, name: str, labels: dict[str, str]) -> Counter[int]:
        counts: Counter[int] = Counter()
        for path in (self.data_dir / "metrics").glob(files):
            pid = int(path.stem.rpartition("_")[2])
            for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
                for sample in metric.samples:
                    if sample.name == name and labels.items() <= sample.labels.items():
                        counts[pid] += int(sample.value)
        return counts

    def lease_holder(self, kind: str, key: str) -> int | None:
        """The process id of the lease's holder (``host:pid:random``) in the node's database."""
        with sqlite3.connect(f"file:{self.data_dir / 'sluicegate.db'}?mode=ro", uri=True) as db:
            found = db.execute("SELECT holder FROM leases WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return int(found[0].split(":")[-2]) if found else None


def workers_env(broker: str, **env: str) -> dict[str, str]:
    return {
        "SLUICEGATE_WORKERS": "2",
        "SLUICEGATE_BROKER_URL": broker,
        "SLUICEGATE_API_KEYS": "sk-workers-admin:admin:1,sk-workers-user:user:1",
        "SLUICEGATE_AX_PARSER_SECRET": AX_SECRET,
        "SLUICEGATE_RACE_IDLE_SECONDS": "3600",  # archived when closed, not before
        "SLUICEGATE_LEASE_SECONDS": str(LEASE),
        "SLUICEGATE_INGEST_WORKERS": "0",  # small uploads only: no process pool to start
        **env,
    }


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    broker = fresh_url("redis")
    data_dir = tmp_path_factory.mktemp("workers")
    server = start_server(None, data_dir, workers_env(broker))
    try:
        yield Node(server, data_dir)
    finally:
        server.stop()
        asyncio.run(drop(broker))  # the log's keys too: the same prefix


@pytest.fixture
async def both_up(node: Node) -> Node:
    """The node, once both of its workers serve (after a kill, its replacement too)."""

    try:
        await eventually(lambda: _up(node), within=30 * UNIT)
    except AssertionError:
        raise AssertionError(f"the node's workers are not both up; it logged:\n{node.server.log}") from None
    return node


def fresh(node: Node, headers: dict[str, str]) -> httpx.AsyncClient:
    """A client whose every request opens a connection of its own: the kernel picks the worker."""
    return httpx.AsyncClient(base_url=node.url, headers={**headers, "Connection": "close"}, timeout=10 * UNIT)


async def counted(node: Node, counter: str, total: int, **labels: str) -> Counter[int]:
    """The per-worker counts of ``counter`` once they add up to ``total`` (a worker counts
    a request just after answering it)."""

    async def check() -> list[Counter[int]]:
        counts = node.served(counter, **labels)
        return [counts] if counts.total() == total else []

    found: list[Counter[int]] = await eventually(check)
    return found[0]


def both_served(counts: Counter[int], before: Counter[int] | None = None) -> bool:
    """Whether two processes served some (more than ``before``)."""
    grown = counts - (before or Counter())
    return len([pid for pid, n in grown.items() if n > 0]) >= 2


def reading(n: int) -> dict[str, Any]:
    return {"timestamp": f"2026-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z", "values": {"n": n}}


def final_hash(records: list[dict[str, Any]]) -> str:
    """The job's finalHash: SHA-256 over each record's SHA-256, in the order the log acknowledged them."""
    return hashlib.sha256(b"".join(hashlib.sha256(orjson.dumps(r)).digest() for r in records)).hexdigest()


def batch(seq: int, session_id: str) -> str:
    return f"batch-{seq:03d}-{session_id[-6:]}"


async def post_points(client: httpx.AsyncClient, stream: str, laps: range) -> list[tuple[int, int]]:
    """Post every lap at once, each on a connection of its own; returns (data_points, lap) pairs."""

    async def post(lap: int) -> tuple[int, int]:
        point = {"data": {"lap": lap}, "type": "lap", "platform": "ax"}
        ack = await client.post(f"/api/streams/races/{stream}/data", params={"secret": AX_SECRET}, json=point)
        assert ack.status_code == 200, ack.text
        return ack.json()["data_points"], lap

    return list(await asyncio.gather(*(post(lap) for lap in laps)))


def archive_lines(node: Node, key: str) -> list[bytes]:
    raw = (node.data_dir / "objects" / key).read_bytes()
    return zstandard.ZstdDecompressor().decompressobj().decompress(raw).splitlines()


def archived_keys(node: Node, prefix: str) -> list[str]:
    root = node.data_dir / "objects"
    return sorted(str(p.relative_to(root)) for p in (root / prefix).rglob("*") if p.is_file())


def sample(text: str, name: str) -> float:
    """A metric without labels, from a scrape."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name} "))


async def test_race_points_through_either_worker_are_counted_once_and_archived_once(both_up: Node) -> None:
    node, stream = both_up, "car-9"
    points = "sluicegate_race_points_accepted_total"
    before = node.served(points)
    async with fresh(node, ADMIN) as client:
        created = await client.post("/api/races/sessions", json={"stream": stream, "metadata": {}})
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        acks: list[tuple[int, int]] = []
        for _ in range(ROUNDS):  # until both workers have taken some of this session's points
            acks += await post_points(client, stream, range(len(acks), len(acks) + 8))
            by_worker = await counted(node, points, before.total() + len(acks))
            if both_served(by_worker, before):
                break
        described = (await client.get(f"/api/races/sessions/{session_id}")).json()
        scraped = (await client.get("/metrics")).text  # summed over both workers
        closed = await client.post(f"/api/races/sessions/{session_id}/close")
        data = await client.get(f"/api/races/sessions/{session_id}/data")
    total = len(acks)
    assert both_served(by_worker, before), f"one worker took every point: {by_worker - before}"
    assert set(by_worker) <= set(node.workers())
    assert sorted(n for n, _ in acks) == list(range(1, total + 1))  # one count: each answer its own number
    assert sample(scraped, points) == by_worker.total()
    assert described["data_points"] == total
    assert closed.status_code == 200, closed.text
    key = f"races/{stream}/{session_id}/000001.jsonl.zst"
    assert closed.json()["archived_keys"] == [key]  # one archive
    assert archived_keys(node, f"races/{stream}/{session_id}") == [key]
    in_order = [lap for _, lap in sorted(acks)]  # the log's order
    lines = archive_lines(node, key)
    assert [orjson.loads(line)["data"]["lap"] for line in lines] == in_order  # each point once
    assert data.content.splitlines() == lines


async def upload_all(client: httpx.AsyncClient, url: str, parts: list[list[dict[str, Any]]]) -> list[httpx.Response]:
    """Upload every part at once, each on a connection of its own."""
    answers = await asyncio.gather(*(client.post(f"{url}/upload", json={"records": part}) for part in parts))
    for answer in answers:
        assert answer.status_code == 200, answer.text
    return list(answers)


async def test_uploads_through_either_worker_make_one_session_that_completes_with_every_record_once(
    both_up: Node,
) -> None:
    node = both_up
    labels = {"route": UPLOAD_ROUTE, "status": "200"}
    requests = "sluicegate_http_requests_total"
    before = node.served(requests, **labels)
    async with fresh(node, USER) as client:
        # An upload is a batch: the batchId of each answer says where the log put it.
        config = {"sessionType": "telemetry", "batchSize": 5, "maxBatchDelayMs": 600_000}
        started = await client.post(f"{API}/sessions/start", json=config)
        assert started.status_code == 200, started.text
        session_id, job_id = started.json()["sessionId"], started.json()["jobId"]
        url = f"{API}/sessions/{session_id}"
        parts: list[list[dict[str, Any]]] = []
        answers: list[httpx.Response] = []
        for _ in range(ROUNDS):  # until both workers have taken some
            burst = [[reading(n) for n in range(995 - 5 * k, 1000 - 5 * k)] for k in range(len(parts), len(parts) + 4)]
            answers += await upload_all(client, url, burst)  # each earlier than the one before
            parts += burst
            by_worker = await counted(node, requests, before.total() + len(parts), **labels)
            if both_served(by_worker, before):
                break
        status = (await client.get(f"{url}/status")).json()
        ended = await client.post(f"{url}/end", json={"waitForCompletion": True, "timeoutMs": 20_000})
        job = (await client.get(f"{API}/jobs/{job_id}/status")).json()
        records = await client.get(f"{url}/records")
    uploads, sent = len(parts), [record for part in parts for record in part]
    assert both_served(by_worker, before), f"one worker took every upload: {by_worker - before}"
    assert {a.json()["recordsReceived"] for a in answers} == {5}
    places = [a.json()["batchId"] for a in answers]
    assert sorted(places) == [batch(k, session_id) for k in range(1, uploads + 1)]  # one log numbered them all
    in_log_order = [record for _, part in sorted(zip(places, parts, strict=True)) for record in part]
    stats = status["statistics"]
    assert stats["totalRecordsReceived"] == len(sent)
    assert stats["dataReceivedBytes"] == sum(len(orjson.dumps(r)) + 1 for r in sent)
    assert ended.status_code == 200, ended.text
    final = ended.json()["finalStatistics"]
    assert (ended.json()["status"], final["totalRecordsReceived"]) == ("completed", len(sent))
    assert (final["totalBatchesReceived"], final["totalAtomsCreated"]) == (uploads, len(sent))
    assert job["status"] == "completed"
    assert job["result"]["finalHash"] == final_hash(in_log_order)  # each record once, in the order acknowledged
    assert [orjson.loads(line) for line in records.content.splitlines()] == sorted(sent, key=lambda r: r["timestamp"])


async def open_both(node: Node) -> tuple[str, str, int]:
    """A race session of ``car-kill`` and an ingestion session processed by one worker: both
    opened through one connection (so by one worker), until that worker holds both leases
    (the other worker's scan may take a new session's lease between its row and the opener's
    own take; such a pair is closed and another opened). Returns their ids and the worker."""
    config = {"sessionType": "telemetry", "batchSize": 1000, "maxBatchDelayMs": 600_000}
    async with httpx.AsyncClient(base_url=node.url, timeout=10 * UNIT) as opener:
        for _ in range(5):
            created = await opener.post("/api/races/sessions", json={"stream": "car-kill"}, headers=ADMIN)
            started = await opener.post(f"{API}/sessions/start", json=config, headers=USER)
            race_id, session_id, job_id = created.json()["id"], started.json()["sessionId"], started.json()["jobId"]
            holder = node.lease_holder("ingest", session_id)
            if holder is not None and node.lease_holder("races", race_id) == holder:
                assert holder in node.live()
                return race_id, session_id, holder
            assert (await opener.post(f"/api/races/sessions/{race_id}/close", headers=ADMIN)).status_code == 200
            assert (await opener.post(f"{API}/jobs/{job_id}/cancel", headers=USER)).status_code == 200
    raise AssertionError("no worker ever held both sessions it opened")


async def test_a_killed_worker_is_replaced_and_loses_nothing_acknowledged(both_up: Node) -> None:
    node, stream = both_up, "car-kill"
    upload_labels = {"route": UPLOAD_ROUTE, "status": "200"}
    requests, points = "sluicegate_http_requests_total", "sluicegate_race_points_accepted_total"
    uploads_before, points_before = node.served(requests, **upload_labels), node.served(points)
    race_id, session_id, holder = await open_both(node)
    url = f"{API}/sessions/{session_id}"
    acks: list[tuple[int, int]] = []
    sent: list[dict[str, Any]] = []
    async with fresh(node, ADMIN) as racer, fresh(node, USER) as uploader:
        for _ in range(ROUNDS):  # until both workers have acknowledged some of each
            acks += await post_points(racer, stream, range(len(acks), len(acks) + 4))
            burst = [[reading(n) for n in range(k, k + 5)] for k in range(len(sent), len(sent) + 20, 5)]
            await upload_all(uploader, url, burst)
            sent += [record for part in burst for record in part]
            by_worker = await counted(node, points, points_before.total() + len(acks))
            uploads = await counted(node, requests, uploads_before.total() + len(sent) // 5, **upload_labels)
            if both_served(by_worker, points_before) and both_served(uploads, uploads_before):
                break
        assert both_served(by_worker, points_before) and both_served(uploads, uploads_before)

        node.kill(holder)

        async def replaced() -> bool:
            return holder not in node.live() and await _up(node)

        await eventually(replaced, within=30 * UNIT)  # uvicorn's supervisor starts another
        acks += await post_points(racer, stream, range(len(acks), len(acks) + 4))
        more = [reading(n) for n in range(len(sent), len(sent) + 5)]
        assert (await uploader.post(f"{url}/upload", json={"records": more})).status_code == 200
        sent += more
        ended = await uploader.post(f"{url}/end", json={"waitForCompletion": True, "timeoutMs": 20_000})
        records = await uploader.get(f"{url}/records")
        closed = await racer.post(f"/api/races/sessions/{race_id}/close")
        data = await racer.get(f"/api/races/sessions/{race_id}/data")
    assert f"Child process [{holder}] died" in node.server.log
    assert ended.status_code == 200, ended.text
    final = ended.json()["finalStatistics"]
    assert (ended.json()["status"], final["totalRecordsReceived"], final["totalAtomsCreated"]) == (
        "completed",
        len(sent),
        len(sent),
    )
    assert [orjson.loads(line) for line in records.content.splitlines()] == sent  # each once, in time order
    assert sorted(n for n, _ in acks) == list(range(1, len(acks) + 1))
    assert closed.status_code == 200, closed.text
    key = f"races/{stream}/{race_id}/000001.jsonl.zst"
    assert closed.json()["archived_keys"] == [key]
    lines = archive_lines(node, key)
    assert [orjson.loads(line)["data"]["lap"] for line in lines] == [lap for _, lap in sorted(acks)]
    assert data.content.splitlines() == lines


@contextlib.asynccontextmanager
async def pinned(node: Node, headers: dict[str, str]) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    """A keep-alive client on a connection to each worker, by process id: connections are
    opened four at a time, then each is told apart by the worker whose count of its next
    ``/healthz`` grows. (A connection idle for uvicorn's keep-alive timeout is closed and
    opened again elsewhere: check from the counts that what mattered went where meant.)"""
    health = {"route": "/healthz", "status": "200"}
    requests = "sluicegate_http_requests_total"
    found: dict[int, httpx.AsyncClient] = {}
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(ROUNDS):
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10 * UNIT)
                )
                for _ in range(4)
            ]
            total = node.served(requests, **health).total() + len(clients)
            await asyncio.gather(*(client.get("/healthz") for client in clients))  # four connections at once
            before = await counted(node, requests, total, **health)
            for client in clients:
                await client.get("/healthz")
                total += 1
                after = await counted(node, requests, total, **health)
                (pid,) = (after - before).keys()
                found.setdefault(pid, client)
                before = after
            if len(found) >= 2:
                break
        assert len(found) >= 2, f"every connection went to one worker: {list(found)}"
        yield found


@contextlib.asynccontextmanager
async def socket_on(node: Node, worker: int, url: str, headers: dict[str, str]) -> AsyncIterator[ClientConnection]:
    """A WebSocket open on ``worker``: they are opened four at a time, then closed one by one,
    each time reading which worker's count of open streams fell, until all left are on it."""
    for _ in range(ROUNDS):
        base = node.open_streams()
        sockets = list(await asyncio.gather(*(connect(url, additional_headers=headers) for _ in range(4))))
        opened = await _opened(node, base, len(sockets))
        while 0 < opened[worker] < len(sockets):
            await sockets.pop().close()
            opened = await _opened(node, base, len(sockets))
        if not opened[worker]:
            for other in sockets:
                await other.close()
            await _opened(node, base, 0)  # every one closed: the next round counts from here
            continue
        for extra in sockets[1:]:
            await extra.close()
        try:
            yield sockets[0]
        finally:
            await sockets[0].close()
        return
    raise AssertionError(f"no WebSocket reached worker {worker}")


async def _opened(node: Node, base: Counter[int], count: int) -> Counter[int]:
    """Streams opened since ``base``, by worker, once there are ``count`` of them."""

    async def check() -> list[Counter[int]]:
        now = node.open_streams()
        if now.total() != base.total() + count:
            return []
        now.subtract(base)
        return [now]

    found: list[Counter[int]] = await eventually(check)
    return found[0]


async def test_the_session_websocket_uploads_through_a_worker_that_does_not_process_the_session(
    both_up: Node,
) -> None:
    node = both_up
    async with httpx.AsyncClient(base_url=node.url, headers=USER, timeout=10 * UNIT) as client:
        started = await client.post(f"{API}/sessions/start", json={"sessionType": "telemetry", "batchSize": 2})
        session_id = started.json()["sessionId"]
        holder = node.lease_holder("ingest", session_id)
        (other,) = node.live() - {holder}  # the worker that does not process the session
        url = f"{node.server.ws_url}{API}/sessions/{session_id}/ws"
        async with socket_on(node, other, url, USER) as ws:
            await ws.send(orjson.dumps({"type": "telemetry", "records": [reading(0), reading(1)]}).decode())
            first = await receive_until(ws, lambda got: {"upload-accepted", "batch-processed"} <= set(types(got)))
            await ws.send(orjson.dumps({"type": "telemetry", "records": [{"values": {"n": 1}}]}).decode())
            refused = await receive_until(ws, lambda got: "error" in types(got))
        status = (await client.get(f"{API}/sessions/{session_id}/status")).json()
    accepted = next(m for m in first if m["type"] == "upload-accepted")
    assert (accepted["sessionId"], accepted["recordsReceived"], accepted["status"]) == (session_id, 2, "active")
    processed = next(m for m in first if m["type"] == "batch-processed")  # the processor's event, from the broker
    assert (processed["batchId"], processed["atomsCreated"]) == (accepted["batchId"], 2)
    error = next(m for m in refused if m["type"] == "error")
    assert (error["errorCode"], error["error"]) == ("invalid_argument", "Invalid data format")
    assert error["invalidRecords"][0]["field"] == "timestamp"
    assert status["statistics"]["totalRecordsReceived"] == 2


async def test_a_dead_batch_is_listed_by_both_workers_and_retried_through_the_one_not_processing_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    endpoint, bucket = f"http://127.0.0.1:{port}", "workers-dlq"
    env = {
        "SLUICEGATE_OBJECT_STORE_URL": f"s3://{bucket}?endpoint={endpoint}&region=us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    broker = fresh_url("redis")
    server = start_server(None, tmp_path / "data", workers_env(broker, **env))  # nothing listens at the S3 endpoint
    down = Node(server, tmp_path / "data")
    moto: ThreadedMotoServer | None = None
    retry_route = {"route": "/api/streaming/dlq/{batchId}/retry", "status": "202"}
    try:
        await eventually(lambda: _up(down), within=30 * UNIT)
        async with pinned(down, USER) as workers:
            any_worker = next(iter(workers.values()))
            body = {"sessionType": "telemetry", "batchSize": 2, "maxRetries": 0}
            started = await any_worker.post(f"{API}/sessions/start", json=body)
            session_id = started.json()["sessionId"]
            holder = down.lease_holder("ingest", session_id)
            assert holder in workers
            (other,) = set(workers) - {holder}
            uploaded = await any_worker.post(
                f"{API}/sessions/{session_id}/upload", json={"records": [reading(0), reading(1)]}
            )
            assert uploaded.status_code == 200, uploaded.text

            def listing(worker: httpx.AsyncClient) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
                async def listed() -> list[dict[str, Any]]:
                    batches: list[dict[str, Any]] = (await worker.get(f"{API}/dlq")).json()["batches"]
                    return batches

                return listed

            on_each = [await eventually(listing(worker), within=15 * UNIT) for worker in workers.values()]
            batch_id = on_each[0][0]["batchId"]

            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto.start()
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            s3.create_bucket(Bucket=bucket)
            retries = down.served("sluicegate_http_requests_total", **retry_route)
            retried = await workers[other].post(f"{API}/dlq/{batch_id}/retry")
            served = await counted(down, "sluicegate_http_requests_total", retries.total() + 1, **retry_route)

            async def stored() -> bool:
                status = (await workers[other].get(f"{API}/sessions/{session_id}/status")).json()
                return bool(status["statistics"]["totalAtomsCreated"] == 2)

            await eventually(stored, within=15 * UNIT)
            after = [await listing(worker)() for worker in workers.values()]
            ended = await workers[holder].post(f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True})
    finally:
        server.stop()
        await drop(broker)
        if moto is not None:
            moto.stop()
    assert on_each[0] == on_each[1]  # each worker reads it from the batch's row
    assert [(b["sessionId"], b["recordCount"]) for b in on_each[0]] == [(session_id, 2)]
    assert retried.status_code == 202, retried.text
    assert retried.json() == {"batchId": batch_id, "sessionId": session_id, "status": "queued"}
    assert served - retries == Counter({other: 1})  # the retry went through the worker that does not process it
    assert after == [[], []]
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["finalStatistics"]["totalAtomsCreated"]) == ("completed", 2)


async def _up(node: Node) -> bool:
    """Two workers live, and two of them finished starting (beyond those the tests killed:
    a worker the supervisor replaces for hanging at its start never finished)."""
    return len(node.live()) >= 2 and node.started() - len(node.killed) >= 2


def test_two_workers_on_the_spool_log_are_refused_with_the_setting_named(tmp_path: Path) -> None:
    broker = fresh_url("redis")  # a shared broker: only the log is the matter
    env = server_env(tmp_path, workers_env(broker, SLUICEGATE_LOG_URL="spool://"))
    done = subprocess.run(
        [sys.executable, "-m", "sluicegate", "serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers 2 needs a shared session log" in done.stderr
    assert "SLUICEGATE_LOG_URL" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout
