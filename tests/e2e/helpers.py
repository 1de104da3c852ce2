"""Small client-side helpers for end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.streaming.sse import SSEDecoder, SSEEvent
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from websockets.asyncio.client import ClientConnection


async def read_events(client: httpx.AsyncClient, url: str, count: int, **kwargs: Any) -> list[SSEEvent]:
    """Open an SSE stream, read ``count`` events (or until it ends) and close it."""
    events: list[SSEEvent] = []
    decoder = SSEDecoder()
    async with asyncio.timeout(10 * UNIT), client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_raw():
            events.extend(decoder.feed(chunk))
            if len(events) >= count:
                break
    return events[:count]


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5 * UNIT) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value otherwise."""
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s (last value: {value!r})")


def loads(data: str | bytes | bytearray) -> Any:
    return orjson.loads(data)


class StalledWebSocket:
    """A WebSocket client that stops reading: a raw socket with a tiny receive buffer,
    parsed by the websockets sans-I/O protocol only when the test decides to read.

    Client libraries keep reading into their own buffers, so they cannot stall a
    connection on purpose; this one can.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        import socket

        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}{path}"), max_size=None)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.texts: list[str] = []
        self._pending: list[Any] = []

    async def open(self) -> None:
        """Send the handshake and wait for the 101."""
        from websockets.http11 import Response

        loop = asyncio.get_running_loop()
        self.protocol.send_request(self.protocol.connect())
        await loop.sock_sendall(self.sock, b"".join(self.protocol.data_to_send()))
        async with asyncio.timeout(5 * UNIT):
            while not any(isinstance(e, Response) for e in self._pending):
                self.protocol.receive_data(await loop.sock_recv(self.sock, 4096))
                self._pending.extend(self.protocol.events_received())

    async def read_until_closed(self, within: float = 10 * UNIT) -> tuple[int | None, str]:
        """Read again, until the server's close frame; returns its code and reason."""
        from websockets.frames import Frame, Opcode

        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while self.protocol.close_rcvd is None:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    self.protocol.receive_eof()
                    break
                self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        self.texts.append(bytes(event.data).decode())
        close = self.protocol.close_rcvd
        self.sock.close()
        return (close.code, close.reason) if close is not None else (None, "")


class RawSSEClient:
    """An SSE client on a raw socket (HTTP parsed by h11), whose reading the test controls.

    With ``rcvbuf`` set, the socket's receive buffer is tiny (set before connecting, so
    the TCP window stays small): a client that stops reading stalls the connection
    after a few kilobytes, which httpx and browsers never do on purpose.
    """

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str], *, rcvbuf: int | None = None) -> None:
        import socket

        import h11

        self._h11 = h11
        self.conn = h11.Connection(our_role=h11.CLIENT)
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.request = h11.Request(method="GET", target=path, headers=[("Host", host), *headers.items()])
        self.decoder = SSEDecoder()
        self.events: list[SSEEvent] = []
        self.status: int | None = None

    async def open(self) -> int:
        """Send the request and wait for the response head; returns the status."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, self.conn.send(self.request) or b"")
        async with asyncio.timeout(5 * UNIT):
            while self.status is None:
                await self._pump(loop)
        return self.status

    async def _pump(self, loop: asyncio.AbstractEventLoop) -> bool:
        h11 = self._h11
        data = await loop.sock_recv(self.sock, 65536)
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return bool(data)
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.Data):
                self.events.extend(self.decoder.feed(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return False

    async def read(self, count: int | None = None, *, within: float = 30 * UNIT) -> list[SSEEvent]:
        """Read until ``count`` events arrived (or the response ended)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while count is None or len(self.events) < count:
                if not await self._pump(loop):
                    break
        return self.events

    def close(self) -> None:
        self.sock.close()


async def receive_until(ws: ClientConnection, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """WebSocket messages (JSON) until ``done`` says they are enough."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(5 * UNIT):
        while not done(messages):
            messages.append(loads(await ws.recv()))
    return messages


def types(messages: list[dict[str, Any]]) -> list[str]:
    """The ``type`` of each message."""
    return [m["type"] for m in messages]
