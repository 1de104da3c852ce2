"""Two gateway nodes sharing a broker (Redis, then NATS), PostgreSQL and an S3 endpoint.

Each node is a real server process with its own data folder and no address of its own
that the other knows (there is no ``SLUICEGATE_NODE_URL``); they share nothing but the
servers on loopback, as two machines behind a load balancer would. The broker's server
is also the session log (``SLUICEGATE_LOG_URL`` unset).

Channels, chat and the rate limit run on one pair for the module. Each test that kills
a node with ``kill -9`` and never restarts it gets a pair of its own (:func:`pair`),
with leases of :data:`LEASE` seconds so that a takeover is quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import boto3
import httpx
import orjson
import pytest
import zstandard
from websockets.asyncio.client import connect

from sluicegate.engines.log import default_log_url
from sluicegate.streaming.sse import SSEDecoder, SSEEvent
from tests.brokers import REDIS, drop, fresh_url
from tests.e2e.helpers import eventually, loads, read_events
from tests.logs import drop_log
from tests.s3 import moto_s3
from tests.server import UNIT, start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from tests.server import Server

KEY, ADMIN_KEY = "sk-two-nodes-user", "sk-two-nodes-admin"
AUTH, ADMIN = {"X-API-Key": KEY}, {"X-API-Key": ADMIN_KEY}
#: A tenant of its own for the ingestion tests.
INGESTER = {"X-API-Key": "sk-two-nodes-ingest"}
AX_SECRET = "ax-two-nodes"
#: Requests a minute per tenant on the module's pair (each test's tenant stays under it,
#: but for the one that tests it). Every request is counted once, on the node it reached.
TENANT_LIMIT = 12
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
API = "/api/streaming"

#: Lease seconds on every node: a dead node's sessions are taken over about this long after.
LEASE = 2.0
#: How often a node renews its leases and looks for expired ones (a quarter of the lease).
TICK = LEASE / 4
#: What a takeover may take beyond the lease and a scan: storing a batch, an event's trip.
SLACK = 1.5 * UNIT


@dataclass(frozen=True)
class Database:
    """The module's PostgreSQL database: the nodes' URL, and the tests' own for reading leases."""

    url: str
    dsn: str


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[tuple[str, str]]:
    """A bucket on moto's S3 server on loopback: its ``s3://`` objects URL and its name."""
    with moto_s3() as endpoint:
        bucket = f"two-nodes-{secrets.token_hex(4)}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}?endpoint={endpoint}&region=us-east-1", bucket


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
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
        yield Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", f"{POSTGRES}/{name}")
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Engines:
    """What every node of one broker kind shares: the environment, the database, the bucket."""

    kind: str
    env: dict[str, str]
    database: Database
    bucket: str
    endpoint: str


