"""Identities, tenants, rate limits, metrics and logs, against real servers."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sluicegate.clock import ManualClock
from sluicegate.security.identity import TokenService
from tests.brokers import drop, fresh_url
from tests.e2e.helpers import eventually, loads, read_events
from tests.server import ROOT, UNIT, start_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.server import Server

APP = "tests.e2e.secure_app:create_app"
SECRET = "test-secret-" + "s" * 40
USER_KEY, ADMIN_KEY, TENANT7_KEY = "sk-user-4f0c2d9e", "sk-admin-77ab31c5", "sk-tenant7-0d9e8f11"
KEYS = f"{USER_KEY}:user,{ADMIN_KEY}:admin,{TENANT7_KEY}:user:7"
BASE_ENV = {"SLUICEGATE_API_KEYS": KEYS, "SLUICEGATE_JWT_SECRET": SECRET}


def token(tenant: int, *, scopes: tuple[str, ...] = (), secret: str = SECRET, ttl: timedelta | None = None) -> str:
    now = datetime.now(UTC) if ttl is None or ttl > timedelta(0) else datetime.now(UTC) + ttl - timedelta(hours=1)
    service = TokenService(secret, clock=ManualClock(start=now))
    issued, _ = service.issue(tenant=tenant, subject="tester", scopes=scopes, ttl=ttl or timedelta(hours=1))
    return issued


@pytest.fixture(scope="module")
def secure(serve_module: Callable[..., Server]) -> Server:
    return serve_module(APP, **BASE_ENV)


# -- identities ---------------------------------------------------------------------------

EXPIRED = "expired"
FAILURES: list[tuple[str, dict[str, str], int, str]] = [
    ("missing", {}, 401, "Unauthorized: API key or bearer token is missing."),
    ("unknown key", {"X-API-Key": "sk-nobody"}, 403, "Forbidden: Invalid API key."),
    ("expired token", {"Authorization": EXPIRED}, 401, "Unauthorized: token has expired."),
    ("malformed token", {"Authorization": "Bearer not.a.jwt"}, 401, "Unauthorized: token is malformed."),
    ("wrong signature", {"Authorization": "forged"}, 401, "Unauthorized: token signature is invalid."),
    (
        "wrong scheme",
        {"Authorization": "Basic dXNlcjpwYXNz"},
        401,
        "Unauthorized: use 'Authorization: Bearer <token>'.",
    ),
]


def _headers(headers: dict[str, str]) -> dict[str, str]:
    value = headers.get("Authorization")
    if value == EXPIRED:
        return {"Authorization": f"Bearer {token(1, ttl=timedelta(seconds=-30))}"}
    if value == "forged":
        return {"Authorization": f"Bearer {token(1, secret='another-secret-' + 'x' * 40)}"}
    return headers


@pytest.mark.parametrize(("case", "headers", "status", "message"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_each_auth_failure_is_refused_on_http_sse_and_websocket(
    secure: Server, case: str, headers: dict[str, str], status: int, message: str
) -> None:
    headers = _headers(headers)
    async with httpx.AsyncClient(base_url=secure.url) as client:
        http = await client.post("/secure/notes", json={"text": "x"}, headers=headers)
        sse = await client.get("/secure/whoami", headers=headers)
    assert (http.status_code, http.json()["error"]) == (status, message)
    assert (sse.status_code, sse.json()["error"]) == (status, message)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{secure.ws_url}/secure/whoami", additional_headers=headers):
            pass
    assert refused.value.response.status_code == status
    assert loads(refused.value.response.body)["error"] == message


async def test_api_key_route_names_the_missing_key_as_the_fifth_seed_does(secure: Server) -> None:
    async with httpx.AsyncClient(base_url=secure.url) as client:
        missing = await client.post("/secure/generate-limited")
        unknown = await client.post("/secure/generate-limited", headers={"X-API-Key": "sk-nobody"})
    assert (missing.status_code, missing.json()) == (
        401,
        {"error": "Unauthorized: API key is missing.", "code": "unauthenticated"},
    )
    assert (unknown.status_code, unknown.json()) == (
        403,
        {"error": "Forbidden: Invalid API key.", "code": "permission_denied"},
    )


async def test_identities_from_keys_and_tokens_reach_streams(secure: Server) -> None:
    async with httpx.AsyncClient(base_url=secure.url) as client:
        by_key = await read_events(client, "/secure/whoami", 1, headers={"X-API-Key": TENANT7_KEY})
        by_token = await read_events(
            client, "/secure/whoami", 1, headers={"Authorization": f"Bearer {token(12, scopes=('read',))}"}
        )
    assert {k: v for k, v in loads(by_key[0].data).items() if k != "subject"} == {
        "tenant": 7,
        "role": "user",
        "scopes": [],
        "method": "api_key",
    }
    assert USER_KEY not in by_key[0].data and TENANT7_KEY not in by_key[0].data
    assert loads(by_token[0].data) == {
        "subject": "tester",
        "tenant": 12,
        "role": "user",
        "scopes": ["read"],
        "method": "bearer",
    }
    async with connect(f"{secure.ws_url}/secure/whoami?access_token={token(3)}") as ws:
        assert loads(await ws.recv())["tenant"] == 3


async def test_admin_key_issues_tokens_and_others_cannot(secure: Server) -> None:
    body = {"tenant": 42, "scopes": ["admin", "read"], "ttlSeconds": 600}
    async with httpx.AsyncClient(base_url=secure.url) as client:
        user = await client.post("/api/auth/tokens", json=body, headers={"X-API-Key": USER_KEY})
        bad = await client.post("/api/auth/tokens", json={"tenant": "x"}, headers={"X-API-Key": ADMIN_KEY})
        issued = await client.post("/api/auth/tokens", json=body, headers={"X-API-Key": ADMIN_KEY})
        token_value = issued.json()["token"]
        who = await read_events(client, "/secure/whoami", 1, headers={"Authorization": f"Bearer {token_value}"})
    assert (user.status_code, user.json()["error"]) == (403, "Forbidden: admin API key required.")
    assert bad.status_code == 400 and bad.json()["fields"][0]["field"] == "body.tenant"
    assert issued.status_code == 201
    assert issued.json()["tokenType"] == "Bearer" and issued.json()["expiresIn"] == 600
    claims = jwt.decode(token_value, SECRET, algorithms=["HS256"])
    assert (claims["tenant"], claims["scopes"], claims["exp"] - claims["iat"]) == (42, ["admin", "read"], 600)
    assert loads(who[0].data)["role"] == "admin"


async def test_cli_tokens_use_the_generated_secret_which_survives_a_restart(tmp_path: Path) -> None:
    env = {"SLUICEGATE_API_KEYS": KEYS}
    server = start_server(APP, tmp_path, env)
    try:
        secret_file = tmp_path / "jwt_secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        cli_env["SLUICEGATE_DATA_DIR"] = str(tmp_path)
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "sluicegate", "token", "create", "--tenant", "5", "--scope", "admin"],
            *["--ttl", "1h"],
            cwd=ROOT,
            env=cli_env,
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await process.communicate()
        assert process.returncode == 0
        cli_token = stdout.decode().strip()
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await read_events(client, "/secure/whoami", 1, headers={"Authorization": f"Bearer {cli_token}"})
    finally:
        server.stop()
    again = start_server(APP, tmp_path, env)
    try:
        async with httpx.AsyncClient(base_url=again.url) as client:
            second = await read_events(client, "/secure/whoami", 1, headers={"Authorization": f"Bearer {cli_token}"})
    finally:
        again.stop()
    assert loads(first[0].data)["tenant"] == 5 and loads(first[0].data)["role"] == "admin"
    assert loads(second[0].data) == loads(first[0].data)
    assert secret_file.read_text() not in server.log + again.log


# -- tenants ------------------------------------------------------------------------------


async def test_another_tenants_things_answer_404_like_missing_ones(secure: Server) -> None:
    mine, theirs = {"Authorization": f"Bearer {token(100)}"}, {"Authorization": f"Bearer {token(200)}"}
    async with httpx.AsyncClient(base_url=secure.url) as client:
        note_id = (await client.post("/secure/notes", json={"text": "tenant 100 only"}, headers=mine)).json()["id"]
        own = await client.get(f"/secure/notes/{note_id}", headers=mine)
        foreign = await client.get(f"/secure/notes/{note_id}", headers=theirs)
        missing = await client.get("/secure/notes/999999", headers=theirs)
        foreign_stream = await client.get(f"/secure/notes/{note_id}/watch", headers=theirs)
        own_stream = await read_events(client, f"/secure/notes/{note_id}/watch", 1, headers=mine)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{secure.ws_url}/secure/notes/{note_id}/watch", additional_headers=theirs):
            pass
    assert refused.value.response.status_code == 404
    assert loads(refused.value.response.body)["error"] == "Note not found"
    assert own.status_code == 200 and own.json()["text"] == "tenant 100 only"
    assert foreign.status_code == 404 and missing.status_code == 404
    assert foreign.json()["error"] == missing.json()["error"] == "Note not found"
    assert foreign_stream.status_code == 404
    assert loads(own_stream[0].data)["text"] == "tenant 100 only"


# -- rate limits --------------------------------------------------------------------------


def _limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    return (
        int(response.headers["x-ratelimit-limit"]),
        int(response.headers["x-ratelimit-remaining"]),
        int(response.headers["x-ratelimit-reset"]),
    )


async def test_tenant_limit_counts_per_tenant_and_answers_the_second_seeds_429(serve: Callable[..., Server]) -> None:
    server = serve(APP, SLUICEGATE_RATE_LIMIT_TENANT="3/minute", **BASE_ENV)
    tenant1, tenant2 = {"Authorization": f"Bearer {token(1)}"}, {"Authorization": f"Bearer {token(2)}"}
    async with httpx.AsyncClient(base_url=server.url) as client:
        allowed = [await client.get("/secure/tenant-limited", headers=tenant1) for _ in range(3)]
        refused = await client.get("/secure/tenant-limited", headers=tenant1)
        other = await client.get("/secure/tenant-limited", headers=tenant2)
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [_limit_headers(r)[:2] for r in allowed] == [(3, 2), (3, 1), (3, 0)]
    now = datetime.now(UTC).timestamp()
    assert now < _limit_headers(allowed[0])[2] <= now + 61
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"] == "Rate limit exceeded" and body["message"] == "Too many requests to streaming API"
    assert (body["limit"], body["window"]) == (3, "1 minute")
    assert 0 < body["retryAfter"] <= 60 and refused.headers["retry-after"] == str(body["retryAfter"])
    assert _limit_headers(refused)[:2] == (3, 0)
    assert other.status_code == 200  # another tenant has its own count
    assert re.search(r'sluicegate_rate_limit_rejections_total\{group="tenant"\} 1\.0', metrics)


async def test_generate_limit_has_a_user_tier_and_an_admin_tier(serve: Callable[..., Server]) -> None:
    server = serve(
        APP,
        SLUICEGATE_RATE_LIMIT_GENERATE="2/15 minutes",
        SLUICEGATE_RATE_LIMIT_GENERATE_ADMIN="4/15 minutes",
        **BASE_ENV,
    )
    async with httpx.AsyncClient(base_url=server.url) as client:
        user = [await client.post("/secure/generate-limited", headers={"X-API-Key": USER_KEY}) for _ in range(3)]
        admin = [await client.post("/secure/generate-limited", headers={"X-API-Key": ADMIN_KEY}) for _ in range(5)]
    assert [r.status_code for r in user] == [200, 200, 429]
    assert user[2].json() == {
        "error": "Too Many Requests",
        "code": "resource_exhausted",
        "message": "You have exceeded the request limit. Please try again later.",
    }
    assert 800 < int(user[2].headers["retry-after"]) <= 900
    assert [r.status_code for r in admin] == [200, 200, 200, 200, 429]
    assert _limit_headers(admin[0])[:2] == (4, 3)


async def test_streaming_ip_limit_applies_to_streams_and_the_whitelist_bypasses_it(
    serve: Callable[..., Server],
) -> None:
    limited = serve(APP, SLUICEGATE_RATE_LIMIT_STREAMING_IP="2/minute", **BASE_ENV)
    whitelisted = serve(
        APP,
        SLUICEGATE_RATE_LIMIT_STREAMING_IP="2/minute",
        SLUICEGATE_RATE_LIMIT_WHITELIST="10.0.0.0/8, 127.0.0.1",
        **BASE_ENV,
    )
    async with httpx.AsyncClient(base_url=limited.url) as client:
        first = await client.get("/secure/limited")
        await client.get("/secure/limited")
        refused = await client.get("/secure/limited")
    with pytest.raises(InvalidStatus) as ws_refused:
        async with connect(f"{limited.ws_url}/secure/limited"):
            pass
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
    assert _limit_headers(first)[:2] == (2, 1)
    assert (refused.status_code, refused.json()) == (
        429,
        {"error": "Streaming rate limit exceeded", "code": "resource_exhausted", "status": 429},
    )
    assert ws_refused.value.response.status_code == 429
    async with httpx.AsyncClient(base_url=whitelisted.url) as client:
        responses = [await client.get("/secure/limited") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert "x-ratelimit-limit" not in responses[0].headers


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(serve: Callable[..., Server]) -> None:
    untrusted = serve(APP, SLUICEGATE_RATE_LIMIT_STREAMING_IP="1/minute", **BASE_ENV)
    trusted = serve(
        APP, SLUICEGATE_RATE_LIMIT_STREAMING_IP="1/minute", SLUICEGATE_TRUSTED_PROXIES="127.0.0.1", **BASE_ENV
    )

    async def statuses(server: Server) -> list[int]:
        async with httpx.AsyncClient(base_url=server.url) as client:
            return [
                (await client.get("/secure/limited", headers={"X-Forwarded-For": f"203.0.113.{n}"})).status_code
                for n in range(3)
            ]

    assert await statuses(untrusted) == [200, 429, 429]  # a client cannot pick its own IP
    assert await statuses(trusted) == [200, 200, 200]  # each forwarded client has its own count


# -- metrics and logs ---------------------------------------------------------------------


def _sample(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_when_streams_run_and_the_seed_names_exist(serve: Callable[..., Server]) -> None:
    server = serve("tests.e2e.probe_app:create_app", SLUICEGATE_METRICS_NAMESPACE="amrikyy")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await read_events(client, "/probe/ticks?tag=metrics", 5)
        async with client.stream("GET", "/probe/silent"):

            async def one_open() -> bool:
                text = (await client.get("/api/metrics")).text
                return _sample(text, "amrikyy_open_streams", kind="stream_out", transport="sse") == 1.0

            await eventually(one_open)

        async def none_open() -> str | None:
            text = (await client.get("/metrics")).text
            return text if _sample(text, "amrikyy_open_streams", kind="stream_out", transport="sse") == 0 else None

        metrics = await eventually(none_open)
    assert _sample(metrics, "amrikyy_stream_messages_sent_total", transport="sse") >= 5
    assert _sample(metrics, "amrikyy_stream_bytes_sent_total", transport="sse") > 0
    assert _sample(metrics, "amrikyy_http_requests_total", route="/api/metrics", status="200") >= 1
    assert _sample(metrics, "amrikyy_http_request_duration_seconds_count", route="/api/metrics") >= 1
    for name in (
        "amrikyy_stream_chunks_sent_total",
        "amrikyy_stream_sessions_completed_total",
        "amrikyy_stream_sessions_failed_total",
        "amrikyy_stream_sessions_cancelled_total",
        "amrikyy_active_streams",
        "amrikyy_stream_duration_seconds_bucket",
    ):
        assert re.search(rf"^{name}(\{{| )", metrics, re.MULTILINE), name
    assert "sluicegate_" not in metrics


async def test_metrics_are_summed_over_workers(serve: Callable[..., Server]) -> None:
    broker = fresh_url("redis")  # several workers need a broker they share
    server = serve(APP, SLUICEGATE_WORKERS="2", SLUICEGATE_BROKER_URL=broker, **BASE_ENV)
    try:
        await _count_requests_over_workers(server)
    finally:
        server.stop()
        await drop(broker)


def test_several_workers_on_the_in_memory_broker_are_refused_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env.update(BASE_ENV, SLUICEGATE_DATA_DIR=str(tmp_path), SLUICEGATE_WORKERS="2")
    done = subprocess.run(
        [sys.executable, "-m", "sluicegate", "serve", "--port", "0", "--app", APP],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers 2 needs a shared broker" in done.stderr
    assert "SLUICEGATE_BROKER_URL" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


async def _count_requests_over_workers(server: Server) -> None:
    requests = 40
    async with httpx.AsyncClient(base_url=server.url) as client:
        await eventually(lambda: _both_workers_up(server))
        for _ in range(requests):
            # A new connection each time, so that both workers take some.
            await client.get("/healthz", headers={"Connection": "close"})
        scrapes = [(await client.get("/metrics", headers={"Connection": "close"})).text for _ in range(4)]
    counts = {_sample(text, "sluicegate_http_requests_total", route="/healthz", status="200") for text in scrapes}
    assert counts == {float(requests)}


async def _both_workers_up(server: Server) -> bool:
    return len(re.findall(r"Application startup complete", server.log)) >= 2


@pytest.fixture
def chatty(tmp_path: Path) -> Iterator[Server]:
    env = {**BASE_ENV, "SLUICEGATE_LOG_LEVEL": "debug", "SLUICEGATE_ACCESS_LOG": "true"}
    server = start_server(APP, tmp_path, env)
    yield server
    server.stop()


async def test_streams_log_start_and_end_and_no_secret_ever_reaches_the_logs(chatty: Server) -> None:
    bearer = token(7)
    async with httpx.AsyncClient(base_url=chatty.url) as client:
        await read_events(client, "/secure/whoami", 1, headers={"X-API-Key": TENANT7_KEY})
        await read_events(client, "/secure/whoami", 1, headers={"Authorization": f"Bearer {bearer}"})
        await read_events(client, f"/secure/whoami?access_token={bearer}", 1)
        await client.get("/secure/whoami", headers={"X-API-Key": "sk-wrong-guess-123"})
        await client.post("/api/auth/tokens", json={"tenant": 1}, headers={"X-API-Key": ADMIN_KEY})
    async with connect(f"{chatty.ws_url}/secure/whoami?access_token={bearer}") as ws:
        await ws.recv()
    await asyncio.sleep(0.2 * UNIT)  # let the last lines reach the pipe
    log = chatty.log
    for secret in (TENANT7_KEY, ADMIN_KEY, USER_KEY, "sk-wrong-guess-123", bearer, SECRET):
        assert secret not in log
    assert "access_token=[redacted]" in log  # the access log did record the request, redacted

    records = [loads(line) for line in log.splitlines() if line.startswith("{")]
    ended = [r for r in records if "Stream ended /secure/whoami" in r["message"]]
    started = [r for r in records if "Stream started /secure/whoami" in r["message"]]
    assert len(started) == len(ended) == 4
    first = ended[0]
    assert first["level"] == "INFO" and first["tenant"] == 7 and first["route"] == "/secure/whoami"
    assert first["outcome"] == "completed" and first["sent"] == 1 and first["duration_ms"] >= 0
    assert first["stream_id"] == started[0]["stream_id"] and first["message"].startswith(f"[{first['stream_id']}]")


async def test_rate_limits_are_shared_by_nodes_on_the_same_redis(serve: Callable[..., Server]) -> None:
    env = {**BASE_ENV, "SLUICEGATE_RATE_LIMIT_TENANT": "3/minute", "SLUICEGATE_REDIS_URL": "redis://127.0.0.1:6379/0"}
    node_a, node_b = serve(APP, **env), serve(APP, **env)
    tenant = int.from_bytes(os.urandom(4), "big")  # a tenant no earlier run has counted
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    statuses = []
    for node in (node_a, node_a, node_b, node_b, node_a):
        async with httpx.AsyncClient(base_url=node.url) as client:
            statuses.append((await client.get("/secure/tenant-limited", headers=headers)).status_code)
    async with httpx.AsyncClient(base_url=node_b.url) as client:
        ready = await client.get("/readyz")
    assert statuses == [200, 200, 200, 429, 429]
    assert ready.json()["engines"]["rate_limits"] == "ok"
