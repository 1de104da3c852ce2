"""Challenge chat, as the first seed describes it, against a real server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.helpers import RawSSEClient, eventually, loads, read_events
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.server import Server

ADMIN, USER = {"X-API-Key": "sk-chal-admin"}, {"X-API-Key": "sk-chal-user"}
ENV = {"SLUICEGATE_API_KEYS": "sk-chal-admin:admin,sk-chal-user:user"}


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server]) -> Server:
    return serve_module(None, **ENV)


async def create(client: httpx.AsyncClient, name: str, status: str = "active") -> dict[str, Any]:
    response = await client.post("/api/challenges", json={"name": name, "status": status}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def connected(client: httpx.AsyncClient, name: str, count: int) -> bool:
    return bool((await client.get(f"/api/challenges/{name}")).json()["connectedClients"] == count)


async def test_chat_stream_sends_a_connection_event_then_each_message(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        await create(client, "marathon")
        reading = asyncio.create_task(read_events(client, "/api/streams/challenge-chat?name=marathon", 3))
        await eventually(lambda: connected(client, "marathon", 1))
        posted = []
        for author, text in (("ann", "ready?"), ("bob", "go!")):
            response = await client.post(
                "/api/challenges/marathon/chat", json={"author": author, "text": text}, headers=USER
            )
            assert response.status_code == 201
            posted.append(response.json())
        events = await reading
    first, *messages = [loads(e.data) for e in events]
    assert first["type"] == "connection" and "marathon" in first["message"]
    assert all(e.event == "message" for e in events)  # unnamed data-only events, as in the seed
    assert [m["type"] for m in messages] == ["message", "message"]
    assert [(m["message"]["author"], m["message"]["text"]) for m in messages] == [("ann", "ready?"), ("bob", "go!")]
    assert [m["message"]["id"] for m in messages] == [p["id"] for p in posted]
    assert [e.id for e in events[1:]] == [p["position"] for p in posted]


async def test_stream_has_sse_headers_and_needs_no_authentication(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        await create(client, "open-door")
        async with client.stream("GET", "/api/streams/challenge-chat", params={"name": "open-door"}) as response:
            headers = response.headers
            status = response.status_code
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert "no-cache" in headers["cache-control"]


async def test_unknown_and_inactive_challenges_are_distinct_404s(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        await create(client, "later", status="upcoming")
        unknown = await client.get("/api/streams/challenge-chat", params={"name": "nope"})
        inactive = await client.get("/api/streams/challenge-chat", params={"name": "later"})
        missing = await client.get("/api/streams/challenge-chat")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "Challenge not found")
    assert (inactive.status_code, inactive.json()["error"]) == (404, "Challenge is not active")
    assert missing.status_code == 400 and missing.json()["fields"][0]["field"] == "name"


async def test_client_leaves_the_connected_set_when_it_closes(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        await create(client, "lobby")
        watcher = RawSSEClient(server.host, server.port, "/api/streams/challenge-chat?name=lobby", {})
        assert await watcher.open() == 200
        await eventually(lambda: connected(client, "lobby", 1))
        watcher.close()
        await eventually(lambda: connected(client, "lobby", 0))


async def test_ending_a_challenge_sends_a_last_event_and_closes_every_stream(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        await create(client, "finale")
        watchers = [
            asyncio.create_task(read_events(client, "/api/streams/challenge-chat?name=finale", 10)) for _ in range(3)
        ]
        await eventually(lambda: connected(client, "finale", 3))
        ended = await client.patch("/api/challenges/finale", json={"status": "ended"}, headers=ADMIN)
        streams = await asyncio.wait_for(asyncio.gather(*watchers), 5 * UNIT)  # each ends by itself
        late = await client.post("/api/challenges/finale/chat", json={"author": "x", "text": "y"}, headers=USER)
        again = await client.get("/api/streams/challenge-chat", params={"name": "finale"})
    assert ended.json()["status"] == "ended"
    for events in streams:
        assert [loads(e.data)["type"] for e in events] == ["connection", "ended"]
    assert late.status_code == 400 and late.json()["error"] == "Challenge is not active"
    assert again.status_code == 404


async def test_a_reconnecting_client_resumes_the_chat(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        await create(client, "relay")
        first = await client.post("/api/challenges/relay/chat", json={"author": "a", "text": "one"}, headers=USER)
        await client.post("/api/challenges/relay/chat", json={"author": "a", "text": "two"}, headers=USER)
        headers = {"Last-Event-ID": first.json()["position"]}
        events = await read_events(client, "/api/streams/challenge-chat?name=relay", 2, headers=headers)
    assert [loads(e.data)["type"] for e in events] == ["connection", "message"]
    assert loads(events[1].data)["message"]["text"] == "two"


async def test_managing_challenges_needs_an_admin_key_and_valid_input(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        as_user = await client.post("/api/challenges", json={"name": "x1"}, headers=USER)
        no_key = await client.post("/api/challenges", json={"name": "x1"})
        bad_status = await client.post("/api/challenges", json={"name": "x2", "status": "paused"}, headers=ADMIN)
        await create(client, "dup")
        duplicate = await client.post("/api/challenges", json={"name": "dup"}, headers=ADMIN)
        patch_unknown = await client.patch("/api/challenges/ghost", json={"status": "active"}, headers=ADMIN)
        chat_unknown = await client.post("/api/challenges/ghost/chat", json={"author": "a", "text": "b"}, headers=USER)
        chat_no_key = await client.post("/api/challenges/dup/chat", json={"author": "a", "text": "b"})
        chat_empty = await client.post("/api/challenges/dup/chat", json={"author": "a", "text": ""}, headers=USER)
    assert (as_user.status_code, as_user.json()["error"]) == (403, "Forbidden: admin API key required.")
    assert (no_key.status_code, no_key.json()["error"]) == (401, "Unauthorized: API key is missing.")
    assert bad_status.status_code == 400 and bad_status.json()["fields"][0]["field"] == "body.status"
    assert duplicate.status_code == 409
    assert patch_unknown.status_code == 404 and chat_unknown.status_code == 404
    assert chat_no_key.status_code == 401
    assert chat_empty.status_code == 400 and chat_empty.json()["fields"][0]["field"] == "body.text"


async def test_challenges_survive_a_restart(tmp_path: Any) -> None:
    from tests.server import start_server

    first = start_server(None, tmp_path, ENV)
    try:
        async with httpx.AsyncClient(base_url=first.url) as client:
            await create(client, "durable")
            await client.post("/api/challenges/durable/chat", json={"author": "a", "text": "kept"}, headers=USER)
    finally:
        first.stop()
    second = start_server(None, tmp_path, ENV)
    try:
        async with httpx.AsyncClient(base_url=second.url) as client:
            challenge = (await client.get("/api/challenges/durable")).json()
    finally:
        second.stop()
    assert challenge["status"] == "active"
