"""Prometheus metrics, stream telemetry and the HTTP metrics middleware (observability/)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sluicegate.errors import APIError
from sluicegate.observability.metrics import Metrics, MetricsMiddleware
from sluicegate.observability.streams import StreamTelemetry
from sluicegate.security.identity import Identity
from sluicegate.streaming.config import StreamStats
from sluicegate.streaming.streams import StreamInfo

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.requests import Request


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Metrics read this process's registry, not a multiprocess directory."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    yield


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _types(exposition: bytes) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition.decode(), flags=re.MULTILINE))


# --- Metrics -------------------------------------------------------------------------------------


def test_fifth_seed_series_have_exactly_its_names() -> None:
    metrics = Metrics(namespace="amrikyy")
    metrics.chunks_sent.labels(agent="").inc()
    exposition = metrics.exposition().decode()
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", exposition, flags=re.MULTILINE))
    for name in (
        "amrikyy_stream_chunks_sent_total",
        "amrikyy_stream_sessions_completed_total",
        "amrikyy_stream_sessions_failed_total",
        "amrikyy_stream_sessions_cancelled_total",
        "amrikyy_active_streams",
        "amrikyy_stream_duration_seconds_count",
        "amrikyy_stream_duration_seconds_sum",
        "amrikyy_stream_duration_seconds_bucket",
    ):
        assert name in samples, name
    assert 'amrikyy_stream_chunks_sent_total{agent=""} 1.0' in exposition


def test_fifth_seed_series_have_the_right_types() -> None:
    types = _types(Metrics(namespace="amrikyy").exposition())
    assert types["amrikyy_stream_chunks_sent_total"] == "counter"
    assert types["amrikyy_stream_sessions_completed_total"] == "counter"
    assert types["amrikyy_stream_sessions_failed_total"] == "counter"
    assert types["amrikyy_stream_sessions_cancelled_total"] == "counter"
    assert types["amrikyy_active_streams"] == "gauge"
    assert types["amrikyy_stream_duration_seconds"] == "histogram"


def test_every_series_carries_the_namespace() -> None:
    types = _types(Metrics(namespace="amrikyy").exposition())
    assert types
    assert all(name.startswith("amrikyy_") for name in types)


def test_default_namespace_is_sluicegate() -> None:
    types = _types(Metrics().exposition())
    assert types["sluicegate_http_requests_total"] == "counter"
    assert "sluicegate_open_streams" in types
    assert all(name.startswith("sluicegate_") for name in types)


def test_two_instances_do_not_clash() -> None:
    first, second = Metrics(namespace="amrikyy"), Metrics(namespace="amrikyy")
    first.chunks_sent.labels(agent="").inc(5)
    assert _sample(first, "amrikyy_stream_chunks_sent_total", agent="") == 5
    assert _sample(second, "amrikyy_stream_chunks_sent_total", agent="") == 0
    assert first.registry is not second.registry


def test_stream_duration_is_a_histogram_with_buckets() -> None:
    metrics = Metrics(namespace="amrikyy")
    metrics.stream_duration.labels(agent="").observe(0.3)
    metrics.stream_duration.labels(agent="").observe(20)
    assert _sample(metrics, "amrikyy_stream_duration_seconds_count", agent="") == 2
    assert _sample(metrics, "amrikyy_stream_duration_seconds_bucket", agent="", le="0.5") == 1
    assert _sample(metrics, "amrikyy_stream_duration_seconds_bucket", agent="", le="30.0") == 2


async def test_endpoint_serves_the_exposition() -> None:
    metrics = Metrics(namespace="amrikyy")
    metrics.sessions_completed.labels(agent="").inc()
    response = await metrics.endpoint(None)  # type: ignore[arg-type]  # the request is not used
    assert response.media_type is not None and response.media_type.startswith("text/plain")
    assert b'amrikyy_stream_sessions_completed_total{agent=""} 1.0' in bytes(response.body)


# --- StreamTelemetry -----------------------------------------------------------------------------


def _info(transport: str = "sse", tenant: int | None = 4) -> StreamInfo:
    auth = Identity("alice", tenant, "user", frozenset(), "api_key", "k") if tenant is not None else None
    return StreamInfo(path="/api/channels/{channel}/events", transport=transport, last_event_id=None, auth=auth)  # type: ignore[arg-type]


def _stats(sent: int = 0, nbytes: int = 0, received: int = 0) -> StreamStats:
    return StreamStats(started=0.0, frames_sent=sent, bytes_sent=nbytes, messages_received=received)


@pytest.fixture
def telemetry() -> StreamTelemetry:
    return StreamTelemetry(Metrics(namespace="t"))


@pytest.fixture
def stream_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for ``sluicegate.streams``, even if other code configured those loggers not to propagate."""
    for name in ("sluicegate", "sluicegate.streams"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    with caplog.at_level(logging.DEBUG, logger="sluicegate.streams"):
        yield caplog


def _open(telemetry: StreamTelemetry, kind: str = "out", transport: str = "sse") -> float:
    return _sample(telemetry.metrics, "t_open_streams", kind=kind, transport=transport)


def test_opened_and_closed_move_open_streams(telemetry: StreamTelemetry) -> None:
    first, second = _info(), _info()
    telemetry.opened(first, "out")
    telemetry.opened(second, "out")
    assert _open(telemetry, "stream_out") == 2
    telemetry.closed(first, "out", "completed", None, _stats(), 1.0)
    assert _open(telemetry, "stream_out") == 1
    telemetry.closed(second, "out", "disconnected", None, _stats(), 1.0)
    assert _open(telemetry, "stream_out") == 0


def test_open_streams_are_labelled_by_kind_and_transport(telemetry: StreamTelemetry) -> None:
    telemetry.opened(_info("websocket"), "in_out")
    telemetry.opened(_info("http"), "in")
    assert _open(telemetry, "stream_in_out", "websocket") == 1
    assert _open(telemetry, "stream_in", "http") == 1
    assert _open(telemetry, "stream_out", "sse") == 0


def test_closed_adds_messages_and_bytes(telemetry: StreamTelemetry) -> None:
    telemetry.opened(_info(), "out")
    telemetry.closed(_info(), "out", "completed", None, _stats(sent=3, nbytes=120), 0.5)
    telemetry.opened(_info(), "out")
    telemetry.closed(_info(), "out", "completed", None, _stats(sent=2, nbytes=30), 0.5)
    m = telemetry.metrics
    assert _sample(m, "t_stream_messages_sent_total", transport="sse") == 5
    assert _sample(m, "t_stream_bytes_sent_total", transport="sse") == 150


def test_slow_consumers_are_counted(telemetry: StreamTelemetry) -> None:
    error = APIError.slow_consumer("too slow")
    telemetry.opened(_info("websocket"), "out")
    telemetry.closed(_info("websocket"), "out", "slow_consumer", error, _stats(), 2.0)
    telemetry.opened(_info("websocket"), "out")
    telemetry.closed(_info("websocket"), "out", "completed", None, _stats(), 2.0)
    assert _sample(telemetry.metrics, "t_slow_consumer_disconnects_total", transport="websocket") == 1


def test_open_is_logged_at_info_with_fields(telemetry: StreamTelemetry, stream_logs: pytest.LogCaptureFixture) -> None:
    info = _info()
    telemetry.opened(info, "out")
    (record,) = [r for r in stream_logs.records if r.name == "sluicegate.streams"]
    fields: dict[str, Any] = record.__dict__
    assert record.levelno == logging.INFO
    assert info.id in record.getMessage()
    assert (fields["stream_id"], fields["route"], fields["tenant"]) == (info.id, info.path, 4)
    assert (fields["kind"], fields["transport"]) == ("stream_out", "sse")


def _closed_record(
    telemetry: StreamTelemetry,
    logs: pytest.LogCaptureFixture,
    outcome: Any,
    error: APIError | None,
    info: StreamInfo | None = None,
) -> logging.LogRecord:
    info = info or _info()
    telemetry.opened(info, "out")
    logs.clear()
    telemetry.closed(info, "out", outcome, error, _stats(sent=3, nbytes=10, received=2), 1.23456)
    (record,) = [r for r in logs.records if r.name == "sluicegate.streams"]
    return record


def test_completed_stream_is_logged_at_info_with_outcome_and_counts(
    telemetry: StreamTelemetry, stream_logs: pytest.LogCaptureFixture
) -> None:
    info = _info()
    record = _closed_record(telemetry, stream_logs, "completed", None, info)
    fields: dict[str, Any] = record.__dict__
    assert record.levelno == logging.INFO
    assert (fields["stream_id"], fields["route"], fields["tenant"]) == (info.id, info.path, 4)
    assert (fields["outcome"], fields["error"]) == ("completed", None)
    assert fields["duration_ms"] == 1234.6
    assert (fields["sent"], fields["received"]) == (3, 2)
    assert "completed after 1.235s, 3 sent, 2 received" in record.getMessage()


def test_slow_consumer_is_logged_at_warning(telemetry: StreamTelemetry, stream_logs: pytest.LogCaptureFixture) -> None:
    record = _closed_record(telemetry, stream_logs, "slow_consumer", APIError.slow_consumer("too slow"))
    assert record.levelno == logging.WARNING
    assert record.__dict__["outcome"] == "slow_consumer"
    assert record.__dict__["error"] == "slow_consumer"


def test_server_error_is_logged_at_error(telemetry: StreamTelemetry, stream_logs: pytest.LogCaptureFixture) -> None:
    record = _closed_record(telemetry, stream_logs, "error", APIError.internal())
    assert record.levelno == logging.ERROR
    assert record.__dict__["error"] == "internal"
    assert "error (internal)" in record.getMessage()


def test_client_error_is_logged_at_info(telemetry: StreamTelemetry, stream_logs: pytest.LogCaptureFixture) -> None:
    record = _closed_record(telemetry, stream_logs, "error", APIError.not_found("gone"))
    assert record.levelno == logging.INFO
    assert record.__dict__["error"] == "not_found"


def test_stream_without_auth_logs_no_tenant(telemetry: StreamTelemetry, stream_logs: pytest.LogCaptureFixture) -> None:
    record = _closed_record(telemetry, stream_logs, "completed", None, _info(tenant=None))
    assert record.__dict__["tenant"] is None


# --- MetricsMiddleware ---------------------------------------------------------------------------


async def _item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['id']}")


