"""One node of two workers (``SLUICEGATE_WORKERS=2``) on a shared broker and the embedded
SQLite database: a session opened by one worker is fed, read and closed through the other.

Each worker also listens on a Unix socket of its own; the tests talk to each worker
through it, so that which worker takes a request is certain (over TCP the kernel picks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import orjson
import pytest
from moto.server import ThreadedMotoServer
from websockets.asyncio.client import unix_connect

from sluicegate.services.placement import sockets_dir
from tests.brokers import drop, fresh_url
from tests.e2e.helpers import eventually, receive_until, types
from tests.s3 import free_port
from tests.server import UNIT, start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from tests.server import Server

ADMIN, USER = {"X-API-Key": "sk-workers-admin"}, {"X-API-Key": "sk-workers-user"}
AX_SECRET = "ax-workers"
API = "/api/streaming"


@dataclass
class Node:
    server: Server
    data_dir: Path

    @property
    def log(self) -> str:
        return self.server.log

    def socket(self, slot: int) -> Path:
        return sockets_dir(self.data_dir) / f"w{slot}.sock"


@contextlib.contextmanager
def two_workers(data_dir: Path, broker: str, **env: str) -> Iterator[Node]:
    """A node of two workers on the broker at ``broker``."""
    env = {
        "SLUICEGATE_WORKERS": "2",
        "SLUICEGATE_BROKER_URL": broker,
        "SLUICEGATE_API_KEYS": "sk-workers-admin:admin:1,sk-workers-user:user:1",
        "SLUICEGATE_AX_PARSER_SECRET": AX_SECRET,
        "SLUICEGATE_RACE_IDLE_SECONDS": "3600",
        **env,
    }
    server = start_server(None, data_dir, env)
    try:
        yield Node(server, data_dir)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    broker = fresh_url("redis")
    try:
        with two_workers(tmp_path_factory.mktemp("workers"), broker) as started:
            yield started
    finally:
        asyncio.run(drop(broker))


def _slots(node: Node) -> dict[int, int]:
    """Worker slot -> process id, from the workers' logs (the latest for each slot)."""
    return {int(s): int(p) for s, p in re.findall(r"worker slot (\d+) of \d+ is process (\d+)", node.log)}


async def _both_up(node: Node, workers: int = 2) -> bool:
    """Every worker has started and answers on its socket (a dead one's may be left)."""
    if len(_slots(node)) < workers:
        return False
    for slot in range(workers):
        try:
            async with _client(node, slot) as client:
                if (await client.get("/healthz")).status_code != 200:
                    return False
        except httpx.TransportError:
            return False
    return True


