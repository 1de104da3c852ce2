"""Native channels against a real server: ordering, resume, gaps, slow consumers, tenants."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.helpers import RawSSEClient, eventually, loads, read_events
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.server import Server

KEY, OTHER_TENANT_KEY = "sk-chan-user-1", "sk-chan-tenant9"
ENV = {"SLUICEGATE_API_KEYS": f"{KEY}:user,{OTHER_TENANT_KEY}:user:9"}
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server]) -> Server:
    return serve_module(None, SLUICEGATE_CHANNEL_HISTORY_SIZE="50", **ENV)


async def publish(client: httpx.AsyncClient, channel: str, value: Any, headers: dict[str, str] = AUTH) -> str:
    response = await client.post(f"/api/channels/{channel}/messages", json=value, headers=headers)
    assert response.status_code == 201, response.text
    position: str = response.json()["position"]
    return position


async def test_subscribers_get_every_message_in_publish_order(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        reading = asyncio.create_task(read_events(client, "/api/channels/order/events", 40, headers=AUTH))
        await eventually(lambda: _subscribers(client, "order", 1))
        positions = [await publish(client, "order", {"n": n}) for n in range(40)]
        events = await reading
    assert [loads(e.data)["n"] for e in events] == list(range(40))
    assert [e.id for e in events] == positions
    assert len(set(positions)) == 40


async def _subscribers(client: httpx.AsyncClient, channel: str, count: int) -> bool:
    listed = (await client.get("/api/channels", headers=AUTH)).json()["channels"]
    return any(c["name"] == channel and c["subscribers"] == count for c in listed)


async def test_resume_after_a_dropped_connection_loses_nothing_within_history(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        reading = asyncio.create_task(read_events(client, "/api/channels/resume/events", 5, headers=AUTH))
        await eventually(lambda: _subscribers(client, "resume", 1))
        for n in range(5):
            await publish(client, "resume", {"n": n})
        first = await reading  # the connection drops after 5 events
        for n in range(5, 12):  # published while the client is away
            await publish(client, "resume", {"n": n})
        headers = {**AUTH, "Last-Event-ID": first[-1].id or ""}
        rest = await read_events(client, "/api/channels/resume/events", 7, headers=headers)
    assert [loads(e.data)["n"] for e in first + rest] == list(range(12))


async def test_resume_beyond_the_retained_history_reports_a_gap(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        positions = [await publish(client, "gappy", {"n": n}) for n in range(60)]  # history keeps 50
        events = await read_events(
            client, "/api/channels/gappy/events", 51, headers={**AUTH, "Last-Event-ID": positions[2]}
        )
        stale = await read_events(
            client, "/api/channels/gappy/events", 1, headers={**AUTH, "Last-Event-ID": "0000dead.1-3"}
        )
        history = (await client.get("/api/channels/gappy/history", params={"since": positions[2]}, headers=AUTH)).json()
    assert events[0].event == "gap"
    assert loads(events[0].data) == {"after": positions[2], "resumedFrom": positions[10], "reason": "expired"}
    assert [loads(e.data)["n"] for e in events[1:]] == list(range(10, 60))
    assert stale[0].event == "gap" and loads(stale[0].data)["reason"] == "unknown_epoch"
    assert history["gap"]["reason"] == "expired" and history["lastPosition"] == positions[-1]
    assert [m["data"]["n"] for m in history["messages"]] == list(range(10, 60))


async def test_history_pages_after_a_position(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        positions = [await publish(client, "paged", [n, "x"]) for n in range(10)]
        page = (
            await client.get("/api/channels/paged/history", params={"since": positions[3], "limit": 4}, headers=AUTH)
        ).json()
    assert [m["position"] for m in page["messages"]] == positions[4:8]
    assert [m["data"] for m in page["messages"]] == [[n, "x"] for n in range(4, 8)]
    assert page["gap"] is None


async def test_websocket_publishes_with_acks_and_receives_envelopes(server: Server) -> None:
    url = f"{server.ws_url}/api/channels/chatter/ws"
    async with connect(url, additional_headers=AUTH) as alice, connect(url, additional_headers=AUTH) as bob:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await eventually(lambda: _subscribers(client, "chatter", 2))
        await alice.send('{"text": "hi"}')
        frames = [loads(await alice.recv()) for _ in range(2)]
        heard = loads(await bob.recv())
        await alice.send("[1, 2, 3]")
        more = [loads(await alice.recv()) for _ in range(2)]
    message = next(f for f in frames if f["type"] == "message")
    ack = next(f for f in frames if f["type"] == "ack")
    assert message == {"type": "message", "position": ack["position"], "data": {"text": "hi"}}
    assert heard == message
    assert {f["type"] for f in more} == {"message", "ack"}


async def test_websocket_resumes_with_the_last_event_id_query(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        positions = [await publish(client, "wsresume", {"n": n}) for n in range(4)]
    async with connect(
        f"{server.ws_url}/api/channels/wsresume/ws?lastEventId={positions[1]}", additional_headers=AUTH
    ) as ws:
        frames = [loads(await ws.recv()) for _ in range(2)]
    assert [(f["position"], f["data"]["n"]) for f in frames] == [(positions[2], 2), (positions[3], 3)]


async def test_tenants_cannot_read_or_list_each_others_channels(server: Server) -> None:
    theirs = {"X-API-Key": OTHER_TENANT_KEY}
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client:
        position = await publish(client, "secret-plans", {"plan": "tenant 0 only"})
        listed = (await client.get("/api/channels", headers=theirs)).json()["channels"]
        history = (await client.get("/api/channels/secret-plans/history", headers=theirs)).json()
        resume = {**theirs, "Last-Event-ID": position}
        resumed = await read_events(client, "/api/channels/secret-plans/events", 1, headers=resume)
        reading = asyncio.create_task(read_events(client, "/api/channels/secret-plans/events", 1, headers=theirs))
        await eventually(lambda: _subscribers_for(client, theirs, "secret-plans"))
        await publish(client, "secret-plans", {"plan": "tenant 0 again"})
        await publish(client, "secret-plans", {"plan": "tenant 9's own"}, headers=theirs)
        seen = await reading
    assert "secret-plans" not in [c["name"] for c in listed]
    assert history["messages"] == [] and history["lastPosition"] is None
    # Tenant 0's position means nothing in tenant 9's channel: a gap, and none of tenant 0's messages.
    assert resumed[0].event == "gap" and loads(resumed[0].data)["resumedFrom"] is None
    assert [loads(e.data) for e in seen] == [{"plan": "tenant 9's own"}]


async def _subscribers_for(client: httpx.AsyncClient, headers: dict[str, str], channel: str) -> bool:
    listed = (await client.get("/api/channels", headers=headers)).json()["channels"]
    return any(c["name"] == channel and c["subscribers"] == 1 for c in listed)


@pytest.mark.parametrize(
    ("channel", "body", "headers", "status", "code"),
    [
        ("bad name!", b"{}", AUTH, 400, "invalid_argument"),
        ("ok", b"{not json", AUTH, 400, "invalid_argument"),
        ("ok", b'"' + b"x" * 70_000 + b'"', AUTH, 413, "payload_too_large"),
        ("ok", b"{}", {}, 401, "unauthenticated"),
        ("ok", b"{}", {"X-API-Key": "sk-nobody"}, 403, "permission_denied"),
    ],
)
async def test_bad_publishes_get_clear_errors(
    server: Server, channel: str, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            f"/api/channels/{channel}/messages", content=body, headers={**headers, "content-type": "application/json"}
        )
    assert (response.status_code, response.json()["code"]) == (status, code)


async def test_malformed_last_event_id_is_a_400_before_the_stream_opens(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/api/channels/x/events", headers={**AUTH, "Last-Event-ID": "garbage"})
        bad_name = await client.get("/api/channels/x%20y/events", headers=AUTH)
    assert response.status_code == 400 and "Invalid position" in response.json()["error"]
    assert bad_name.status_code == 400 and bad_name.json()["fields"][0]["field"] == "channel"


async def test_a_stalled_reader_among_100_is_cut_off_while_the_others_get_everything(
    serve: Callable[..., Server],
) -> None:
    server = serve(None, SLUICEGATE_STREAM_QUEUE_SIZE="50", **ENV)
    count, pad = 400, "x" * 10_000  # 4 MB: more than the kernel buffers of one loopback connection hold
    path = "/api/channels/crowd/events"
    healthy = [RawSSEClient(server.host, server.port, path, AUTH) for _ in range(100)]
    stalled = RawSSEClient(server.host, server.port, path, AUTH, rcvbuf=4096)
    try:
        for raw in [*healthy, stalled]:
            assert await raw.open() == 200
        readers = [asyncio.create_task(c.read(count)) for c in healthy]  # the stalled one is not read
        async with httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client:
            await eventually(lambda: _subscribers(client, "crowd", 101))
            for n in range(count):
                await publish(client, "crowd", {"n": n, "pad": pad})
            await asyncio.wait_for(asyncio.gather(*readers), 60 * UNIT)

            # Every healthy subscriber got every message, in order.
            for subscriber in healthy:
                assert [loads(e.data)["n"] for e in subscriber.events] == list(range(count))

            # The stalled one reads now: a prefix of the messages, then why it was cut off.
            events = await stalled.read()
            messages = [e for e in events if e.event == "message"]
            assert events[-1].event == "error" and loads(events[-1].data)["code"] == "slow_consumer"
            assert [loads(e.data)["n"] for e in messages] == list(range(len(messages)))
            assert len(messages) < count

            # It resumes with Last-Event-ID and loses nothing.
            resume = {**AUTH, "Last-Event-ID": messages[-1].id or ""}
            rest = await read_events(client, path, count - len(messages), headers=resume)
            metrics = (await client.get("/metrics")).text
    finally:
        for c in [*healthy, stalled]:
            c.close()
    assert [loads(e.data)["n"] for e in rest] == list(range(len(messages), count))
    assert 'sluicegate_slow_consumer_disconnects_total{transport="sse"} 1.0' in metrics
