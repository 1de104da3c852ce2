"""``POST /api/stream`` (the fifth seed), ``GET /api/models``, and the WebSocket ``/api/stream/ws``.

The SSE route answers errors before the stream as plain JSON (400, 401, 403, 429,
500 ``Failed to start stream``, 503 when the local model's queue is full) and, once
the stream has started, only with the seed's ``data:`` events.

The WebSocket carries the same events, in both directions JSON:

- in ``{"type": "generate", "prompt": ..., "model"?, "options"?, "agent"?}``: starts a
  generation (one at a time per socket; each counts against the ``generate`` limit);
- in ``{"type": "cancel"}``: stops it; the answer is ``{"cancelled": true,
  "totalChunks": n, "fullText": ..., "usage": {...}}``;
- out: ``{"chunk", "index"}``, ``{"complete": true, ...}``, ``{"error", "recoverable"}``.
  A refused message (bad prompt, rate limit, unknown type) is an ``error`` with
  ``recoverable: true`` and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from sluicegate.errors import APIError
from sluicegate.responses import json_response, read_body
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.streaming import StreamInOut, StreamRouter
from sluicegate.streaming.response import EventStreamResponse
from sluicegate.streaming.sse import encode_json_event

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from sluicegate.clock import Clock
    from sluicegate.security.ratelimit import RateLimiter
    from sluicegate.services.generate.service import GenerateService, GenerationRun

__all__ = ["GenerateRoutes"]

#: JSON syntax around the prompt: a body may be this much larger than the longest prompt.
_BODY_SLACK = 64 * 1024


async def _sse_frames(run: GenerationRun) -> AsyncGenerator[bytes]:
    async with contextlib.aclosing(run.events()) as events:
        async for event in events:
            yield encode_json_event(orjson.dumps(event))


class GenerateRoutes:
    """The generation routes over a :class:`GenerateService`.

    Args:
        service: starts and accounts for generations.
        limiter: counts WebSocket prompts against the ``generate`` group.
        clock: paces SSE heartbeats.
        heartbeat: seconds of silence before a ``: ping`` comment (while a prompt waits
            for the local model, say); ``None`` sends none.
    """

    def __init__(
        self, service: GenerateService, *, limiter: RateLimiter, clock: Clock, heartbeat: float | None
    ) -> None:
        self.service = service
        self.limiter = limiter
        self.clock = clock
        self.heartbeat = heartbeat
        self.router = APIRouter(tags=["generate"])
        self.streams = StreamRouter(tags=("generate",))
        self._http_routes()
        self._socket_route()

    def _http_routes(self) -> None:
        service = self.service
        body_limit = service.max_prompt_chars * 4 + _BODY_SLACK

        @self.router.post(
            "/api/stream",
            dependencies=[Depends(rate_limited("generate"))],
            summary="Generate text as a Server-Sent Events stream",
            response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}},
        )
        async def generate(request: Request, response: Response) -> Response:
            """Body ``{prompt, model?, options?: {temperature, topP, topK, maxOutputTokens}, agent?}``
            (``X-API-Key``); answers ``data: {"chunk", "index"}`` events then ``data: {"complete": true, ...}``.
            A client that disconnects stops the model within one token."""
            parsed = service.parse(await read_body(request, body_limit))
            run = await service.start(parsed)
            return EventStreamResponse(
                _sse_frames(run),
                clock=self.clock,
                heartbeat=self.heartbeat,
                headers=dict(response.headers),
                on_close=run.abort,
            )

        @self.router.get("/api/models", summary="The models generation can use")
        async def models(identity: AnyIdentity) -> Response:
            """Each model of the model map, its provider, whether it can be used now (and why not), and the default."""
            return json_response({"models": service.registry.describe(), "default": service.registry.default_model})

    def _socket_route(self) -> None:
        service, limiter = self.service, self.limiter

        @self.streams.stream_in_out("/api/stream/ws", auth=True)
        async def generate_socket(stream: StreamInOut[Any, Any]) -> None:
            """Prompts in, the seed's events out; ``{"type": "cancel"}`` stops the running generation."""
            session = _SocketSession(service, limiter, stream)
            try:
                async for message in stream:
                    kind = message.get("type") if isinstance(message, dict) else None
                    if kind == "generate":
                        await session.generate(message)
                    elif kind == "cancel":
                        await session.cancel()
                    else:
                        await session.refuse(APIError.invalid_argument("Unknown message type: send generate or cancel"))
            finally:
                await session.stop()


class _SocketSession:
    """One WebSocket's generations: at most one running at a time."""

    def __init__(self, service: GenerateService, limiter: RateLimiter, stream: StreamInOut[Any, Any]) -> None:
        self.service = service
        self.limiter = limiter
        self.stream = stream
        self.task: asyncio.Task[None] | None = None
        self.run: GenerationRun | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def refuse(self, error: APIError) -> None:
        await self.stream.send({**error.body(), "recoverable": True})

    async def generate(self, message: dict[str, Any]) -> None:
        if self.running:
            await self.refuse(APIError.failed_precondition("A generation is already running; send cancel first"))
            return
        try:
            await self.limiter.check("generate", {}, self.stream.auth)
            self.run = await self.service.start(self.service.parse(message))
        except APIError as exc:
            await self.refuse(exc)
            return
        self.task = asyncio.create_task(self._relay(self.run))

    async def _relay(self, run: GenerationRun) -> None:
        async with contextlib.aclosing(run.events()) as events:
            async for event in events:
                await self.stream.send(event)

    async def cancel(self) -> None:
        run = self.run
        if not self.running or run is None:
            await self.refuse(APIError.failed_precondition("No generation is running"))
            return
        await self.stop()
        await self.stream.send({"cancelled": True, "totalChunks": run.chunks, "fullText": run.text, "usage": run.usage})

    async def stop(self) -> None:
        """Cancel the running generation, if any, and account for it."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.run is not None:
            await self.run.abort()
