"""Serving stream endpoints over ASGI: SSE, WebSocket, and NDJSON uploads.

Each open stream runs as a small group of tasks (sse-starlette's shape): the
handler, one writer draining the bounded outbox, a reader that watches for the
client leaving (and, for input streams, feeds the inbox), and for SSE a heartbeat.
When one ends the others are cancelled, and the handler's ``finally`` blocks have
always run before the response or socket is finished.

Deliberate choice: SSE is written here, at the ASGI level, rather than through
``fastapi.sse`` or sse-starlette. Both are a generator behind a
``StreamingResponse``, which writes once per event; the outbox writer joins
every queued frame into one write, which the fan-out benchmark needs
(docs/performance.md has the figures for all three).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import HTTPConnection

from sluicegate.edge import api_error
from sluicegate.errors import APIError, StreamClosed
from sluicegate.security.auth import set_auth_data
from sluicegate.streaming.codec import Frame
from sluicegate.streaming.config import Outcome, StreamConfig, StreamStats
from sluicegate.streaming.handshake import build_handshake, last_event_id
from sluicegate.streaming.outbox import Outbox
from sluicegate.streaming.sse import HEARTBEAT, retry_field
from sluicegate.streaming.streams import END_OF_INPUT, StreamIn, StreamInfo, StreamInOut, StreamOut, Transport

if TYPE_CHECKING:
    from pydantic import BaseModel
    from starlette.types import Message, Receive, Scope, Send

    from sluicegate.streaming.endpoints import StreamEndpoint

__all__ = ["SSE_HEADERS", "StreamApp", "error_response"]

log = logging.getLogger("sluicegate.streams")

_Headers = list[tuple[bytes, bytes]]

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),
]

_HEARTBEAT_FRAME = Frame.preframed(HEARTBEAT)


def _error_frame(error: APIError) -> Frame:
    return Frame(orjson.dumps(error.body()), event="error")


async def error_response(send: Send, error: APIError, *, websocket: bool = False) -> None:
    """Answer with an error's status, headers and JSON body (also as a WebSocket denial)."""
    body = orjson.dumps(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    prefix = "websocket.http.response" if websocket else "http.response"
    await send({"type": f"{prefix}.start", "status": error.status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body, "more_body": False})


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    for task in live:
        with suppress(asyncio.CancelledError):
            await task


def _handler_error(task: asyncio.Task[Any], info: StreamInfo) -> APIError | None:
    """The error a finished handler task ended with, as an APIError (unexpected ones are logged)."""
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is None or isinstance(exc, StreamClosed):
        return None
    mapped = api_error(exc)  # an APIError, or an engine's error as the client sees it
    if mapped is not None:
        if mapped.status >= 500:
            log.error("stream %s %s failed: %s", info.id, info.path, exc if mapped is not exc else mapped.message)
        return mapped
    log.error("stream %s %s: handler raised", info.id, info.path, exc_info=exc)
    return APIError.internal()


class StreamApp:
    """The ASGI app serving one stream endpoint on every transport it supports."""

    def __init__(self, endpoint: StreamEndpoint, config: StreamConfig) -> None:
        self.endpoint = endpoint
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif self.endpoint.kind == "out":
            await self._sse(scope, receive, send)
        else:
            await self._ndjson(scope, receive, send)

    # -- shared -------------------------------------------------------------------------

    async def _open(self, scope: Scope, transport: Transport) -> tuple[BaseModel | None, StreamInfo, _Headers]:
        """Authenticate, count the rate limit and validate the handshake.

        Returns the handshake, the stream's info and the headers to answer with.

        Raises:
            APIError: before anything is sent to the client.
        """
        conn = HTTPConnection(scope)
        auth = None
        if self.endpoint.auth:
            auth = await self.config.authenticator.authenticate(conn)
        headers: _Headers = []
        group, limiter = self.endpoint.rate_limit, self.config.limiter
        if group is not None and limiter is not None:
            result = await limiter.check(group, scope, auth)
            if result is not None:
                headers = [(k.lower().encode(), v.encode()) for k, v in result.headers().items()]
        handshake = None
        if self.endpoint.handshake_model is not None:
            handshake = build_handshake(self.endpoint.handshake_model, conn)
        info = StreamInfo(
            path=self.endpoint.path, transport=transport, last_event_id=last_event_id(conn), auth=auth, connection=conn
        )
        return handshake, info, headers

    async def _invoke(self, handshake: BaseModel | None, stream: Any) -> Any:
        set_auth_data(stream.info.auth)
        if handshake is None:
            return await self.endpoint.handler(stream)
        return await self.endpoint.handler(handshake, stream)

    async def _heartbeat(self, outbox: Outbox, stats: StreamStats, interval: float) -> None:
        clock = self.config.clock
        while not outbox.closed:
            idle = clock.monotonic() - stats.last_write
            if idle < interval:
                await clock.sleep(interval - idle)
                continue
            if not len(outbox):
                outbox.push_control(_HEARTBEAT_FRAME)
            await clock.sleep(interval)

    async def _open_later(self, outbox: Outbox) -> None:
        await self.config.clock.sleep(self.config.open_timeout)
        outbox.start()

    def _finish(self, info: StreamInfo, outcome: Outcome, error: APIError | None, stats: StreamStats) -> None:
        duration = self.config.clock.monotonic() - stats.started
        self.config.observer.closed(info, self.endpoint.kind, outcome, error, stats, duration)

    # -- SSE ----------------------------------------------------------------------------

    async def _sse(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            handshake, info, headers = await self._open(scope, "sse")
        except APIError as exc:
            await error_response(send, exc)
            return
        if scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        cfg = self.config
        assert self.endpoint.out_codec is not None  # noqa: S101 -- set for every stream_out
        outbox = Outbox(cfg.outbox_size, put_timeout=cfg.send_timeout)
        stream = StreamOut(info, self.endpoint.out_codec, outbox)
        stats = StreamStats(started=cfg.clock.monotonic(), last_write=cfg.clock.monotonic())
        cfg.observer.opened(info, "out")

        handler = asyncio.create_task(self._invoke(handshake, stream))
        writer = asyncio.create_task(
            self._sse_writer(outbox, send, _raw_send(scope, send), stats, SSE_HEADERS + headers)
        )
        watcher = asyncio.create_task(_wait_disconnect(receive))
        opener = asyncio.create_task(self._open_later(outbox))
        beat = (
            asyncio.create_task(self._heartbeat(outbox, stats, cfg.heartbeat_interval))
            if cfg.heartbeat_interval
            else None
        )
        outcome: Outcome = "completed"
        error: APIError | None = None
        try:
            await asyncio.wait({handler, writer, watcher, outbox.overflow}, return_when=asyncio.FIRST_COMPLETED)
            if outbox.overflowed:
                outcome, error = "slow_consumer", _slow_consumer_error(cfg)
                await _cancel(handler, writer, beat)
                with suppress(TimeoutError, OSError):
                    async with asyncio.timeout(cfg.close_timeout):
                        frame = _error_frame(error).sse
                        await send({"type": "http.response.body", "body": frame, "more_body": False})
            elif handler.done():
                error = _handler_error(handler, info)
                if error is not None:
                    outcome = "error"
                    if not outbox.started:  # refused before the stream opened: a plain HTTP error
                        await _cancel(writer)
                        error.headers.update({k.decode(): v.decode() for k, v in headers})
                        await error_response(send, error)
                        return
                    outbox.push_control(_error_frame(error))
                outbox.close()
                await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    outcome = "disconnected"
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                outcome = "disconnected"
        finally:
            outbox.discard()
            await _cancel(handler, writer, watcher, opener, beat)
            self._finish(info, outcome, error, stats)

    async def _sse_writer(
        self, outbox: Outbox, send: Send, raw_send: Send, stats: StreamStats, headers: list[tuple[bytes, bytes]]
    ) -> None:
        clock = self.config.clock
        # The retry: field rides on the first message: alone, some clients (httpx-sse)
        # would surface it as an empty event.
        retry = retry_field(self.config.retry_ms) if self.config.retry_ms is not None else None
        frames = await outbox.take()  # the first frames, the open marker, or the end
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while frames:
            if len(frames) == 1:
                frame = frames[0]
                messages = 0 if frame.control else 1
                body = frame.sse
            else:
                messages = len(frames) - sum(f.control for f in frames)
                body = b"".join([f.sse for f in frames])
            if retry is not None and messages:
                first = next(f for f in frames if not f.control)
                body = body.replace(first.sse, retry + first.sse, 1)
                retry = None
            if body:
                await raw_send({"type": "http.response.body", "body": body, "more_body": True})
            stats.frames_sent += messages
            stats.bytes_sent += len(body)
            stats.last_write = clock.monotonic()
            frames = await outbox.take()

    # -- WebSocket ----------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        try:
            handshake, info, headers = await self._open(scope, "websocket")
        except APIError as exc:
            await _deny(scope, send, exc)
            return
        cfg = self.config
        kind = self.endpoint.kind
        stats = StreamStats(started=cfg.clock.monotonic(), last_write=cfg.clock.monotonic())
        outbox = Outbox(cfg.outbox_size, put_timeout=cfg.send_timeout)
        inbox: asyncio.Queue[Any] | None = asyncio.Queue(cfg.inbox_size) if kind != "out" else None
        stream = self._make_stream(info, outbox, inbox)
        cfg.observer.opened(info, kind)

        handler = asyncio.create_task(self._invoke(handshake, stream))
        writer = asyncio.create_task(self._ws_writer(outbox, send, _raw_send(scope, send), stats, headers))
        reader = asyncio.create_task(self._ws_reader(receive, inbox, stats))
        opener = asyncio.create_task(self._open_later(outbox))
        outcome: Outcome = "completed"
        error: APIError | None = None
        close_code, reason = 1000, ""
        try:
            await asyncio.wait({handler, writer, reader, outbox.overflow}, return_when=asyncio.FIRST_COMPLETED)
            if outbox.overflowed:
                outcome, error = "slow_consumer", _slow_consumer_error(cfg)
                await _cancel(handler, writer)
                close_code, reason = error.close_code, error.code.value
                with suppress(TimeoutError, OSError):
                    async with asyncio.timeout(cfg.close_timeout):
                        await send({"type": "websocket.send", "text": orjson.dumps(error.body()).decode()})
                        await send({"type": "websocket.close", "code": close_code, "reason": reason})
            elif handler.done():
                error = _handler_error(handler, info)
                if error is not None:
                    outcome = "error"
                    if not outbox.started:  # refused before the socket was accepted
                        await _cancel(writer)
                        await _deny(scope, send, error)
                        return
                    outbox.push_control(_error_frame(error))
                    close_code, reason = error.close_code, error.code.value
                elif self.endpoint.result_codec is not None:
                    outbox.push_control(Frame(self.endpoint.result_codec.encode(handler.result())))
                outbox.close()
                await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    outcome = "disconnected"
                else:
                    with suppress(OSError):
                        await send({"type": "websocket.close", "code": close_code, "reason": reason})
            else:
                outcome = "disconnected"
        finally:
            outbox.discard()
            await _cancel(handler, writer, reader, opener)
            self._finish(info, outcome, error, stats)

    def _make_stream(self, info: StreamInfo, outbox: Outbox, inbox: asyncio.Queue[Any] | None) -> Any:
        ep = self.endpoint
        if ep.kind == "out":
            assert ep.out_codec is not None  # noqa: S101
            return StreamOut(info, ep.out_codec, outbox)
        assert inbox is not None  # noqa: S101
        if ep.kind == "in":
            return StreamIn(info, inbox)
        assert ep.out_codec is not None  # noqa: S101
        return StreamInOut(info, inbox, ep.out_codec, outbox)

    async def _ws_writer(
        self, outbox: Outbox, send: Send, raw_send: Send, stats: StreamStats, headers: list[tuple[bytes, bytes]]
    ) -> None:
        clock = self.config.clock
        frames = await outbox.take()  # the first frames, the open marker, or the end
        await send({"type": "websocket.accept", "headers": headers})
        while frames:
            for frame in frames:
                if frame.control:
                    continue
                text = frame.text
                await raw_send({"type": "websocket.send", "text": text})
                stats.frames_sent += 1
                stats.bytes_sent += len(text)
            stats.last_write = clock.monotonic()
            frames = await outbox.take()

    async def _ws_reader(self, receive: Receive, inbox: asyncio.Queue[Any] | None, stats: StreamStats) -> None:
        codec = self.endpoint.in_codec
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if inbox is None or codec is None:
                continue  # a stream_out ignores what its client sends
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            try:
                item: Any = codec.decode(raw)
            except APIError as exc:
                item = exc
            stats.messages_received += 1
            await inbox.put(item)

    # -- NDJSON over HTTP (stream_in) ----------------------------------------------------

    async def _ndjson(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            handshake, info, headers = await self._open(scope, "http")
        except APIError as exc:
            await error_response(send, exc)
            return
        cfg = self.config
        stats = StreamStats(started=cfg.clock.monotonic())
        inbox: asyncio.Queue[Any] = asyncio.Queue(cfg.inbox_size)
        stream = StreamIn[Any](info, inbox)
        cfg.observer.opened(info, "in")
        handler = asyncio.create_task(self._invoke(handshake, stream))
        reader = asyncio.create_task(self._ndjson_reader(receive, inbox, stats))
        outcome: Outcome = "completed"
        error: APIError | None = None
        try:
            await asyncio.wait({handler, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                outcome = "disconnected"
            else:
                error = _handler_error(handler, info)
                if error is not None:
                    outcome = "error"
                    await error_response(send, error)
                else:
                    codec = self.endpoint.result_codec
                    body = codec.encode(handler.result()) if codec is not None else b"null"
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [(b"content-type", b"application/json"), *headers],
                        }
                    )
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    stats.bytes_sent = len(body)
        finally:
            await _cancel(handler, reader)
            self._finish(info, outcome, error, stats)

    async def _ndjson_reader(self, receive: Receive, inbox: asyncio.Queue[Any], stats: StreamStats) -> None:
        codec = self.endpoint.in_codec
        assert codec is not None  # noqa: S101
        limit = self.config.max_message_bytes
        buffer = b""
        more = True
        while more:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
            buffer += message.get("body", b"")
            more = message.get("more_body", False)
            *lines, buffer = buffer.split(b"\n")
            if not more:
                lines.append(buffer)
            for line in lines:
                if line.strip():
                    await inbox.put(_decode_line(codec, line, limit))
                    stats.messages_received += 1
            if len(buffer) > limit:
                too_big = APIError.payload_too_large(f"A message is larger than {limit} bytes", limit=limit)
                await inbox.put(too_big)
                break
        await inbox.put(END_OF_INPUT)
        await _wait_disconnect(receive)


def _decode_line(codec: Any, line: bytes, limit: int) -> Any:
    if len(line) > limit:
        return APIError.payload_too_large(f"A message is larger than {limit} bytes", limit=limit)
    try:
        return codec.decode(line)
    except APIError as exc:
        return exc


def _slow_consumer_error(cfg: StreamConfig) -> APIError:
    return APIError.slow_consumer(
        f"The client read too slowly: more than {cfg.outbox_size} messages were waiting. "
        "Reconnect (with Last-Event-ID to resume).",
        limit=cfg.outbox_size,
    )


#: Where :class:`sluicegate.app.SluicegateApp` keeps the server's own ``send``.
RAW_SEND = "sluicegate.raw_send"


def _raw_send(scope: Scope, send: Send) -> Send:
    """The server's ``send``, for the body of a stream once its start has gone out.

    Deliberate shortcut: every middleware wrapper of ``send`` on the way (Starlette's
    error and exception middleware, ours) only watches the response start, yet costs a
    Python call per message; a stream's body chunks skip them.
    """
    raw: Send | None = scope.get(RAW_SEND)
    return raw if raw is not None else send


async def _deny(scope: Scope, send: Send, error: APIError) -> None:
    """Refuse a WebSocket handshake with an HTTP error (or a close code if the server cannot)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(send, error, websocket=True)
    else:
        await send({"type": "websocket.close", "code": error.close_code, "reason": error.code.value})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] in ("http.disconnect", "websocket.disconnect"):
            return