async def _boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def _client(metrics: Metrics) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/items/{id}", _item), Route("/boom", _boom)],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_requests_are_counted_by_route_template() -> None:
    metrics = Metrics(namespace="h")
    async with _client(metrics) as client:
        for item in ("1", "2", "3"):
            assert (await client.get(f"/items/{item}")).status_code == 200
    labels = {"method": "GET", "route": "/items/{id}", "status": "200"}
    assert _sample(metrics, "h_http_requests_total", **labels) == 3
    assert _sample(metrics, "h_http_requests_total", method="GET", route="/items/1", status="200") == 0


async def test_unknown_paths_are_counted_as_unmatched() -> None:
    metrics = Metrics(namespace="h")
    async with _client(metrics) as client:
        assert (await client.get("/nope")).status_code == 404
        assert (await client.get("/wp-admin/setup.php")).status_code == 404
    assert _sample(metrics, "h_http_requests_total", method="GET", route="unmatched", status="404") == 2
    exposition = metrics.exposition().decode()
    assert "/nope" not in exposition
    assert "wp-admin" not in exposition


async def test_status_and_method_are_labels() -> None:
    metrics = Metrics(namespace="h")
    async with _client(metrics) as client:
        assert (await client.post("/items/1")).status_code == 405
    assert _sample(metrics, "h_http_requests_total", method="POST", route="/items/{id}", status="405") == 1


async def test_unhandled_exception_is_counted_as_500() -> None:
    metrics = Metrics(namespace="h")
    async with _client(metrics) as client:
        assert (await client.get("/boom")).status_code == 500
    assert _sample(metrics, "h_http_requests_total", method="GET", route="/boom", status="500") == 1


async def test_latency_is_observed_per_route() -> None:
    metrics = Metrics(namespace="h")
    async with _client(metrics) as client:
        await client.get("/items/1")
        await client.get("/items/2")
    labels = {"method": "GET", "route": "/items/{id}"}
    assert _sample(metrics, "h_http_request_duration_seconds_count", **labels) == 2
    total = _sample(metrics, "h_http_request_duration_seconds_sum", **labels)
    assert 0 < total < 5


async def test_non_http_scopes_pass_through_uncounted() -> None:
    metrics = Metrics(namespace="h")
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        return None

    await MetricsMiddleware(app, metrics)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
    assert "h_http_requests_total{" not in metrics.exposition().decode()
