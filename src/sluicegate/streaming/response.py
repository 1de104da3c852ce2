"""An SSE answer for a plain route (a ``POST`` whose body starts the stream).

:mod:`sluicegate.streaming.endpoints` serves declared stream endpoints, whose handshake
comes from the path, query and headers. Some seed routes start a stream from a JSON
body instead (``POST /api/stream``): the route validates the body as usual, then
returns an :class:`EventStreamResponse` over an async iterator of encoded frames.

The response owns what the framework owns everywhere: SSE headers, heartbeat comments
during silences, and the client's disconnect, which cancels the producer at once (its
``finally`` runs with ``asyncio.CancelledError``) instead of at the next write.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING

from starlette.responses import Response

from sluicegate.streaming.sse import HEARTBEAT
from sluicegate.streaming.transport import SSE_HEADERS, _raw_send, _wait_disconnect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from starlette.types import Receive, Scope, Send

    from sluicegate.clock import Clock

__all__ = ["EventStreamResponse"]


class EventStreamResponse(Response):
    """Stream ``frames`` (each a complete SSE event, see :func:`~sluicegate.streaming.sse.encode_json_event`).

    Args:
        frames: the events; the iterator is closed (cancelled if still running) when
            the client goes away.
        clock: paces heartbeats.
        heartbeat: seconds of silence before a ``: ping`` comment; ``None`` sends none.
        headers: extra response headers (rate-limit counts).
        on_close: awaited once the response is over, however it ended (even if the
            client left before the first frame was asked of ``frames``).
    """

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        clock: Clock,
        heartbeat: float | None = None,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # Not Response.__init__: there is no body to render; FastAPI only needs the type.
        self.status_code = 200
        self.background = None
        self.frames = frames
        self.on_close = on_close
        self.clock = clock
        self.heartbeat = heartbeat
        self._extra_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self._last_write = 0.0
        self._lock = asyncio.Lock()
        #: Whether the client went away before the last frame.
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + self._extra_headers})
        raw = _raw_send(scope, send)
        self._last_write = self.clock.monotonic()
        pump = asyncio.create_task(self._pump(raw))
        watcher = asyncio.create_task(_wait_disconnect(receive))
        beat = asyncio.create_task(self._beat(raw)) if self.heartbeat else None
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if pump.done() and pump.result():  # a producer bug propagates; frames it sent stay sent
                with suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                self.disconnected = True
        finally:
            for task in (pump, watcher, beat):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(pump, watcher, *([beat] if beat else []), return_exceptions=True)
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_close is not None:
                await self.on_close()

    async def _pump(self, send: Send) -> bool:
        """Send every frame; ``False`` when the client went away mid-write."""
        clock = self.clock
        try:
            async for frame in self.frames:
                async with self._lock:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                self._last_write = clock.monotonic()
        except OSError:
            return False
        return True

    async def _beat(self, send: Send) -> None:
        assert self.heartbeat is not None  # noqa: S101 -- only started with an interval
        interval, clock = self.heartbeat, self.clock
        while True:
            idle = clock.monotonic() - self._last_write
            if idle < interval:
                await clock.sleep(interval - idle)
                continue
            async with self._lock:
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
            self._last_write = clock.monotonic()