@pytest.fixture
async def workers(node: Node) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client for each worker, through its socket: ``workers[slot]``."""
    await eventually(lambda: _both_up(node), within=30 * UNIT)
    clients = [_client(node, slot) for slot in (0, 1)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


def _client(node: Node, slot: int) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(node.socket(slot)))
    return httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=10 * UNIT)


def readings(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"timestamp": f"2026-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z", "values": {"n": n}}
        for n in range(first, first + count)
    ]


async def test_race_points_posted_to_either_worker_are_collected_by_the_one_session(
    workers: list[httpx.AsyncClient],
) -> None:
    holder, sibling = workers
    created = await holder.post("/api/races/sessions", json={"stream": "car-9", "metadata": {}}, headers=ADMIN)
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    acks = []
    for lap in range(10):
        point = {"data": {"lap": lap}, "type": "lap", "platform": "ax"}
        worker = workers[lap % 2]  # alternately the holder and its sibling
        ack = await worker.post("/api/streams/races/car-9/data", params={"secret": AX_SECRET}, json=point)
        assert ack.status_code == 200, ack.text
        acks.append(ack.json()["data_points"])
    described = (await sibling.get(f"/api/races/sessions/{session_id}", headers=ADMIN)).json()
    closed = await sibling.post(f"/api/races/sessions/{session_id}/close", headers=ADMIN)
    data = await sibling.get(f"/api/races/sessions/{session_id}/data", headers=ADMIN)
    scraped = (await holder.get("/metrics")).text  # summed over both workers
    assert acks == list(range(1, 11))  # one count: the holder's
    route = 'route="/api/streams/races/{stream}/data",status="200"'
    counted = "sluicegate_http_requests_total{"
    posted = [line for line in scraped.splitlines() if line.startswith(counted) and route in line]
    assert [float(line.rsplit(" ", 1)[1]) for line in posted] == [10.0]  # those passed on are not counted twice
    assert described["data_points"] == 10
    assert closed.status_code == 200, closed.text
    assert closed.json()["archived_keys"] == [f"races/car-9/{session_id}/000001.jsonl.zst"]
    assert [orjson.loads(line)["data"]["lap"] for line in data.content.splitlines()] == list(range(10))


async def test_an_ingestion_session_started_on_one_worker_takes_uploads_and_ends_through_the_other(
    workers: list[httpx.AsyncClient],
) -> None:
    holder, sibling = workers
    started = await sibling.post(
        f"{API}/sessions/start", json={"sessionType": "telemetry", "batchSize": 5}, headers=USER
    )
    assert started.status_code == 200, started.text
    session_id, job_id = started.json()["sessionId"], started.json()["jobId"]
    sent = readings(0, 15)
    for i, part in enumerate((sent[:5], sent[5:10], sent[10:])):
        uploaded = await workers[i % 2].post(
            f"{API}/sessions/{session_id}/upload", json={"records": part}, headers=USER
        )
        assert uploaded.status_code == 200, uploaded.text
    status = (await holder.get(f"{API}/sessions/{session_id}/status", headers=USER)).json()
    ended = await holder.post(f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True}, headers=USER)
    job = (await holder.get(f"{API}/jobs/{job_id}/status", headers=USER)).json()
    records = await holder.get(f"{API}/sessions/{session_id}/records", headers=USER)
    assert status["statistics"]["totalRecordsReceived"] == 15
    assert ended.status_code == 200, ended.text
    assert ended.json()["finalStatistics"]["totalAtomsCreated"] == 15
    assert job["status"] == "completed"
    assert [orjson.loads(line)["values"]["n"] for line in records.content.splitlines()] == list(range(15))


async def test_a_worker_killed_after_an_acknowledged_upload_is_replaced_and_loses_nothing(
    node: Node, workers: list[httpx.AsyncClient]
) -> None:
    holder, sibling = workers
    started = await holder.post(
        f"{API}/sessions/start",
        json={"sessionType": "telemetry", "batchSize": 1000, "maxBatchDelayMs": 60000},
        headers=USER,
    )
    session_id = started.json()["sessionId"]
    uploaded = await sibling.post(
        f"{API}/sessions/{session_id}/upload", json={"records": readings(0, 20)}, headers=USER
    )
    assert uploaded.status_code == 200, uploaded.text  # durable in the holder's spool
    killed = _slots(node)[0]
    os.kill(killed, signal.SIGKILL)  # before it batched anything
    # The supervisor starts a worker in its place, which takes the free slot and its sessions.
    await eventually(lambda: _replaced(node, killed), within=30 * UNIT)
    await eventually(lambda: _both_up(node), within=30 * UNIT)
    async with _client(node, 1) as survivor:
        ended = await survivor.post(f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True}, headers=USER)
        records = await survivor.get(f"{API}/sessions/{session_id}/records", headers=USER)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "completed"
    assert [orjson.loads(line)["values"]["n"] for line in records.content.splitlines()] == list(range(20))


async def _replaced(node: Node, killed: int) -> bool:
    return _slots(node).get(0) not in (None, killed)


async def test_a_dead_batch_is_listed_by_both_workers_and_retried_through_the_other(tmp_path: Path) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "workers-dlq"
    env = {
        "SLUICEGATE_OBJECT_STORE_URL": f"s3://{bucket}?endpoint={endpoint}&region=us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    moto: ThreadedMotoServer | None = None
    broker = fresh_url("redis")
    try:
        with two_workers(tmp_path / "data", broker, **env) as down:  # nothing listens at the S3 endpoint yet
            await eventually(lambda: _both_up(down), within=30 * UNIT)
            async with _client(down, 0) as holder, _client(down, 1) as sibling:
                body = {"sessionType": "telemetry", "batchSize": 2, "maxRetries": 0}
                started = await holder.post(f"{API}/sessions/start", json=body, headers=USER)
                session_id = started.json()["sessionId"]
                uploaded = await holder.post(
                    f"{API}/sessions/{session_id}/upload", json={"records": readings(0, 2)}, headers=USER
                )
                assert uploaded.status_code == 200, uploaded.text

                async def listed(worker: httpx.AsyncClient) -> list[dict[str, Any]]:
                    batches: list[dict[str, Any]] = (await worker.get(f"{API}/dlq", headers=USER)).json()["batches"]
                    return batches

                on_holder = await eventually(lambda: listed(holder), within=15 * UNIT)
                assert await listed(sibling) == on_holder  # the sibling reads it from the batch's row
                assert [(b["sessionId"], b["recordCount"]) for b in on_holder] == [(session_id, 2)]
                batch_id = on_holder[0]["batchId"]

                moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                moto.start()
                boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name="us-east-1",
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                ).create_bucket(Bucket=bucket)
                retried = await sibling.post(f"{API}/dlq/{batch_id}/retry", headers=USER)  # passed on to the holder
                assert retried.status_code == 202, retried.text
                assert retried.json() == {"batchId": batch_id, "sessionId": session_id, "status": "queued"}

                async def stored() -> bool:
                    status = (await sibling.get(f"{API}/sessions/{session_id}/status", headers=USER)).json()
                    return bool(status["statistics"]["totalAtomsCreated"] == 2)

                await eventually(stored, within=15 * UNIT)
                assert await listed(sibling) == [] and await listed(holder) == []
    finally:
        await drop(broker)
        if moto is not None:
            moto.stop()


async def test_the_session_websocket_uploads_through_a_worker_that_does_not_hold_the_session(
    node: Node, workers: list[httpx.AsyncClient]
) -> None:
    holder, _ = workers
    body = {"sessionType": "telemetry", "batchSize": 2}
    started = await holder.post(f"{API}/sessions/start", json=body, headers=USER)
    session_id = started.json()["sessionId"]
    uri = f"ws://worker{API}/sessions/{session_id}/ws"
    async with unix_connect(str(node.socket(1)), uri, additional_headers=USER) as ws:  # the sibling
        await ws.send(orjson.dumps({"type": "telemetry", "records": readings(0, 2)}).decode())
        first = await receive_until(ws, lambda got: {"upload-accepted", "batch-processed"} <= set(types(got)))
        await ws.send(orjson.dumps({"type": "telemetry", "records": [{"values": {"n": 1}}]}).decode())
        refused = await receive_until(ws, lambda got: "error" in types(got))
    accepted = next(m for m in first if m["type"] == "upload-accepted")
    assert (accepted["sessionId"], accepted["recordsReceived"], accepted["status"]) == (session_id, 2, "active")
    processed = next(m for m in first if m["type"] == "batch-processed")  # the holder's event, from the broker
    assert processed["batchId"] == accepted["batchId"] and processed["atomsCreated"] == 2
    error = next(m for m in refused if m["type"] == "error")  # the holder's refusal, passed back
    assert error["errorCode"] == "invalid_argument" and error["error"] == "Invalid data format"
    assert error["invalidRecords"][0]["field"] == "timestamp"
    status = (await holder.get(f"{API}/sessions/{session_id}/status", headers=USER)).json()
    assert status["statistics"]["totalRecordsReceived"] == 2


async def test_the_sessions_of_a_worker_slot_that_is_gone_are_taken_over(tmp_path: Path) -> None:
    broker = fresh_url("redis")
    data_dir = tmp_path / "data"
    try:
        with two_workers(data_dir, broker, SLUICEGATE_WORKERS="3") as three:
            await eventually(lambda: _both_up(three, 3), within=30 * UNIT)
            async with _client(three, 2) as third:  # the slot that will be gone
                created = await third.post("/api/races/sessions", json={"stream": "car-3"}, headers=ADMIN)
                race_id = created.json()["id"]
                for lap in range(3):
                    point = {"data": {"lap": lap}, "type": "lap", "platform": "ax"}
                    ack = await third.post("/api/streams/races/car-3/data", params={"secret": AX_SECRET}, json=point)
                    assert ack.status_code == 200, ack.text
                body = {"sessionType": "telemetry", "batchSize": 1000, "maxBatchDelayMs": 60000}
                started = await third.post(f"{API}/sessions/start", json=body, headers=USER)
                session_id = started.json()["sessionId"]
                upload = f"{API}/sessions/{session_id}/upload"
                uploaded = await third.post(upload, json={"records": readings(0, 4)}, headers=USER)
                assert uploaded.status_code == 200, uploaded.text
        # Stopped (the spools stay), and started again with one worker less.
        with two_workers(data_dir, broker) as two:
            await eventually(lambda: _both_up(two), within=30 * UNIT)
            async with httpx.AsyncClient(base_url=two.server.url, timeout=10 * UNIT) as any_worker:
                described = (await any_worker.get(f"/api/races/sessions/{race_id}", headers=ADMIN)).json()
                closed = await any_worker.post(f"/api/races/sessions/{race_id}/close", headers=ADMIN)
                data = await any_worker.get(f"/api/races/sessions/{race_id}/data", headers=ADMIN)
                ended = await any_worker.post(
                    f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True}, headers=USER
                )
                records = await any_worker.get(f"{API}/sessions/{session_id}/records", headers=USER)
            adopted = two.log
    finally:
        await drop(broker)
    assert "worker slot 2 is gone" in adopted
    assert described["data_points"] == 3
    assert closed.status_code == 200, closed.text
    assert [orjson.loads(line)["data"]["lap"] for line in data.content.splitlines()] == [0, 1, 2]
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "completed"
    assert [orjson.loads(line)["values"]["n"] for line in records.content.splitlines()] == [0, 1, 2, 3]
