"""Race data collection against a real server, archiving to a local folder and to S3 (moto)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import orjson
import pytest
import zstandard
from moto.server import ThreadedMotoServer

from tests.e2e.helpers import eventually
from tests.server import UNIT, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.server import Server

ADMIN = {"X-API-Key": "sk-race-admin"}
SECRET = "ax-parser-secret-1"
BASE_ENV = {
    "SLUICEGATE_API_KEYS": "sk-race-admin:admin",
    "SLUICEGATE_AX_PARSER_SECRET": SECRET,
    "SLUICEGATE_RACE_IDLE_SECONDS": "0.3",
    "SLUICEGATE_RACE_RETRY_INITIAL_SECONDS": "0.1",
    "SLUICEGATE_RACE_RETRY_MAX_SECONDS": "0.3",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
BUCKET = "race-archives"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Archives:
    """Reads the archives a server wrote, wherever it wrote them."""

    def __init__(self, kind: str, data_dir: Path | None = None, endpoint: str | None = None) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.endpoint = endpoint

    def env(self) -> dict[str, str]:
        if self.kind == "s3":
            return {"SLUICEGATE_OBJECT_STORE_URL": f"s3://{BUCKET}?endpoint={self.endpoint}&region=us-east-1"}
        return {}

    def keys(self, prefix: str = "races/") -> list[str]:
        if self.kind == "s3":
            client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
            return sorted(item["Key"] for item in listed)
        assert self.data_dir is not None
        root = self.data_dir / "objects"
        return sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and str(p.relative_to(root)).startswith(prefix)
        )

    def lines(self, key: str) -> list[dict[str, Any]]:
        if self.kind == "s3":
            client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
            raw = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        else:
            assert self.data_dir is not None
            raw = (self.data_dir / "objects" / key).read_bytes()
        text = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        return [orjson.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(params=["file", "s3"])
def archives(request: pytest.FixtureRequest, tmp_path: Path) -> Archives:
    if request.param == "s3":
        return Archives("s3", endpoint=request.getfixturevalue("moto"))
    return Archives("file", data_dir=tmp_path / "data")


@pytest.fixture
def server(archives: Archives, tmp_path: Path) -> Iterator[Server]:
    started = start_server(None, tmp_path / "data", {**BASE_ENV, **archives.env()})
    yield started
    started.stop()


async def open_session(client: httpx.AsyncClient, stream: str) -> dict[str, Any]:
    response = await client.post(
        "/api/races/sessions", json={"stream": stream, "metadata": {"track": "spa"}}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def post_point(client: httpx.AsyncClient, stream: str, n: int, secret: str = SECRET) -> httpx.Response:
    return await client.post(
        f"/api/streams/races/{stream}/data",
        params={"secret": secret},
        json={"data": {"lap": n, "speed": 200 + n}, "type": "telemetry", "platform": "acc"},
    )


async def session_state(client: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/api/races/sessions/{session_id}", headers=ADMIN)).json()
    return body


async def test_posts_then_idle_make_one_archive_with_exactly_what_was_posted(
    server: Server, archives: Archives
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        session = await open_session(client, "alice")
        responses = [await post_point(client, "alice", n) for n in range(25)]
        assert [r.json()["data_points"] for r in responses] == list(range(1, 26))
        assert all(r.json()["status"] == "data_received" for r in responses)

        async def archived() -> dict[str, Any] | None:
            state = await session_state(client, session["id"])
            return state if state["archived_keys"] and not state["spooled_points"] else None

        state = await eventually(archived)
    key = f"races/alice/{session['id']}/000001.jsonl.zst"
    assert state["archived_keys"] == [key] and state["data_points"] == 25
    assert archives.keys(f"races/alice/{session['id']}/") == [key]
    lines = archives.lines(key)
    assert [line["data"] for line in lines] == [{"lap": n, "speed": 200 + n} for n in range(25)]
    assert {(line["type"], line["platform"]) for line in lines} == {("telemetry", "acc")}
    assert [line["received_at"] for line in lines] == [r.json()["timestamp"] for r in responses]
    assert list(lines[0]) == ["received_at", "type", "platform", "data"]


async def test_two_idle_periods_give_two_archives_and_read_back_is_in_order(server: Server, archives: Archives) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        session = await open_session(client, "bob")
        for n in range(5):
            await post_point(client, "bob", n)
        await eventually(lambda: _archives_count(client, session["id"], 1))
        for n in range(5, 8):
            await post_point(client, "bob", n)
        await eventually(lambda: _archives_count(client, session["id"], 2))
        await post_point(client, "bob", 8)  # still spooled when read back
        body = (await client.get(f"/api/races/sessions/{session['id']}/data", headers=ADMIN)).text
    keys = [f"races/bob/{session['id']}/{seq:06d}.jsonl.zst" for seq in (1, 2)]
    assert archives.keys(f"races/bob/{session['id']}/") == keys
    assert [line["data"]["lap"] for line in archives.lines(keys[0])] == list(range(5))
    assert [line["data"]["lap"] for line in archives.lines(keys[1])] == [5, 6, 7]
    assert [orjson.loads(line)["data"]["lap"] for line in body.splitlines()] == list(range(9))


async def _archives_count(client: httpx.AsyncClient, session_id: str, count: int) -> bool:
    state = await session_state(client, session_id)
    return len(state["archived_keys"]) == count and state["spooled_points"] == 0


async def test_closing_archives_what_is_spooled_and_refuses_later_data(server: Server, archives: Archives) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        session = await open_session(client, "carol")
        for n in range(3):
            await post_point(client, "carol", n)
        closed = await client.post(f"/api/races/sessions/{session['id']}/close", headers=ADMIN)
        late = await post_point(client, "carol", 99)
        again = await open_session(client, "carol")  # a new session for the same stream
    assert closed.status_code == 200
    assert closed.json()["state"] == "closed" and closed.json()["data_points"] == 3
    assert (late.status_code, late.json()["error"]) == (400, "No session present for the stream ID")
    assert again["id"] != session["id"]
    assert [line["data"]["lap"] for line in archives.lines(closed.json()["archived_keys"][0])] == [0, 1, 2]


@pytest.mark.parametrize("archives", ["file"], indirect=True)
async def test_the_seeds_errors(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        await open_session(client, "dana")
        wrong = await post_point(client, "dana", 1, secret="nope")
        missing_secret = await client.post(
            "/api/streams/races/dana/data", json={"data": 1, "type": "t", "platform": "p"}
        )
        no_session = await post_point(client, "nobody", 1)
        no_field = await client.post(
            "/api/streams/races/dana/data", params={"secret": SECRET}, json={"data": 1, "type": "t"}
        )
        too_big = await client.post(
            "/api/streams/races/dana/data",
            params={"secret": SECRET},
            json={"data": "x" * 2_000_000, "type": "t", "platform": "p"},
        )
        not_json = await client.post("/api/streams/races/dana/data", params={"secret": SECRET}, content=b"{nope")
        duplicate = await client.post("/api/races/sessions", json={"stream": "dana"}, headers=ADMIN)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "Incorrect AX Parser secret")
    assert (missing_secret.status_code, missing_secret.json()["error"]) == (400, "Incorrect AX Parser secret")
    assert (no_session.status_code, no_session.json()["error"]) == (400, "No session present for the stream ID")
    assert no_field.status_code == 400 and no_field.json()["fields"][0]["field"] == "body.platform"
    assert too_big.status_code == 413 and too_big.json()["code"] == "payload_too_large"
    assert not_json.status_code == 400
    assert duplicate.status_code == 409


@pytest.mark.parametrize("archives", ["file"], indirect=True)
@pytest.mark.parametrize("stream", ["..", ".hidden", "a%2F..%2F..%2Fetc", "x y", "a" * 65])
async def test_path_traversal_in_stream_ids_is_rejected(server: Server, archives: Archives, stream: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        created = await client.post("/api/races/sessions", json={"stream": stream.replace("%2F", "/")}, headers=ADMIN)
        posted = await client.post(
            f"/api/streams/races/{stream}/data",
            params={"secret": SECRET},
            json={"data": 1, "type": "t", "platform": "p"},
        )
    assert created.status_code == 400 and created.json()["fields"][0]["field"] == "body.stream"
    assert posted.status_code in (400, 404)  # refused as a stream ID, or no such route at all
    assert archives.keys("") == []


@pytest.mark.parametrize("archives", ["file"], indirect=True)
async def test_sessions_are_admin_only_and_per_tenant(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        session = await open_session(client, "erin")
        anonymous = await client.get(f"/api/races/sessions/{session['id']}")
        unknown = await client.get("/api/races/sessions/" + "0" * 32, headers=ADMIN)
    assert anonymous.status_code == 401
    assert unknown.status_code == 404


async def test_kill_9_before_the_flush_loses_and_duplicates_nothing(archives: Archives, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**BASE_ENV, **archives.env(), "SLUICEGATE_RACE_IDLE_SECONDS": "3600"}
    first = start_server(None, data_dir, env)
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=10 * UNIT) as client:
            session = await open_session(client, "frank")

            async def poster(offset: int) -> list[int]:
                return [(await post_point(client, "frank", offset + n)).status_code for n in range(50)]

            statuses = await asyncio.gather(*(poster(k * 50) for k in range(4)))  # 200 points, 4 at a time
        assert all(code == 200 for codes in statuses for code in codes)
        assert archives.keys(f"races/frank/{session['id']}/") == []  # nothing was flushed yet
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.stop()
    second = start_server(None, data_dir, {**env, "SLUICEGATE_RACE_IDLE_SECONDS": "0.3"})
    try:
        async with httpx.AsyncClient(base_url=second.url, timeout=10 * UNIT) as client:

            async def recovered() -> dict[str, Any] | None:
                state = await session_state(client, session["id"])
                return state if state["archived_keys"] and not state["spooled_points"] else None

            state = await eventually(recovered, within=15 * UNIT)
            followed = await post_point(client, "frank", 1000)  # the session is still open
    finally:
        second.stop()
    assert state["data_points"] == 200 and followed.json()["data_points"] == 201
    keys = archives.keys(f"races/frank/{session['id']}/")
    laps = [line["data"]["lap"] for key in keys for line in archives.lines(key)]
    assert sorted(laps) == list(range(200))  # every acknowledged point, once


async def test_an_s3_outage_during_the_flush_delays_the_archive_but_loses_nothing(tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    down = Archives("s3", endpoint=endpoint)
    server = start_server(None, tmp_path / "data", {**BASE_ENV, **down.env()})
    moto_server: ThreadedMotoServer | None = None
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
            session = await open_session(client, "gina")
            for n in range(10):
                assert (await post_point(client, "gina", n)).status_code == 200

            async def failing() -> dict[str, Any] | None:
                state = await session_state(client, session["id"])
                return state if state["failed_attempts"] >= 2 else None

            state = await eventually(failing, within=10 * UNIT)
            assert state["spooled_points"] == 10 and state["last_error"]
            metrics = (await client.get("/metrics")).text
            assert "sluicegate_race_archive_failures_total" in metrics

            moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto_server.start()
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)

            async def archived() -> dict[str, Any] | None:
                current = await session_state(client, session["id"])
                return current if current["archived_keys"] and not current["spooled_points"] else None

            state = await eventually(archived, within=15 * UNIT)
        assert state["failed_attempts"] == 0 and state["last_error"] is None
        assert [line["data"]["lap"] for line in down.lines(state["archived_keys"][0])] == list(range(10))
    finally:
        server.stop()
        if moto_server is not None:
            moto_server.stop()
