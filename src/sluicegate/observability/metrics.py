"""Prometheus metrics, served at ``GET /metrics`` and ``GET /api/metrics``.

Every name starts with ``SLUICEGATE_METRICS_NAMESPACE`` (default ``sluicegate``);
with ``amrikyy`` the generation series are exactly the fifth seed's
(``amrikyy_stream_chunks_sent_total``, ``amrikyy_active_streams``, ...).

With several workers (``sluicegate serve --workers N``) the CLI points
``PROMETHEUS_MULTIPROC_DIR`` at ``SLUICEGATE_DATA_DIR/metrics`` before the workers
start, and a scrape aggregates every worker's files: counters and histograms are
summed, gauges of open streams summed over live workers.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request  # noqa: TC002 -- FastAPI reads route annotations at run time
from starlette.responses import Response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Metrics:
    """Every metric Sluicegate exports, in one registry per app.

    Args:
        namespace: the prefix of every name.
    """

    def __init__(self, namespace: str = "sluicegate") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, ns = self.registry, namespace
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            namespace=ns,
            registry=reg,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "Time from request to response headers, by route.",
            ["method", "route"],
            namespace=ns,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.open_streams = Gauge(
            "open_streams",
            "Open streams by kind and transport.",
            ["kind", "transport"],
            namespace=ns,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.messages_sent = Counter(
            "stream_messages_sent",
            "Messages written to SSE and WebSocket clients.",
            ["transport"],
            namespace=ns,
            registry=reg,
        )
        self.bytes_sent = Counter(
            "stream_bytes_sent", "Bytes written to stream clients.", ["transport"], namespace=ns, registry=reg
        )
        self.slow_consumers = Counter(
            "slow_consumer_disconnects",
            "Clients cut off for reading too slowly.",
            ["transport"],
            namespace=ns,
            registry=reg,
        )
        self.rate_limited = Counter(
            "rate_limit_rejections",
            "Requests refused with 429, by limit group.",
            ["group"],
            namespace=ns,
            registry=reg,
        )
        self.race_points = Counter(
            "race_points_accepted", "Race data points acknowledged (durable).", namespace=ns, registry=reg
        )
        self.race_spooled_points = Gauge(
            "race_spooled_points",
            "Race data points spooled, not archived yet.",
            namespace=ns,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.race_archives = Counter("race_archives", "Race archives uploaded.", namespace=ns, registry=reg)
        self.race_archive_bytes = Counter(
            "race_archive_bytes", "Compressed bytes of race archives uploaded.", namespace=ns, registry=reg
        )
        self.race_archive_failures = Counter(
            "race_archive_failures", "Failed race archive attempts (retried).", namespace=ns, registry=reg
        )
        # The fifth seed's series (generation streams), labelled by the request's `agent`
        # ("" when none was given; see GenerateService for the cap on distinct agents).
        agent = ["agent"]
        self.chunks_sent = Counter("stream_chunks_sent", "Generated chunks sent.", agent, namespace=ns, registry=reg)
        self.sessions_completed = Counter(
            "stream_sessions_completed", "Generation streams completed.", agent, namespace=ns, registry=reg
        )
        self.sessions_failed = Counter(
            "stream_sessions_failed", "Generation streams failed.", agent, namespace=ns, registry=reg
        )
        self.sessions_cancelled = Counter(
            "stream_sessions_cancelled",
            "Generation streams cancelled (the client went away or sent cancel).",
            agent,
            namespace=ns,
            registry=reg,
        )
        self.active_streams = Gauge(
            "active_streams",
            "Generation streams in progress.",
            agent,
            namespace=ns,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.stream_duration = Histogram(
            "stream_duration_seconds",
            "Duration of generation streams.",
            agent,
            namespace=ns,
            registry=reg,
            buckets=_DURATION_BUCKETS,
        )
        self.stream_tokens = Counter(
            "stream_tokens",
            "Tokens of generation streams, cut ones included, by type (prompt or completion).",
            ["agent", "type"],
            namespace=ns,
            registry=reg,
        )
        for series in (self.chunks_sent, self.sessions_completed, self.sessions_failed, self.sessions_cancelled):
            series.labels("")  # exported at 0 before the first generation
        self.active_streams.labels("")
        self.stream_duration.labels("")

    def exposition(self) -> bytes:
        """The text exposition of every metric (all workers' in multiprocess mode)."""
        directory = _multiprocess_dir()
        if directory:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        """The ``/metrics`` route."""
        return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)

    @staticmethod
    def worker_exited() -> None:
        """Forget this process's live gauges (called at shutdown in multiprocess mode)."""
        if _multiprocess_dir():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class MetricsMiddleware:
    """Counts HTTP requests by route template and status, and times them to the response headers.

    Unmatched paths are counted under the route ``unmatched`` so that scanners cannot
    grow the series without bound.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.http_latency.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.http_requests.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: dict[str, Any] | Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
