"""Two gateway nodes sharing a broker (Redis, then NATS), PostgreSQL and an S3 endpoint.

Each node is a real server process with its own data folder; they share nothing but
the servers on loopback, as two machines behind a load balancer would.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.brokers import REDIS, drop, fresh_url
from tests.e2e.helpers import eventually, loads, read_events
from tests.s3 import free_port, moto_s3
from tests.server import UNIT, start_server

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from tests.server import Server

KEY, ADMIN_KEY = "sk-two-nodes-user", "sk-two-nodes-admin"
AUTH, ADMIN = {"X-API-Key": KEY}, {"X-API-Key": ADMIN_KEY}
#: A tenant of its own for each ingestion test, so that each counts its own requests.
INGESTER, SURVIVOR = {"X-API-Key": "sk-two-nodes-ingest"}, {"X-API-Key": "sk-two-nodes-survivor"}
AX_SECRET = "ax-two-nodes"
#: Requests a minute per tenant (each test's tenant stays under it, but for the one that tests it).
TENANT_LIMIT = 12
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[str]:
    """A bucket on moto's S3 server on loopback, as an ``s3://`` objects URL."""
    import boto3

    with moto_s3() as endpoint:
        bucket = f"two-nodes-{secrets.token_hex(4)}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}?endpoint={endpoint}&region=us-east-1"


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the module, dropped afterwards."""
    name = f"sg_two_nodes_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Cluster:
    """Two nodes, A and B, on the same shared engines, each on a port of its own that the
    other reaches it at (``SLUICEGATE_NODE_URL``)."""

    def __init__(self, kind: str, env: dict[str, str], folder: Path) -> None:
        self.kind = kind
        self.env = env
        self.folder = folder
        self.ports = {"a": free_port(), "b": free_port()}
        self.a = self.start("a")
        self.b = self.start("b")

    def start(self, name: str) -> Server:
        port = self.ports[name]
        env = {**self.env, "SLUICEGATE_NODE_URL": f"http://127.0.0.1:{port}"}
        return start_server(None, self.folder / name, env, args=("--port", str(port)))

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module", params=["redis", "nats"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str, s3_bucket: str
) -> Iterator[Cluster]:
    kind: str = request.param
    broker = fresh_url(kind)
    limits = f"sgtest-limits-{secrets.token_hex(4)}"
    env = {
        "SLUICEGATE_API_KEYS": f"{KEY}:user:1,{ADMIN_KEY}:admin:1,"
        "sk-two-nodes-ingest:user:2,sk-two-nodes-survivor:user:3",
        "SLUICEGATE_JWT_SECRET": secrets.token_urlsafe(32),  # the same on every node
        "SLUICEGATE_AX_PARSER_SECRET": AX_SECRET,
        "SLUICEGATE_BROKER_URL": broker,
        "SLUICEGATE_DATABASE_URL": postgres_url,
        "SLUICEGATE_OBJECT_STORE_URL": s3_bucket,
        # NATS deployments keep shared counters in Redis (docs/deployment.md).
        "SLUICEGATE_REDIS_URL": REDIS,
        "SLUICEGATE_RATE_LIMIT_KEY_PREFIX": limits,
        "SLUICEGATE_RATE_LIMIT_TENANT": f"{TENANT_LIMIT}/minute",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    nodes = Cluster(kind, env, tmp_path_factory.mktemp(f"two-nodes-{kind}"))
    try:
        yield nodes
    finally:
        nodes.stop()
        asyncio.run(drop(broker))


async def publish(node: Server, channel: str, value: Any) -> str:
    async with httpx.AsyncClient(base_url=node.url, timeout=10 * UNIT) as client:
        response = await client.post(f"/api/channels/{channel}/messages", json=value, headers=AUTH)
    assert response.status_code == 201, response.text
    position: str = response.json()["position"]
    return position


async def subscribed(node: Server, channel: str, count: int) -> bool:
    async with httpx.AsyncClient(base_url=node.url) as client:
        listed = (await client.get("/api/channels", headers=AUTH)).json()["channels"]
    return any(c["name"] == channel and c["subscribers"] == count for c in listed)


async def test_both_nodes_are_ready_on_the_shared_engines(cluster: Cluster) -> None:
    for node in (cluster.a, cluster.b):
        async with httpx.AsyncClient(base_url=node.url) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["engines"].values()) == {"ok"}


async def test_a_message_published_on_a_reaches_sse_and_websocket_subscribers_on_b(cluster: Cluster) -> None:
    channel = f"news-{cluster.kind}"
    async with (
        httpx.AsyncClient(base_url=cluster.b.url, timeout=10 * UNIT) as client,
        connect(f"{cluster.b.ws_url}/api/channels/{channel}/ws", additional_headers=AUTH) as ws,
    ):
        reading = asyncio.create_task(read_events(client, f"/api/channels/{channel}/events", 3, headers=AUTH))
        await eventually(lambda: subscribed(cluster.b, channel, 2))
        positions = [await publish(cluster.a, channel, {"n": n}) for n in range(2)]
        async with connect(f"{cluster.a.ws_url}/api/channels/{channel}/ws", additional_headers=AUTH) as on_a:
            await on_a.send('{"n": 2}')  # published through A's WebSocket this time
            ack = next(f for f in [loads(await on_a.recv()) for _ in range(2)] if f["type"] == "ack")
        positions.append(ack["position"])
        events = await reading
        frames = [loads(await ws.recv()) for _ in range(3)]
    assert [e.id for e in events] == positions
    assert [loads(e.data) for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [(f["position"], f["data"]) for f in frames] == [(p, {"n": n}) for n, p in enumerate(positions)]


async def test_a_subscriber_moving_from_a_to_b_resumes_and_loses_nothing(cluster: Cluster) -> None:
    channel = f"moving-{cluster.kind}"
    async with httpx.AsyncClient(base_url=cluster.a.url, timeout=10 * UNIT) as on_a:
        reading = asyncio.create_task(read_events(on_a, f"/api/channels/{channel}/events", 3, headers=AUTH))
        await eventually(lambda: subscribed(cluster.a, channel, 1))
        for n in range(3):
            await publish(cluster.a, channel, {"n": n})
        first = await reading  # the connection to A drops here
    for n in range(3, 8):  # published on both nodes while the client is away
        await publish(cluster.a if n % 2 else cluster.b, channel, {"n": n})
    async with httpx.AsyncClient(base_url=cluster.b.url, timeout=10 * UNIT) as on_b:
        headers = {**AUTH, "Last-Event-ID": first[-1].id or ""}
        rest = await read_events(on_b, f"/api/channels/{channel}/events", 5, headers=headers)
    assert [e.event for e in rest] == ["message"] * 5  # no gap
    assert [loads(e.data)["n"] for e in first + rest] == list(range(8))


async def test_challenge_chat_posted_on_b_streams_from_a(cluster: Cluster) -> None:
    name = f"relay-{cluster.kind}"
    async with (
        httpx.AsyncClient(base_url=cluster.a.url, timeout=10 * UNIT) as on_a,
        httpx.AsyncClient(base_url=cluster.b.url, timeout=10 * UNIT) as on_b,
    ):
        created = await on_a.post("/api/challenges", json={"name": name, "status": "active"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        stream = f"/api/streams/challenge-chat?name={name}"
        reading = asyncio.create_task(read_events(on_a, stream, 2))
        # connectedClients counts the clients of the node asked (docs/deployment.md)
        await eventually(async_equals(on_a, f"/api/challenges/{name}", "connectedClients", 1))
        sent = await on_b.post(f"/api/challenges/{name}/chat", json={"author": "b", "text": "from b"}, headers=AUTH)
        assert sent.status_code == 201, sent.text
        events = await reading
    assert loads(events[0].data)["type"] == "connection"
    message = loads(events[1].data)
    assert message["type"] == "message"
    assert (message["message"]["author"], message["message"]["text"]) == ("b", "from b")


def async_equals(client: httpx.AsyncClient, url: str, field: str, value: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool((await client.get(url)).json().get(field) == value)

    return check


async def test_the_tenant_limit_is_counted_across_both_nodes(cluster: Cluster) -> None:
    # TENANT_LIMIT requests a minute per tenant, wherever they land.
    statuses = []
    for n in range(TENANT_LIMIT + 1):
        node = cluster.a if n % 2 else cluster.b
        async with httpx.AsyncClient(base_url=node.url, timeout=10 * UNIT) as client:
            response = await client.get("/api/streaming/dlq", headers=AUTH)
        statuses.append(response.status_code)
    assert statuses == [200] * TENANT_LIMIT + [429], statuses


async def test_killing_node_a_loses_no_acknowledged_message(cluster: Cluster) -> None:
    channel = f"durable-{cluster.kind}"
    positions = [await publish(cluster.a, channel, {"n": n}) for n in range(20)]
    cluster.a.process.kill()  # kill -9: no shutdown, nothing flushed
    cluster.a.process.wait()
    cluster.a.stop()  # collects what it printed
    async with httpx.AsyncClient(base_url=cluster.b.url, timeout=10 * UNIT) as client:
        page = (await client.get(f"/api/channels/{channel}/history", params={"limit": 100}, headers=AUTH)).json()
    assert [m["position"] for m in page["messages"]] == positions
    assert [m["data"]["n"] for m in page["messages"]] == list(range(20))
    cluster.a = cluster.start("a")  # back for the next test


# -- ingestion sessions: held by the node that started them, reachable through any ------------

API = "/api/streaming"


def readings(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"timestamp": f"2026-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z", "values": {"n": n}}
        for n in range(first, first + count)
    ]


async def test_a_session_started_on_a_takes_uploads_and_ends_through_b(cluster: Cluster) -> None:
    # Every request here is tenant-limited: 11 or 12 of them, under TENANT_LIMIT (12) only if
    # those B passes on to A (9 of them) count once.
    async with (
        httpx.AsyncClient(base_url=cluster.a.url, headers=INGESTER, timeout=10 * UNIT) as on_a,
        httpx.AsyncClient(base_url=cluster.b.url, headers=INGESTER, timeout=10 * UNIT) as on_b,
    ):
        started = await on_a.post(f"{API}/sessions/start", json={"sessionType": "telemetry", "batchSize": 5})
        assert started.status_code == 200, started.text
        session_id, job_id = started.json()["sessionId"], started.json()["jobId"]
        reading = asyncio.create_task(read_events(on_b, f"{API}/sessions/{session_id}/events", 5))
        sent = readings(0, 10)
        for part in (sent[:5], sent[5:]):
            uploaded = await on_b.post(f"{API}/sessions/{session_id}/upload", json={"records": part})
            assert uploaded.status_code == 200, uploaded.text
            assert uploaded.json()["recordsReceived"] == 5
        for _ in range(5):  # each is passed on to A: counted twice, these would pass the limit
            status = (await on_b.get(f"{API}/sessions/{session_id}/status")).json()
        ended = await on_b.post(f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True})
        job = (await on_b.get(f"{API}/jobs/{job_id}/status")).json()
        records = await on_b.get(f"{API}/sessions/{session_id}/records")
        events = await reading
    assert status["statistics"]["totalRecordsReceived"] == 10
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "completed"
    assert ended.json()["finalStatistics"]["totalAtomsCreated"] == 10
    assert job["status"] == "completed"
    assert [orjson.loads(line)["values"]["n"] for line in records.content.splitlines()] == list(range(10))
    assert events[0].event == "session-started"  # streamed from B, held by A
    assert {"batch-received", "batch-processed"} <= {e.event for e in events}


async def test_killing_the_holder_loses_no_acknowledged_upload(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.b.url, headers=SURVIVOR, timeout=10 * UNIT) as on_b:
        async with httpx.AsyncClient(base_url=cluster.a.url, headers=SURVIVOR, timeout=10 * UNIT) as on_a:
            started = await on_a.post(
                f"{API}/sessions/start", json={"sessionType": "telemetry", "batchSize": 1000, "maxBatchDelayMs": 60000}
            )
        session_id = started.json()["sessionId"]
        sent = readings(0, 20)
        uploaded = await on_b.post(f"{API}/sessions/{session_id}/upload", json={"records": sent})
        assert uploaded.status_code == 200, uploaded.text  # acknowledged: durable on A
        cluster.a.process.kill()  # kill -9 before A batched anything
        cluster.a.process.wait()
        cluster.a.stop()
        unreachable = await on_b.post(f"{API}/sessions/{session_id}/upload", json={"records": readings(20, 1)})
        cluster.a = cluster.start("a")  # A comes back at the same address and recovers its spool
        ended = await on_b.post(f"{API}/sessions/{session_id}/end", json={"waitForCompletion": True})
        records = await on_b.get(f"{API}/sessions/{session_id}/records")
    assert unreachable.status_code == 503, unreachable.text
    assert "retry" in unreachable.json()["error"]
    assert ended.status_code == 200, ended.text
    assert records.status_code == 200, records.text
    assert [orjson.loads(line)["values"]["n"] for line in records.content.splitlines()] == list(range(20)), records.text


# -- race collection: held by the node that opened the session, fed through any --------------


async def test_race_data_posted_to_b_is_collected_by_the_session_a_holds(cluster: Cluster) -> None:
    stream = f"car-{cluster.kind}"
    async with (
        httpx.AsyncClient(base_url=cluster.a.url, headers=ADMIN, timeout=10 * UNIT) as on_a,
        httpx.AsyncClient(base_url=cluster.b.url, headers=ADMIN, timeout=10 * UNIT) as on_b,
    ):
        created = await on_a.post("/api/races/sessions", json={"stream": stream, "metadata": {"car": 7}})
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        acks = []
        for lap in range(5):
            point = {"data": {"lap": lap}, "type": "lap", "platform": "ax"}
            ack = await on_b.post(f"/api/streams/races/{stream}/data", params={"secret": AX_SECRET}, json=point)
            assert ack.status_code == 200, ack.text
            acks.append(ack.json()["data_points"])
        described = (await on_b.get(f"/api/races/sessions/{session_id}")).json()
        closed = await on_b.post(f"/api/races/sessions/{session_id}/close")
        data = await on_b.get(f"/api/races/sessions/{session_id}/data")
    assert acks == [1, 2, 3, 4, 5]  # counted by the one session, on A
    assert (described["data_points"], described["spooled_points"]) == (5, 5)
    assert closed.status_code == 200, closed.text
    assert closed.json()["archived_keys"] == [f"races/{stream}/{session_id}/000001.jsonl.zst"]
    assert [orjson.loads(line)["data"]["lap"] for line in data.content.splitlines()] == list(range(5))
