"""stream_out endpoints over SSE and WebSocket, against a real server."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sluicegate.streaming.sse import SSEDecoder
from tests.e2e.helpers import StalledWebSocket, eventually, loads, read_events
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.server import Server


@pytest.fixture(scope="module")
def logs_server(serve_module: Callable[..., Server]) -> Server:
    return serve_module("examples.logs:create_app")


@pytest.fixture(scope="module")
def probe(serve_module: Callable[..., Server]) -> Server:
    return serve_module("tests.e2e.probe_app:create_app", SLUICEGATE_SSE_HEARTBEAT_SECONDS="0.05")


async def test_sse_stream_sends_typed_events_with_ids_and_streaming_headers(logs_server: Server) -> None:
    async with (
        httpx.AsyncClient(base_url=logs_server.url) as client,
        aconnect_sse(client, "GET", "/logs", params={"rows": 4}) as source,
    ):
        headers = source.response.headers
        events = [event async for event in source.aiter_sse()]
    assert headers["content-type"].startswith("text/event-stream")
    assert "no-cache" in headers["cache-control"]
    assert headers["x-accel-buffering"] == "no"
    assert [e.id for e in events] == ["0", "1", "2", "3"]
    assert [loads(e.data)["row"] for e in events] == [0, 1, 2, 3]
    assert loads(events[2].data)["line"].endswith("handled request 000002 in 14 ms")
    assert events[0].retry == 3000


@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_resumes_after_last_event_id(logs_server: Server, how: str) -> None:
    headers = {"Last-Event-ID": "5"} if how == "header" else {}
    params = {"rows": "8"} if how == "header" else {"rows": "8", "lastEventId": "5"}
    async with httpx.AsyncClient(base_url=logs_server.url) as client:
        events = await read_events(client, "/logs", 10, headers=headers, params=params)
    assert [e.id for e in events] == ["6", "7"]


async def test_same_handler_serves_websocket_as_json_text_frames(logs_server: Server) -> None:
    async with connect(f"{logs_server.ws_url}/logs?rows=3") as ws:
        frames = [await ws.recv() for _ in range(3)]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert [loads(f)["row"] for f in frames] == [0, 1, 2]
    assert all(isinstance(f, str) for f in frames)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_bad_handshake_is_a_400_naming_the_field_on_sse_and_websocket(logs_server: Server) -> None:
    async with httpx.AsyncClient(base_url=logs_server.url) as client:
        response = await client.get("/logs", params={"rows": "many"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert [f["field"] for f in body["fields"]] == ["rows"]

    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{logs_server.ws_url}/logs?rows=-1"):
            pass
    assert refused.value.response.status_code == 400
    assert loads(refused.value.response.body)["fields"][0]["field"] == "rows"


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_client_disconnect_cancels_the_handler_and_runs_finally(probe: Server, transport: str) -> None:
    tag = f"disconnect-{transport}"
    async with httpx.AsyncClient(base_url=probe.url) as client:
        if transport == "sse":
            events = await read_events(client, f"/probe/ticks?tag={tag}", 3)
            assert [e.event for e in events] == ["tick"] * 3
        else:
            async with connect(f"{probe.ws_url}/probe/ticks?tag={tag}") as ws:
                assert loads(await ws.recv()) == {"n": 0}

        async def finished() -> dict[str, int] | None:
            counts: dict[str, int] = (await client.get("/probe/state")).json().get(tag, {})
            return counts if counts.get("finally") else None

        counts = await eventually(finished)
    assert counts == {"started": 1, "cancelled": 1, "finally": 1}


async def test_heartbeats_arrive_while_the_stream_is_idle(probe: Server) -> None:
    decoder = SSEDecoder()
    async with httpx.AsyncClient(base_url=probe.url) as client, client.stream("GET", "/probe/silent") as response:
        async with asyncio.timeout(5 * UNIT):
            async for chunk in response.aiter_raw():
                assert list(decoder.feed(chunk)) == []
                if decoder.comments >= 3:
                    break
    assert decoder.comments >= 3


async def test_api_error_closes_websocket_with_mapped_code_and_a_final_message(probe: Server) -> None:
    async with connect(f"{probe.ws_url}/probe/fail?how=not_found") as ws:
        first, final = loads(await ws.recv()), loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert first == {"n": 0}
    assert final == {"error": "The thing went away", "code": "not_found"}
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4404, "not_found")


async def test_api_error_ends_sse_with_an_error_event(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        events = await read_events(client, "/probe/fail?how=not_found", 5)
    assert [e.event for e in events] == ["message", "error"]
    assert loads(events[1].data) == {"error": "The thing went away", "code": "not_found"}


async def test_a_crashing_handler_is_an_internal_error_without_traceback_and_is_logged(probe: Server) -> None:
    async with connect(f"{probe.ws_url}/probe/fail?how=crash") as ws:
        await ws.recv()
        final = await ws.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert loads(final) == {"error": "Internal server error", "code": "internal"}
    assert "secret" not in str(final)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    probe.wait_for_log(r"RuntimeError: secret internals")


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "Unauthorized: token is missing."),
        ({"X-Test-Token": "stolen"}, 403, "Forbidden: invalid token."),
    ],
)
async def test_auth_failures_are_refused_before_the_stream_opens(
    probe: Server, headers: dict[str, str], status: int, message: str
) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        response = await client.get("/probe/whoami", headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == message

    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{probe.ws_url}/probe/whoami", additional_headers=headers):
            pass
    assert refused.value.response.status_code == status
    assert loads(refused.value.response.body)["error"] == message


async def test_authenticated_stream_sees_the_callers_identity(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        events = await read_events(client, "/probe/whoami", 1, headers={"X-Test-Token": "good"})
    assert loads(events[0].data) == {"user": "alice"}
    async with connect(f"{probe.ws_url}/probe/whoami?token=good") as ws:
        assert loads(await ws.recv()) == {"user": "alice"}


async def test_stream_in_out_echoes_typed_messages_and_rejects_invalid_ones(probe: Server) -> None:
    async with connect(f"{probe.ws_url}/probe/echo", additional_headers={"X-Test-Token": "good"}) as ws:
        await ws.send('{"n": 21}')
        assert loads(await ws.recv()) == {"n": 42}
        await ws.send('{"n": "many"}')
        error = loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert error["code"] == "invalid_argument"
    assert error["fields"][0]["field"] == "n"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_sse_subscriber_that_stops_reading_is_cut_off_while_others_get_everything(
    serve: Callable[..., Server],
) -> None:
    server = serve("tests.e2e.probe_app:create_app", SLUICEGATE_STREAM_QUEUE_SIZE="50")
    count = 400
    # A tiny receive buffer makes the stalled client's socket fill after a few messages
    # (httpx sets socket options before connecting).
    tiny = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as client,
        httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT, transport=tiny) as stalled_client,
    ):

        async def members() -> bool:
            state = (await client.get("/probe/state")).json()
            return bool(state.get("healthy", {}).get("started") == 1 and state.get("stalled", {}).get("started") == 1)

        async def stalled_cut_off() -> bool:
            return bool((await client.get("/probe/state")).json()["stalled"].get("finally") == 1)

        healthy = asyncio.create_task(read_events(client, "/probe/room?tag=healthy", count))
        async with stalled_client.stream("GET", "/probe/room?tag=stalled"):  # opened, never read
            await eventually(members)
            published = await client.post("/probe/room/publish", params={"count": count, "size": 20_000, "pace": 0.001})
            events = await healthy
            await eventually(stalled_cut_off)
    assert [e.id for e in events] == [str(n) for n in range(count)]
    assert published.json()["delivered"] < 2 * count  # the stalled member stopped receiving
    server.wait_for_log(r"Stream ended /probe/room via sse: slow_consumer \(slow_consumer\)")


async def test_websocket_reader_that_stalls_is_closed_while_other_clients_keep_receiving(
    serve: Callable[..., Server],
) -> None:
    server = serve("tests.e2e.probe_app:create_app", SLUICEGATE_STREAM_QUEUE_SIZE="20")
    count, size = 80, 100_000  # 8 MB: more than the kernel buffers of a loopback connection hold
    stalled = StalledWebSocket(server.host, server.port, "/probe/room?tag=ws-stalled")
    await stalled.open()
    async with (
        connect(f"{server.ws_url}/probe/room?tag=ws-healthy", max_size=None) as healthy,
        httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client,
    ):

        async def members() -> bool:
            state = (await client.get("/probe/state")).json()
            return all(state.get(t, {}).get("started") == 1 for t in ("ws-stalled", "ws-healthy"))

        async def receive_all() -> list[int]:
            return [loads(await healthy.recv())["n"] for _ in range(count)]

        await eventually(members)
        receiving = asyncio.create_task(receive_all())
        published = await client.post("/probe/room/publish", params={"count": count, "size": size, "pace": 0.002})
        assert await asyncio.wait_for(receiving, 30 * UNIT) == list(range(count))
        assert published.json()["delivered"] < 2 * count  # the stalled member stopped receiving

        # The stalled client reads again: what was queued for it, then why it was cut off.
        code, reason = await stalled.read_until_closed()
    assert (code, reason) == (1008, "slow_consumer")
    assert loads(stalled.texts[-1])["code"] == "slow_consumer"
    assert len(stalled.texts) < count
    server.wait_for_log(r"Stream ended /probe/room via websocket: slow_consumer")
