"""The three examples of the third seed, run as real servers."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.helpers import loads
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.server import Server


@pytest.fixture(scope="module")
def upload_server(serve_module: Callable[..., Server]) -> Server:
    return serve_module("examples.upload:create_app")


async def test_upload_over_websocket_returns_the_handlers_result(upload_server: Server) -> None:
    chunks = ["hello ", "streaming ", "world"]
    async with connect(f"{upload_server.ws_url}/upload?name=greeting") as ws:
        for i, chunk in enumerate(chunks):
            await ws.send(f'{{"data": "{chunk}", "done": {str(i == len(chunks) - 1).lower()}}}')
        result = loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert result == {
        "success": True,
        "name": "greeting",
        "chunks": 3,
        "bytes": len("hello streaming world"),
        "sha256": hashlib.sha256(b"hello streaming world").hexdigest(),
    }
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_upload_over_http_takes_an_ndjson_body_in_pieces(upload_server: Server) -> None:
    lines = [b'{"data": "%d"}\n' % i for i in range(1000)]

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(lines), 100):
            yield b"".join(lines[i : i + 100])

    async with httpx.AsyncClient(base_url=upload_server.url) as client:
        response = await client.post("/upload", content=body(), headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200
    payload = "".join(str(i) for i in range(1000)).encode()
    assert response.json()["chunks"] == 1000
    assert response.json()["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_upload_with_an_invalid_message_is_a_400_naming_the_field(upload_server: Server) -> None:
    async with httpx.AsyncClient(base_url=upload_server.url) as client:
        response = await client.post("/upload", content=b'{"data": "ok"}\n{"done": true}\n')
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid message"
    assert response.json()["fields"][0]["field"] == "data"


async def test_chat_broadcasts_to_the_other_participants_only(serve: Callable[..., Server]) -> None:
    server = serve("examples.chat:create_app")
    url = f"{server.ws_url}/chat?userId="
    async with connect(url + "alice") as alice, connect(url + "bob") as bob, connect(url + "carol") as carol:
        await asyncio.sleep(0.1 * UNIT)  # let all three join before the first message
        await alice.send('{"text": "hi all"}')
        for peer in (bob, carol):
            message = loads(await asyncio.wait_for(peer.recv(), 5 * UNIT))
            assert (message["userId"], message["text"]) == ("alice", "hi all")
        await bob.send('{"text": "hi alice"}')
        message = loads(await asyncio.wait_for(alice.recv(), 5 * UNIT))
        assert (message["userId"], message["text"]) == ("bob", "hi alice")
        with pytest.raises(TimeoutError):  # alice never hears her own message
            await asyncio.wait_for(alice.recv(), 0.2 * UNIT)
