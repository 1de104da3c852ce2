"""The composition root: :func:`create_app` builds the engines from settings, mounts
every router, and opens and closes everything in the app's lifespan."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import secrets
import socket
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.convertors import StringConvertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response  # noqa: TC002 -- FastAPI reads route annotations at run time
from starlette.routing import Match, Route, WebSocketRoute

import sluicegate
from sluicegate.clock import Clock, SystemClock
from sluicegate.edge import ENGINE_ERRORS, api_error
from sluicegate.engines.broker import broker_from_url
from sluicegate.engines.log import default_log_url, log_from_url
from sluicegate.engines.objects import object_store_from_url
from sluicegate.engines.store import Store, default_database_url
from sluicegate.engines.store.leases import Leases
from sluicegate.errors import APIError, ConfigurationError, ErrCode, SluicegateError, invalid_fields
from sluicegate.observability.metrics import Metrics, MetricsMiddleware
from sluicegate.observability.streams import StreamTelemetry
from sluicegate.providers.embeddings import embedder_from_settings
from sluicegate.providers.llm import registry_from_settings
from sluicegate.providers.tts import synthesizer_from_settings
from sluicegate.responses import json_response
from sluicegate.security import routes as auth_routes
from sluicegate.security.identity import ApiKeyStore, GatewayAuthenticator, TokenService, load_or_create_secret
from sluicegate.security.ratelimit import RateLimitEngine, RateLimiter
from sluicegate.services.challenges import ChallengeService
from sluicegate.services.channels import ChannelService
from sluicegate.services.chat import ChatRoutes, ChatService
from sluicegate.services.context import ContextRoutes, ContextService
from sluicegate.services.generate import GenerateRoutes, GenerateService
from sluicegate.services.ingest import IngestConfig, IngestRoutes, IngestService
from sluicegate.services.races import RaceConfig, RaceRoutes, RaceService
from sluicegate.services.search import SearchRoutes, SearchService
from sluicegate.services.troika import TroikaRoutes, TroikaService
from sluicegate.settings import Settings
from sluicegate.streaming.config import StreamConfig
from sluicegate.streaming.openapi import add_stream_paths
from sluicegate.streaming.transport import RAW_SEND, StreamApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from sluicegate.engines import Engine
    from sluicegate.engines.log import SessionLog
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.providers.tts import SpeechSynthesizer
    from sluicegate.security.auth import Authenticator
    from sluicegate.streaming.endpoints import StreamEndpoint, StreamRouter

__all__ = ["create_app", "json_response"]

log = logging.getLogger("sluicegate")

_STATUS_CODES = {
    400: ErrCode.INVALID_ARGUMENT,
    401: ErrCode.UNAUTHENTICATED,
    403: ErrCode.PERMISSION_DENIED,
    404: ErrCode.NOT_FOUND,
    409: ErrCode.ALREADY_EXISTS,
    413: ErrCode.PAYLOAD_TOO_LARGE,
    429: ErrCode.RESOURCE_EXHAUSTED,
    501: ErrCode.UNIMPLEMENTED,
    503: ErrCode.UNAVAILABLE,
}


def _error_response(error: APIError) -> Response:
    if error.status >= 500:
        log.error("request failed with %s: %s", error.code.value, error.message)
    return json_response(error.body(), error.status, error.headers)


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)  # noqa: S101 -- registered for APIError only
    return _error_response(exc)


async def _engine_error_handler(request: Request, exc: Exception) -> Response:
    error = api_error(exc)
    if error is None:  # pragma: no cover - registered for the engine errors only
        raise exc
    if error.status >= 500:
        log.error("request failed with %s: %s (%s)", error.code.value, error.message, exc)
    return json_response(error.body(), error.status, error.headers)


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    return _error_response(invalid_fields(exc.errors()))


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    if exc.status_code == 405:
        code = ErrCode.METHOD_NOT_ALLOWED
    else:
        code = _STATUS_CODES.get(
            exc.status_code, ErrCode.INTERNAL if exc.status_code >= 500 else ErrCode.INVALID_ARGUMENT
        )
    error = APIError(code, str(exc.detail), headers=dict(exc.headers or {}))
    return json_response(error.body(), exc.status_code, error.headers)


class ErrorBoundary:
    """Turns any exception that escapes a route into a logged 500 with a JSON body, never a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = json_response(APIError.internal().body(), 500)
            await response(scope, receive, send)