@pytest.fixture(scope="module", params=["redis", "nats"])
def engines(request: pytest.FixtureRequest, database: Database, s3_bucket: tuple[str, str]) -> Iterator[Engines]:
    kind: str = request.param
    broker = fresh_url(kind)
    objects, bucket = s3_bucket
    env = {
        "SLUICEGATE_API_KEYS": f"{KEY}:user:1,{ADMIN_KEY}:admin:1,sk-two-nodes-ingest:user:2",
        "SLUICEGATE_JWT_SECRET": secrets.token_urlsafe(32),  # the same on every node
        "SLUICEGATE_AX_PARSER_SECRET": AX_SECRET,
        "SLUICEGATE_BROKER_URL": broker,  # and so the session log: SLUICEGATE_LOG_URL is unset
        "SLUICEGATE_DATABASE_URL": database.url,
        "SLUICEGATE_OBJECT_STORE_URL": objects,
        # NATS deployments keep shared counters in Redis (docs/deployment.md).
        "SLUICEGATE_REDIS_URL": REDIS,
        "SLUICEGATE_RATE_LIMIT_KEY_PREFIX": f"sgtest-limits-{secrets.token_hex(4)}",
        "SLUICEGATE_RATE_LIMIT_TENANT": f"{TENANT_LIMIT}/minute",
        "SLUICEGATE_LEASE_SECONDS": str(LEASE),
        "SLUICEGATE_INGEST_WORKERS": "0",  # small uploads only: no process pool to start
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    try:
        yield Engines(kind, env, database, bucket, objects.split("endpoint=")[1].split("&")[0])
    finally:
        asyncio.run(drop(broker))
        asyncio.run(drop_log(default_log_url(broker)))


@dataclass
class Cluster:
    """Two nodes, A and B, on the same shared engines and nothing else."""

    engines: Engines
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    a: Server = field(init=False)
    b: Server = field(init=False)

    def __post_init__(self) -> None:
        with ThreadPoolExecutor(2) as pool:  # both at once: a node takes a second to start
            a, b = pool.submit(self.start, "a"), pool.submit(self.start, "b")
            self.a, self.b = a.result(), b.result()

    @property
    def kind(self) -> str:
        return self.engines.kind

    def start(self, name: str) -> Server:
        folder = self.folder / f"{name}-{secrets.token_hex(2)}"  # a fresh disk: nothing of an earlier node
        return start_server(None, folder, {**self.engines.env, **self.env})

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


def kill(node: Server) -> float:
    """``kill -9``: no shutdown, nothing flushed, leases left to expire. Returns when (monotonic)."""
    node.process.kill()
    killed_at = time.monotonic()
    node.process.wait()
    node.stop()  # collects what it printed
    return killed_at


@pytest.fixture(scope="module")
def cluster(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module's pair, for the tests that kill nothing for good."""
    nodes = Cluster(engines, tmp_path_factory.mktemp(f"two-nodes-{engines.kind}"))
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def pair(engines: Engines, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """A pair of the test's own (``pair(SLUICEGATE_X="1")`` for settings of its own): its A
    may be killed and never come back.

    Its broker (and so its log) is a namespace of its own on the same server: every node on
    the same database and log takes over the sessions of a dead one, and the module's pair
    must not be the one that does. Its tenants have no rate limit worth the name.
    """
    started: list[Cluster] = []
    brokers: list[str] = []

    def start(**env: str) -> Cluster:
        brokers.append(fresh_url(engines.kind))
        own = {
            "SLUICEGATE_BROKER_URL": brokers[-1],
            "SLUICEGATE_RATE_LIMIT_TENANT": "100000/minute",
            "SLUICEGATE_RATE_LIMIT_KEY_PREFIX": f"sgtest-limits-{secrets.token_hex(4)}",
        }
        nodes = Cluster(engines, tmp_path, {**own, **env})
        started.append(nodes)
        return nodes

    try:
        yield start
    finally:
        for nodes in started:
            nodes.stop()
        for broker in brokers:
            asyncio.run(drop(broker))
            asyncio.run(drop_log(default_log_url(broker)))


async def lease_holder(database: Database, kind: str, key: str) -> int | None:
    """The process id of the lease's holder (``host:pid:random``), or ``None`` when no lease is recorded."""
    connection = await asyncpg.connect(database.dsn)
    try:
        holder = await connection.fetchval("SELECT holder FROM leases WHERE kind = $1 AND key = $2", kind, key)
    finally:
        await connection.close()
    return int(holder.split(":")[-2]) if holder is not None else None


async def start_on(client: httpx.AsyncClient, node: Server, database: Database, config: dict[str, Any]) -> Any:
    """Start an ingestion session through ``client`` (a client of ``node``) whose processor runs
    on ``node``. The other node's scan may take a new session's lease between its row and the
    start's own take (any node may process any session): such a one is cancelled, another started."""
    for _ in range(5):
        started = await client.post(f"{API}/sessions/start", json=config)
        assert started.status_code == 200, started.text
        if await lease_holder(database, "ingest", started.json()["sessionId"]) == node.process.pid:
            return started.json()
        assert (await client.post(f"{API}/jobs/{started.json()['jobId']}/cancel")).status_code == 200
    raise AssertionError(f"{node.url} never processed a session it started")


async def open_on(client: httpx.AsyncClient, node: Server, database: Database, stream: str) -> Any:
    """Open the race session of ``stream`` through ``client`` (a client of ``node``), processed
    on ``node`` (as :func:`start_on`; one processed elsewhere is closed, another opened)."""
    for _ in range(5):
        created = await client.post("/api/races/sessions", json={"stream": stream, "metadata": {"car": 7}})
        assert created.status_code == 201, created.text
        if await lease_holder(database, "races", created.json()["id"]) == node.process.pid:
            return created.json()
        assert (await client.post(f"/api/races/sessions/{created.json()['id']}/close")).status_code == 200
    raise AssertionError(f"{node.url} never processed a session it opened")


class Watch:
    """A session's SSE stream on one node, read in the background; each event is noted
    with the moment it arrived."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.seen: list[tuple[float, SSEEvent]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(client, url))

    async def _read(self, client: httpx.AsyncClient, url: str) -> None:
        decoder = SSEDecoder()
        try:
            async with client.stream("GET", url, timeout=httpx.Timeout(10 * UNIT, read=None)) as response:
                assert response.status_code == 200, await response.aread()
                async for chunk in response.aiter_raw():
                    arrived = time.monotonic()
                    events = decoder.feed(chunk)
                    async with self._changed:
                        self.seen.extend((arrived, event) for event in events)
                        self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()

    def named(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, loads(event.data)) for at, event in self.seen if event.event == name]

    async def first(self, name: str, within: float) -> tuple[float, dict[str, Any]]:
        """When the first event ``name`` arrived, and its data."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: bool(self.named(name)) or self._task.done())
        found = self.named(name)
        if not found:
            await self._task  # it ended: say why
            raise AssertionError(f"the stream ended without {name!r}: {[e.event for _, e in self.seen]}")
        return found[0]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(client: httpx.AsyncClient, url: str) -> AsyncIterator[Watch]:
    watch = Watch(client, url)
    try:
        yield watch
    finally:
        await watch.close()


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


# -- channels, chat and limits: any node, the same answers -------------------------------


async def test_both_nodes_are_ready_on_the_shared_engines(cluster: Cluster) -> None:
    for node in (cluster.a, cluster.b):
        async with httpx.AsyncClient(base_url=node.url) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["engines"].values()) == {"ok"}
        assert "SLUICEGATE_NODE_URL" not in node.log  # not set, so not warned about


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
    # TENANT_LIMIT requests a minute per tenant, wherever they land: each counted once, where it arrives.
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
    kill(cluster.a)
    try:
        async with httpx.AsyncClient(base_url=cluster.b.url, timeout=10 * UNIT) as client:
            page = (await client.get(f"/api/channels/{channel}/history", params={"limit": 100}, headers=AUTH)).json()
    finally:
        cluster.a = cluster.start("a")  # a fresh node for the module's next tests
    assert [m["position"] for m in page["messages"]] == positions
    assert [m["data"]["n"] for m in page["messages"]] == list(range(20))


# -- ingestion: a session outlives the node that started it ------------------------------


def telemetry(n: int) -> dict[str, Any]:
    return {"timestamp": f"2026-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z", "values": {"n": n}}


def size_of(records: list[dict[str, Any]]) -> int:
    """dataReceivedBytes: the records' canonical bytes (orjson's, as sent), one line each."""
    return sum(len(orjson.dumps(record)) + 1 for record in records)


def final_hash(records: list[dict[str, Any]]) -> str:
    """The job's finalHash: SHA-256 over each record's SHA-256, in the order the log acknowledged them."""
    return hashlib.sha256(b"".join(hashlib.sha256(orjson.dumps(r)).digest() for r in records)).hexdigest()


def batch(seq: int, session_id: str) -> str:
    return f"batch-{seq:03d}-{session_id[-6:]}"


async def test_a_session_started_on_a_is_taken_over_by_b_when_a_is_killed_and_loses_nothing(
    pair: Callable[..., Cluster], engines: Engines
) -> None:
    nodes = pair()
    # 30 records make a batch; the delay never cuts one. A sees only 20 records: it cannot
    # cut anything, so the first batch is cut, stored and announced by B, once it has A's lease.
    config = {"sessionType": "telemetry", "batchSize": 30, "maxBatchDelayMs": 600_000}
    before_kill = [telemetry(n) for n in range(0, 20, 2)], [telemetry(n) for n in range(1, 20, 2)]
    after_kill = [telemetry(n) for n in range(29, 19, -1)], [telemetry(n) for n in range(30, 40)]
    acknowledged = [*before_kill[0], *before_kill[1], *after_kill[0], *after_kill[1]]  # the log's order
    async with (
        httpx.AsyncClient(base_url=nodes.a.url, headers=INGESTER, timeout=10 * UNIT) as on_a,
        httpx.AsyncClient(base_url=nodes.b.url, headers=INGESTER, timeout=10 * UNIT) as on_b,
    ):
        started = await start_on(on_a, nodes.a, engines.database, config)
        session_id, job_id = started["sessionId"], started["jobId"]
        url = f"{API}/sessions/{session_id}"
        async with watching(on_b, f"{url}/events") as events:
            await events.first("session-started", within=5 * UNIT)
            answers = [
                (await on_a.post(f"{url}/upload", json={"records": before_kill[0]})),
                (await on_b.post(f"{url}/upload", json={"records": before_kill[1]})),
            ]
            statuses = [(await client.get(f"{url}/status")).json() for client in (on_a, on_b)]
            killed_at = kill(nodes.a)
            answers.append(await on_b.post(f"{url}/upload", json={"records": after_kill[0]}))  # A's lease holds yet
            taken_at, first = await events.first("batch-processed", within=LEASE + TICK + 2 * SLACK)
            holder = await lease_holder(engines.database, "ingest", session_id)
            taken_over = (await on_b.get(f"{url}/status")).json()
            answers.append(await on_b.post(f"{url}/upload", json={"records": after_kill[1]}))
            ended = await on_b.post(f"{url}/end", json={"waitForCompletion": True, "timeoutMs": 20_000})
            job = (await on_b.get(f"{API}/jobs/{job_id}/status")).json()
            records = await on_b.get(f"{url}/records")
            await events.first("session-completed", within=5 * UNIT)
            processed = [data for _, data in events.named("batch-processed")]

    for answer in answers:
        assert answer.status_code == 200, answer.text
    assert [
        (a["recordsReceived"], a["recordsQueued"], a["batchId"], a["status"]) for a in (r.json() for r in answers)
    ] == [
        (10, 10, batch(1, session_id), "active"),
        (10, 10, batch(1, session_id), "active"),
        (10, 10, batch(1, session_id), "active"),
        (10, 10, batch(2, session_id), "active"),  # its first record is the 31st
    ]
    for status in statuses:  # the same on A and on B, before the kill: nothing cut yet
        stats = status["statistics"]
        assert (stats["totalRecordsReceived"], stats["recordsQueued"], stats["dataReceivedBytes"]) == (
            20,
            20,
            size_of(acknowledged[:20]),
        )
        assert (stats["totalBatchesReceived"], stats["totalAtomsCreated"]) == (0, 0)
    took = taken_at - killed_at
    # A renewed its lease at most a tick before it died; B looks every tick after it expired.
    assert LEASE - TICK - 0.5 <= took <= LEASE + TICK + SLACK, f"B processed the session {took:.2f}s after the kill"
    assert holder == nodes.b.process.pid
    assert (first["batchId"], first["atomsCreated"]) == (batch(1, session_id), 30)
    assert (taken_over["statistics"]["totalRecordsReceived"], taken_over["statistics"]["totalAtomsCreated"]) == (30, 30)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "completed"
    final = ended.json()["finalStatistics"]
    assert (final["totalRecordsReceived"], final["totalBatchesReceived"], final["totalAtomsCreated"]) == (40, 2, 40)
    assert [(p["batchId"], p["atomsCreated"]) for p in processed] == [
        (batch(1, session_id), 30),
        (batch(2, session_id), 10),
    ]
    assert job["status"] == "completed"
    assert job["result"]["atomsCreated"] == 40
    assert job["result"]["finalHash"] == final_hash(acknowledged)  # each acknowledged record once, in order
    assert records.status_code == 200, records.text
    assert [orjson.loads(line) for line in records.content.splitlines()] == [telemetry(n) for n in range(40)]


async def test_a_session_whose_node_died_is_expired_by_the_survivor_after_its_ttl(
    pair: Callable[..., Cluster], engines: Engines
) -> None:
    ttl = 3.0
    nodes = pair(SLUICEGATE_INGEST_SESSION_TTL_SECONDS=str(ttl))
    config = {"sessionType": "telemetry", "batchSize": 1000, "maxBatchDelayMs": 600_000}
    async with (
        httpx.AsyncClient(base_url=nodes.a.url, headers=INGESTER, timeout=10 * UNIT) as on_a,
        httpx.AsyncClient(base_url=nodes.b.url, headers=INGESTER, timeout=10 * UNIT) as on_b,
    ):
        started = await start_on(on_a, nodes.a, engines.database, config)
        session_id, job_id = started["sessionId"], started["jobId"]
        url = f"{API}/sessions/{session_id}"
        async with watching(on_b, f"{url}/events") as events:
            uploaded = await on_b.post(f"{url}/upload", json={"records": [telemetry(n) for n in range(5)]})
            assert uploaded.status_code == 200, uploaded.text
            last_active = (await on_b.get(f"{url}/status")).json()["lastActivityAt"]
            assert await lease_holder(engines.database, "ingest", session_id) == nodes.a.process.pid  # still
            kill(nodes.a)

            _, cancelled = await events.first("session-cancelled", within=LEASE + TICK + ttl + 2 * SLACK)
        status = (await on_b.get(f"{url}/status")).json()
        job = (await on_b.get(f"{API}/jobs/{job_id}/status")).json()
        refused = await on_b.post(f"{url}/upload", json={"records": [telemetry(5)]})
    assert status["status"] == "cancelled"
    assert status["statistics"]["totalRecordsReceived"] == 5
    assert job["status"] == "cancelled"
    assert job["error"]["code"] == "SESSION_EXPIRED"
    assert job["partialResult"]["atomsCreated"] == 0
    idle = _time(job["cancelledAt"]) - _time(last_active)
    assert idle >= ttl, f"expired after {idle:.2f}s idle"
    assert (cancelled["sessionId"], cancelled["reason"]) == (session_id, "SESSION_EXPIRED")
    assert refused.status_code == 409, refused.text


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- race collection: a stream outlives the node that opened its session -----------------


def race_point(lap: int) -> dict[str, Any]:
    return {"data": {"lap": lap}, "type": "lap", "platform": "ax"}


async def post_points(nodes: list[httpx.AsyncClient], stream: str, laps: range) -> dict[int, int]:
    """Post each lap to the node ``lap % len(nodes)``, all at once; returns data_points -> lap."""

    async def post(lap: int) -> tuple[int, int]:
        client = nodes[lap % len(nodes)]
        ack = await client.post(f"/api/streams/races/{stream}/data", params={"secret": AX_SECRET}, json=race_point(lap))
        assert ack.status_code == 200, ack.text
        return ack.json()["data_points"], lap

    return dict(await asyncio.gather(*(post(lap) for lap in laps)))


async def test_a_race_stream_outlives_the_node_that_opened_it_and_every_point_is_archived_once(
    pair: Callable[..., Cluster], engines: Engines
) -> None:
    nodes = pair(SLUICEGATE_RACE_IDLE_SECONDS="1")
    stream = f"car-{engines.kind}-{secrets.token_hex(2)}"
    stages: list[dict[int, int]] = []  # each stage's answers: data_points -> lap
    async with (
        httpx.AsyncClient(base_url=nodes.a.url, headers=ADMIN, timeout=10 * UNIT) as on_a,
        httpx.AsyncClient(base_url=nodes.b.url, headers=ADMIN, timeout=10 * UNIT) as on_b,
    ):
        session_id = (await open_on(on_a, nodes.a, engines.database, stream))["id"]
        url = f"/api/races/sessions/{session_id}"
        stages.append(await post_points([on_a, on_b], stream, range(10)))

        async def archived_by_a() -> dict[str, Any] | None:
            described: dict[str, Any] = (await on_b.get(url)).json()
            return described if described["archived_keys"] else None

        first = await eventually(archived_by_a, within=5 * UNIT)  # idle for a second: A archives
        stages.append(await post_points([on_a, on_b], stream, range(10, 20)))
        described = [(await client.get(url)).json() for client in (on_a, on_b)]
        kill(nodes.a)
        stages.append(await post_points([on_b], stream, range(20, 30)))  # taken before B holds the session
        after_kill = (await on_b.get(url)).json()
        closed = await on_b.post(f"{url}/close")
        data = await on_b.get(f"{url}/data")
        again = await on_b.post("/api/races/sessions", json={"stream": stream})
        next_ack = await post_points([on_b], stream, range(1))
        assert (await on_b.post(f"/api/races/sessions/{again.json()['id']}/close")).status_code == 200
    archives = await asyncio.to_thread(_archives, engines, f"races/{stream}/{session_id}/")

    # One count over both nodes: every answer its own number, each stage's following the last.
    assert [sorted(stage) for stage in stages] == [list(range(1, 11)), list(range(11, 21)), list(range(21, 31))]
    acks = {n: lap for stage in stages for n, lap in stage.items()}
    assert (first["data_points"], first["spooled_points"]) == (10, 0)
    assert first["archived_keys"] == [f"races/{stream}/{session_id}/000001.jsonl.zst"]
    for seen in described:  # the same on A and on B
        assert (seen["data_points"], seen["spooled_points"], seen["archived_keys"]) == (20, 10, first["archived_keys"])
    assert after_kill["data_points"] == 30
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert (body["state"], body["data_points"], body["spooled_points"]) == ("closed", 30, 0)
    keys = body["archived_keys"]
    # A's (points 1 to 10), then B's: the rest, posted before and after A died, archived at the close.
    assert keys == [f"races/{stream}/{session_id}/{seq:06d}.jsonl.zst" for seq in (1, 2)]
    assert sorted(archives) == keys  # nothing else was written
    in_order = [acks[n] for n in range(1, 31)]
    lines = [orjson.loads(line) for key in keys for line in archives[key]]
    assert [line["data"]["lap"] for line in lines] == in_order  # each point once, in the log's order
    assert [orjson.loads(line) for line in data.content.splitlines()] == lines
    assert again.status_code == 201, again.text
    assert again.json()["id"] != session_id
    assert list(next_ack) == [1]


def _archives(engines: Engines, prefix: str) -> dict[str, list[bytes]]:
    """Every object under ``prefix`` in the bucket, as its lines."""
    client = boto3.client("s3", endpoint_url=engines.endpoint, region_name="us-east-1")
    listed = client.list_objects_v2(Bucket=engines.bucket, Prefix=prefix).get("Contents", [])
    found = {}
    for item in listed:
        raw = client.get_object(Bucket=engines.bucket, Key=item["Key"])["Body"].read()
        found[item["Key"]] = zstandard.ZstdDecompressor().decompressobj().decompress(raw).splitlines()
    return found
