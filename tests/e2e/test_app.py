"""The app around the streams: health, errors, OpenAPI and the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

import sluicegate
from tests.server import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.server import Server


@pytest.fixture(scope="module")
def probe(serve_module: Callable[..., Server]) -> Server:
    return serve_module("tests.e2e.probe_app:create_app")


async def test_health_and_readiness(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_unknown_route_and_wrong_method_answer_json_errors(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        missing = await client.get("/no/such/route")
        wrong = await client.delete("/healthz")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found", "code": "not_found"})
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")


async def test_a_crashing_route_is_a_logged_500_without_a_traceback(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        response = await client.get("/probe/crash")
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error", "code": "internal"}
    probe.wait_for_log(r"unhandled error in GET /probe/crash")
    probe.wait_for_log(r"RuntimeError: secret internals")


async def test_request_validation_errors_are_400_with_the_offending_fields(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        response = await client.post("/probe/room/publish", params={"count": "lots"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert body["fields"] == [
        {
            "field": "query.count",
            "message": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        }
    ]


async def test_openapi_documents_stream_endpoints_and_docs_are_served(probe: Server) -> None:
    async with httpx.AsyncClient(base_url=probe.url) as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    ticks = spec["paths"]["/probe/ticks"]
    assert ticks["get"]["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]["title"] == "Tick"
    assert {p["name"] for p in ticks["get"]["parameters"]} == {"tag", "interval", "Last-Event-ID"}
    assert ticks["x-sluicegate-websocket"]["kind"] == "stream_out"
    assert spec["paths"]["/probe/echo"]["x-sluicegate-websocket"]["kind"] == "stream_in_out"
    assert "/healthz" in spec["paths"]
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_cli_prints_its_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sluicegate", "--version"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"sluicegate {sluicegate.__version__}"


def test_server_stops_cleanly_on_sigterm(serve: Callable[..., Server]) -> None:
    server = serve()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    assert "Application shutdown complete" in server.log