class _HotBoundary:
    """The error boundary of a hot route: no ``send`` wrapper, the app answers its own errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            with suppress(RuntimeError):  # the response may have started already
                await json_response(APIError.internal().body(), 500)(scope, receive, send)


class SluicegateApp(FastAPI):
    """FastAPI, with a fast lane for hot ingest routes and the server's own ``send`` kept
    in the scope for stream bodies.

    Deliberate shortcut: a *hot route* (:meth:`add_hot_route`) is matched before
    FastAPI's middleware stack and router, which cost about 200 µs a request here with
    every route mounted (docs/performance.md). Its app answers its own errors and counts
    its own metrics; anything it lets escape is still a logged 500 with a JSON body. It
    stays in the OpenAPI document by hand.
    """

    _hot: list[tuple[str, bool, Route, ASGIApp]]

    def add_hot_route(self, route: Route) -> None:
        """Serve ``route`` ahead of the middleware stack."""
        if not hasattr(self, "_hot"):
            self._hot = []
        prefix = route.path.split("{", 1)[0]  # a cheap test before the route's regular expression
        plain = all(isinstance(c, StringConvertor) for c in route.param_convertors.values())
        self._hot.append((prefix, plain, route, _HotBoundary(route.app)))
        self.router.routes.append(route)  # also reachable (and documented) the normal way

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, plain, route, app in getattr(self, "_hot", ()):
                if not path.startswith(prefix):
                    continue
                if plain and not scope.get("root_path") and route.methods and scope["method"] in route.methods:
                    # What Route.matches does, for string parameters at the root, without
                    # its general cases (root paths, converters, a new scope dict).
                    found = route.path_regex.match(path)
                    if found is None:
                        continue
                    scope["path_params"] = found.groupdict()
                    scope["endpoint"] = route.endpoint
                    scope["route"] = route
                    await app(scope, receive, send)
                    return
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["route"] = route
                    await app(scope, receive, send)
                    return
        if scope["type"] == "lifespan":
            send = self._one_line_startup_failure(send)
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)

    def _one_line_startup_failure(self, send: Send) -> Send:
        """``send`` with a start-up failure's message cut to one line when it is a bad setting.

        Starlette reports a failed lifespan with the whole traceback, which the server logs;
        for a :class:`~sluicegate.errors.ConfigurationError` (a broker or log that cannot be
        reached, say) the sentence naming the setting is all there is to say.
        """

        async def sending(message: Message) -> None:
            failure = getattr(self.state, "startup_failure", None)
            if message["type"] == "lifespan.startup.failed" and failure is not None:
                message = {**message, "message": f"sluicegate: {failure}"}
            await send(message)

        return sending


def _holder(session_log: SessionLog, data_dir: Path) -> str:
    """This process's name in the leases: random for each process on a shared log. On the
    spool, which one process at a time uses, the same for every start on this host and
    data folder, so that a node restarted after a crash takes its sessions back at once
    instead of a lease later."""
    host = socket.gethostname()[:60]
    if not session_log.shared:
        folder = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        return f"{host}:spool:{folder}"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def _mount_streams(app: FastAPI, routers: Sequence[StreamRouter], config: StreamConfig) -> list[StreamEndpoint]:
    endpoints: list[StreamEndpoint] = []
    for router in routers:
        for endpoint in router.endpoints:
            handler = StreamApp(endpoint, config)
            if endpoint.methods:
                app.router.routes.append(
                    Route(endpoint.path, handler, methods=list(endpoint.methods), name=endpoint.name)
                )
            app.router.routes.append(WebSocketRoute(endpoint.path, handler, name=f"{endpoint.name}.ws"))
            endpoints.append(endpoint)
    return endpoints


class ModelEngine:
    """A model provider (embeddings, speech) as an engine: loaded on first use, so start-up
    stays fast; ready when it can be used (its package is installed); closed at shutdown."""

    def __init__(self, name: str, provider: Embedder | SpeechSynthesizer) -> None:
        self.name = name
        self.provider = provider

    async def open(self) -> None:
        """Nothing, unless the provider preloads (``SLUICEGATE_TTS_PRELOAD``): the model loads on its first request."""
        if getattr(self.provider, "preload", False):
            try:
                await self.provider.open()
            except SluicegateError as exc:  # a voice that cannot load leaves chat without audio, not down
                log.warning("preloading %s failed: %s", self.name, exc)

    async def close(self) -> None:
        await self.provider.close()

    async def check(self) -> None:
        reason = self.provider.unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)


def _health_router(engines: list[Engine], metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: every engine is reachable")
    async def readyz() -> Response:
        results: dict[str, str] = {}
        for name, check in [(engine.name, engine.check) for engine in engines]:
            try:
                async with asyncio.timeout(2.0):
                    await check()
                results[name] = "ok"
            except Exception as exc:  # an engine may fail in any way; report it, never raise
                results[name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return json_response({"status": "ready" if ready else "unavailable", "engines": results}, 200 if ready else 503)

    router.add_api_route("/metrics", metrics.endpoint, methods=["GET"], summary="Prometheus metrics", tags=["ops"])
    router.add_api_route("/api/metrics", metrics.endpoint, methods=["GET"], summary="Prometheus metrics", tags=["ops"])
    return router


async def _open_engines(app: FastAPI, engines: Sequence[Engine], opened: list[Engine]) -> None:
    """Open ``engines`` in order into ``opened``; a bad setting is kept for the one-line report."""
    for engine in engines:
        try:
            await engine.open()
        except ConfigurationError as exc:
            app.state.startup_failure = str(exc)
            raise
        opened.append(engine)


def _api_keys(settings: Settings) -> ApiKeyStore:
    """The configured keys; a warning naming the settings when there are none (every request
    without a token would be a 401, with nothing to say why)."""
    keys = ApiKeyStore.from_settings(settings.api_keys, settings.api_keys_file)
    if not len(keys):
        log.warning(
            "No API keys are configured (SLUICEGATE_API_KEYS or SLUICEGATE_API_KEYS_FILE): every request is "
            "refused with 401 unless it carries a token made by 'sluicegate token create'"
        )
    return keys


def create_app(
    settings: Settings | None = None,
    *,
    streams: Sequence[StreamRouter] = (),
    routers: Sequence[APIRouter] = (),
    authenticator: Authenticator | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build a Sluicegate app.

    Args:
        settings: the settings; read from the environment when ``None``.
        streams: stream routers to mount beside the built-in services.
        routers: plain FastAPI routers to mount.
        authenticator: who calls ``auth=True`` stream endpoints; by default API keys and
            bearer tokens from the settings.
        clock: the time source (tests pass a manual clock).

    Returns:
        An ASGI app; uvicorn serves it (``sluicegate serve``).
    """
    settings = settings or Settings()
    clock = clock or SystemClock()
    store = Store(settings.database_url or default_database_url(settings.data_dir))
    broker = broker_from_url(
        settings.broker_url,
        history_size=settings.channel_history_size,
        history_seconds=settings.channel_history_seconds,
        pending_limit=settings.stream_queue_size,
        clock=clock,
    )
    objects = object_store_from_url(settings.object_store_url or f"file://{settings.data_dir / 'objects'}")
    channels = ChannelService(broker, max_message_bytes=settings.channel_max_message_bytes)
    challenges = ChallengeService(store, broker, clock)
    metrics = Metrics(settings.metrics_namespace)
    if os.environ.get("SLUICEGATE_NODE_URL"):
        log.warning("SLUICEGATE_NODE_URL is no longer used: every node serves every session (docs/deployment.md)")
    session_log = log_from_url(
        settings.log_url or default_log_url(settings.broker_url),
        data_dir=settings.data_dir,
        fsync={"races/": settings.race_fsync, "ingest/": settings.ingest_fsync},
        clock=clock,
    )
    leases = Leases(store, clock, holder=_holder(session_log, settings.data_dir), seconds=settings.lease_seconds)
    races = RaceService(
        store,
        objects,
        session_log,
        broker,
        leases,
        clock,
        RaceConfig(
            idle_seconds=settings.race_idle_seconds,
            zstd_level=settings.race_zstd_level,
            retry_initial_seconds=settings.race_retry_initial_seconds,
            retry_max_seconds=settings.race_retry_max_seconds,
            close_wait_seconds=settings.race_close_wait_seconds,
            max_buffer_bytes=settings.race_max_buffer_bytes,
        ),
        metrics,
    )
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else load_or_create_secret(settings.data_dir)
    race_routes = RaceRoutes(
        races,
        secret=settings.ax_parser_secret.get_secret_value().encode() if settings.ax_parser_secret else None,
        max_body_bytes=settings.race_max_body_bytes,
        clock=clock,
        metrics=metrics,
    )
    ingest = IngestService(
        store,
        objects,
        broker,
        session_log,
        leases,
        clock,
        IngestConfig(
            max_batch_size=settings.ingest_max_batch_size,
            max_body_bytes=settings.ingest_max_body_bytes,
            session_ttl_seconds=settings.ingest_session_ttl_seconds,
            max_queued_records=settings.ingest_max_queued_records,
            workers=settings.ingest_workers,
        ),
    )
    ingest_routes = IngestRoutes(ingest)
    llm = registry_from_settings(settings)
    generate = GenerateService(
        llm,
        metrics,
        clock,
        max_prompt_chars=settings.llm_max_prompt_chars,
        max_output_tokens=settings.llm_max_output_tokens,
    )
    # The fourth seed: search, context, chat and the sales agent, on one embedding model.
    embedder = embedder_from_settings(settings)
    synthesizer = synthesizer_from_settings(settings)
    search = SearchService(
        store,
        embedder,
        clock=clock,
        max_limit=settings.search_max_limit,
        exact_vectors=settings.search_exact_vectors,
        aza_min_score=settings.aza_min_score,
    )
    context = ContextService(
        store,
        embedder,
        clock=clock,
        max_file_bytes=settings.context_max_file_bytes,
        chunk_tokens=settings.context_chunk_tokens,
        chunk_overlap=settings.context_chunk_overlap,
    )
    chat = ChatService(
        store,
        llm,
        embedder,
        context,
        synthesizer,
        clock=clock,
        memory_turns=settings.chat_memory_turns,
        context_chunks=settings.chat_context_chunks,
        max_output_tokens=settings.chat_max_output_tokens,
        model=settings.chat_model,
        context_tokens=settings.llm_context_tokens,
    )
    troika = TroikaService(chat, search, embedder, clock=clock)
    # Opened in this order, closed in reverse: services after the engines they use.
    limiter = RateLimiter.from_settings(settings, on_reject=lambda group: metrics.rate_limited.labels(group).inc())
    if not settings.broker_url.startswith("memory") and not limiter.shared:
        log.warning("rate limits are counted by each node alone: set SLUICEGATE_REDIS_URL so that nodes share them")
    engines: list[Engine] = [
        store,
        broker,
        RateLimitEngine(limiter),
        objects,
        session_log,
        races,
        ingest,
        llm,
        ModelEngine("embeddings", embedder),
        ModelEngine("speech", synthesizer),
    ]
    tokens = TokenService(secret, clock=clock)
    gateway = GatewayAuthenticator(_api_keys(settings), tokens)
    stream_config = StreamConfig(
        heartbeat_interval=settings.sse_heartbeat_seconds or None,
        retry_ms=settings.sse_retry_ms,
        outbox_size=settings.stream_queue_size,
        send_timeout=settings.stream_send_timeout_seconds,
        close_timeout=settings.stream_close_timeout_seconds,
        open_timeout=settings.stream_open_timeout_seconds,
        max_message_bytes=settings.stream_max_message_bytes,
        authenticator=authenticator or gateway,
        limiter=limiter,
        observer=StreamTelemetry(metrics),
        clock=clock,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened: list[Engine] = []
        thresholds = gc.get_threshold()
        if settings.gc_gen0_threshold:
            gc.set_threshold(settings.gc_gen0_threshold, *thresholds[1:])
        try:
            await _open_engines(app, engines, opened)
            yield
        finally:
            for engine in reversed(opened):
                try:
                    await engine.close()
                except Exception:
                    log.exception("closing engine %s failed", engine.name)
            metrics.worker_exited()
            gc.set_threshold(*thresholds)

    app = SluicegateApp(
        title="Sluicegate",
        version=sluicegate.__version__,
        summary="A real-time streaming gateway: SSE and WebSocket fan-out, ingestion, collection and generation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engines = engines
    app.state.stream_config = stream_config
    app.state.authenticator = gateway
    app.state.tokens = tokens
    app.state.rate_limiter = limiter
    app.state.metrics = metrics
    app.state.store = store
    app.state.broker = broker
    app.state.objects = objects
    app.state.session_log = session_log
    app.state.leases = leases
    app.state.races = races
    app.state.ingest = ingest
    app.state.llm = llm
    app.state.embedder = embedder
    app.state.search = search
    app.state.context = context
    app.state.chat = chat
    app.add_exception_handler(APIError, _api_error_handler)
    for engine_error in ENGINE_ERRORS:
        app.add_exception_handler(engine_error, _engine_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_middleware(ErrorBoundary)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    app.include_router(_health_router(engines, metrics))
    app.include_router(auth_routes.router)
    app.include_router(channels.router)
    app.include_router(challenges.router)
    app.include_router(race_routes.router)
    app.include_router(ingest_routes.router)
    generate_routes = GenerateRoutes(
        generate, limiter=limiter, clock=clock, heartbeat=settings.sse_heartbeat_seconds or None
    )
    app.include_router(generate_routes.router)
    heartbeat = settings.sse_heartbeat_seconds or None
    app.include_router(
        SearchRoutes(search, clock=clock, heartbeat=heartbeat, max_import_bytes=settings.search_max_import_bytes).router
    )
    app.include_router(ContextRoutes(context, clock=clock, heartbeat=heartbeat).router)
    app.include_router(ChatRoutes(chat, clock=clock, heartbeat=heartbeat).router)
    app.include_router(TroikaRoutes(troika, clock=clock, heartbeat=heartbeat).router)
    app.add_hot_route(race_routes.ingest)
    for router in routers:
        app.include_router(router)
    endpoints = _mount_streams(
        app,
        [channels.streams, challenges.streams, ingest_routes.streams, generate_routes.streams, *streams],
        stream_config,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            add_stream_paths(schema, endpoints)
            schema["paths"].update(race_routes.openapi_paths)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
