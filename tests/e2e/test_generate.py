"""Generation streams (the fifth seed), end to end: real servers, the real local model.

Every test talks to ``sluicegate serve`` running the packaged Gemma 3 270M through
llama-cpp-python, with small output limits so that the suite stays fast, and asserts
what a client sees: the seed's events, the seed's error bodies, the model stopping
when the client leaves, and the metrics and log lines an operator reads.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from sluicegate.streaming.sse import SSEDecoder
from tests.e2e.helpers import eventually
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.server import Server

USER = "gen-user-key-0123456789"
ADMIN = "gen-admin-key-0123456789"
KEYS = f"{USER}:user,{ADMIN}:admin"
CAP = 16  # SLUICEGATE_LLM_MAX_OUTPUT_TOKENS of the shared server: default and ceiling


def model_env(gguf: Path, **extra: str) -> dict[str, str]:
    return {
        "SLUICEGATE_API_KEYS": KEYS,
        "SLUICEGATE_LLM_MODEL_PATH": str(gguf),
        "SLUICEGATE_LLM_MAX_OUTPUT_TOKENS": str(CAP),
        "SLUICEGATE_LLM_THREADS": "2",
        "SLUICEGATE_LLM_CONTEXT_TOKENS": "1024",
        **extra,
    }


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server], gguf_path: Path) -> Server:
    return serve_module(None, **model_env(gguf_path))


@pytest.fixture(scope="module")
def long_server(serve_module: Callable[..., Server], gguf_path: Path) -> Server:
    """A server whose generations run long enough to be cut (500 tokens)."""
    return serve_module(None, **model_env(gguf_path, SLUICEGATE_LLM_MAX_OUTPUT_TOKENS="500"))


def parse_stream(body: bytes) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    return [orjson.loads(event.data) for event in decoder.feed(body)]


def assert_complete_stream(events: list[dict[str, Any]], *, max_tokens: int = CAP) -> str:
    """The seed's shape: chunk events indexed from 1, then one completion event that sums them up."""
    *chunks, complete = events
    assert chunks, "the model produced no text"
    assert [c["index"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert all(isinstance(c["chunk"], str) and c["chunk"] for c in chunks)
    assert complete["complete"] is True
    assert complete["totalChunks"] == len(chunks)
    assert complete["fullText"] == "".join(c["chunk"] for c in chunks)
    usage = complete["usage"]
    assert usage["promptTokens"] > 0
    assert 1 <= usage["completionTokens"] <= max_tokens
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    return str(complete["fullText"])


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# -- the seed's examples ----------------------------------------------------------------


def test_seed_curl_streams_real_text_on_a_fresh_install(serve: Callable[..., Server], tmp_path: Path) -> None:
    """The seed's curl command, verbatim, against a server with no model path and no cloud keys:
    the packaged model is assembled into the data dir and answers."""
    server = serve(
        None,
        SLUICEGATE_API_KEYS=KEYS,
        SLUICEGATE_LLM_MAX_OUTPUT_TOKENS="8",
        SLUICEGATE_LLM_CONTEXT_TOKENS="512",
    )
    body = '{\n    "prompt": "Write a haiku about AI",\n    "agent": "poet"\n  }'
    curl = ["curl", "-sS", "-N", "-X", "POST", f"{server.url}/api/stream", "-H", "Content-Type: application/json"]
    result = subprocess.run(
        [*curl, "-H", f"X-API-Key: {USER}", "-d", body],
        capture_output=True,
        timeout=60 * UNIT,
        check=True,
    )
    text = assert_complete_stream(parse_stream(result.stdout), max_tokens=8)
    assert text.strip()
    assert [path.name for path in (tmp_path / "data0" / "models").iterdir()] == ["gemma-3-270m-q4_k_m.gguf"]


def test_seed_fetch_reader_in_node(server: Server) -> None:
    """The seed's JavaScript example, run by Node's own fetch."""
    script = textwrap.dedent(
        f"""
        const response = await fetch('{server.url}/api/stream', {{
          method: 'POST',
          headers: {{'Content-Type': 'application/json', 'X-API-Key': '{USER}'}},
          body: JSON.stringify({{prompt: 'Tell me a story', agent: 'storyteller'}})
        }});
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const seen = [];
        while (true) {{
          const {{done, value}} = await reader.read();
          if (done) break;
          const chunk = decoder.decode(value);
          const lines = chunk.split('\\n');
          for (const line of lines) {{
            if (line.startsWith('data: ')) {{
              const data = JSON.parse(line.substring(6));
              seen.push(data);
            }}
          }}
        }}
        console.log(JSON.stringify(seen));
        """
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60 * UNIT, check=True
    )
    assert_complete_stream(json.loads(result.stdout))


def test_seed_python_requests_example(server: Server) -> None:
    """The seed's Python example (requests, ``iter_lines``), run as a script."""
    script = textwrap.dedent(
        f"""
        import requests
        import json

        response = requests.post(
            '{server.url}/api/stream',
            headers={{'Content-Type': 'application/json', 'X-API-Key': '{USER}'}},
            json={{'prompt': 'Explain quantum computing', 'agent': 'explainer'}},
            stream=True
        )
        seen = []
        for line in response.iter_lines():
            if line.startswith(b'data: '):
                data = json.loads(line[6:])
                seen.append(data)
                if 'chunk' in data:
                    print(data['chunk'], end='', flush=True)
        print()
        print(json.dumps(seen))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60 * UNIT, check=True
    )
    printed, _, last = result.stdout.rstrip("\n").rpartition("\n")
    events = json.loads(last)
    text = assert_complete_stream(events)
    assert printed == text  # what the example prints is the generated text


async def test_options_reach_the_model_and_metrics_carry_the_agent(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        before = (await client.get("/metrics")).text
        response = await client.post(
            "/api/stream",
            headers={"X-API-Key": USER},
            json={
                "prompt": "List three colors",
                "options": {"temperature": 0, "topP": 0.9, "topK": 20, "maxOutputTokens": 5},
                "agent": "lister",
            },
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ratelimit-limit"] == "100"
        events = parse_stream(response.content)
        assert_complete_stream(events, max_tokens=5)
        again = parse_stream(
            (
                await client.post(
                    "/api/stream",
                    headers={"X-API-Key": USER},
                    json={"prompt": "List three colors", "options": {"temperature": 0, "maxOutputTokens": 5}},
                )
            ).content
        )
        assert again[-1]["fullText"] == events[-1]["fullText"]  # temperature 0 is greedy: the same text
        after = (await client.get("/metrics")).text
    chunks = len(events) - 1
    assert (
        metric(after, "sluicegate_stream_chunks_sent_total", agent="lister")
        - metric(before, "sluicegate_stream_chunks_sent_total", agent="lister")
        == chunks
    )
    assert metric(after, "sluicegate_stream_sessions_completed_total", agent="lister") >= 1
    assert metric(after, "sluicegate_stream_duration_seconds_count", agent="lister") >= 1
    usage = events[-1]["usage"]
    assert (
        metric(after, "sluicegate_stream_tokens_total", agent="lister", type="completion") >= usage["completionTokens"]
    )
    assert metric(after, "sluicegate_active_streams") == 0


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"agent": "x"}', "Prompt is required"),
        (b'{"prompt": ""}', "Prompt is required"),
        (b'{"prompt": "   "}', "Prompt is required"),
        (b"", "Prompt is required"),
        (b'{"prompt": 42}', "Prompt must be a string"),
        (b"not json", "Request body must be a JSON object"),
        (b'["prompt"]', "Request body must be a JSON object"),
    ],
)
async def test_bad_bodies_are_400_with_the_seed_message(server: Server, body: bytes, error: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/api/stream", headers={"X-API-Key": USER}, content=body)
    assert response.status_code == 400
    assert response.json()["error"] == error


async def test_bad_options_are_400_naming_them(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            "/api/stream",
            headers={"X-API-Key": USER},
            json={"prompt": "hi", "options": {"temperature": 3, "topK": 0, "top_p": 0.5}},
        )
        too_many = await client.post(
            "/api/stream", headers={"X-API-Key": USER}, json={"prompt": "hi", "options": {"maxOutputTokens": CAP + 1}}
        )
        bad_agent = await client.post("/api/stream", headers={"X-API-Key": USER}, json={"prompt": "hi", "agent": "a b"})
        unknown = await client.post("/api/stream", headers={"X-API-Key": USER}, json={"prompt": "hi", "model": "gpt-9"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Invalid options: temperature, topK, top_p"
    assert {f["field"] for f in body["fields"]} == {"options.temperature", "options.topK", "options.top_p"}
    assert too_many.status_code == 400
    assert too_many.json()["error"] == f"Invalid options: maxOutputTokens must be at most {CAP}"
    assert bad_agent.status_code == 400
    assert bad_agent.json()["fields"][0]["field"] == "agent"
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "Unknown model: gpt-9"
    assert "gemma-3-270m" in unknown.json()["models"]


async def test_missing_and_invalid_keys_are_the_seed_bodies(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        missing = await client.post("/api/stream", json={"prompt": "hi"})
        invalid = await client.post("/api/stream", headers={"X-API-Key": "wrong"}, json={"prompt": "hi"})
    assert missing.status_code == 401
    assert missing.json()["error"] == "Unauthorized: API key is missing."
    assert invalid.status_code == 403
    assert invalid.json()["error"] == "Forbidden: Invalid API key."


async def test_a_cloud_model_without_a_key_fails_to_start(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            "/api/stream", headers={"X-API-Key": USER}, json={"prompt": "hi", "model": "gemini-2.0-flash-exp"}
        )
        models = await client.get("/api/models", headers={"X-API-Key": USER})
    assert response.status_code == 500
    assert response.json()["error"] == "Failed to start stream"
    assert response.json()["message"] == "GEMINI_API_KEY is not set"
    listing = {m["id"]: m for m in models.json()["models"]}
    assert models.json()["default"] == "gemma-3-270m"
    assert listing["gemma-3-270m"]["available"] is True
    assert listing["gemini-2.0-flash-exp"]["available"] is False
    assert listing["gemini-2.0-flash-exp"]["reason"] == "GEMINI_API_KEY is not set"


async def test_rate_limit_tiers(serve: Callable[..., Server]) -> None:
    """Users and admins have their own limits (the seed's 100 and 1,000 per 15 minutes, scaled down)."""
    server = serve(
        None,
        SLUICEGATE_API_KEYS=KEYS,
        SLUICEGATE_RATE_LIMIT_GENERATE="3/15 minutes",
        SLUICEGATE_RATE_LIMIT_GENERATE_ADMIN="5/15 minutes",
    )
    async with httpx.AsyncClient(base_url=server.url) as client:

        async def statuses(key: str, count: int) -> list[httpx.Response]:
            return [await client.post("/api/stream", headers={"X-API-Key": key}, json={}) for _ in range(count)]

        user = await statuses(USER, 4)
        admin = await statuses(ADMIN, 6)
    assert [r.status_code for r in user] == [400, 400, 400, 429]
    assert [r.status_code for r in admin] == [400] * 5 + [429]
    refused = user[-1]
    assert refused.json()["error"] == "Too Many Requests"
    assert refused.json()["message"] == "You have exceeded the request limit. Please try again later."
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert admin[-1].headers["x-ratelimit-limit"] == "5"


async def test_a_full_queue_is_a_503_not_a_hang(serve: Callable[..., Server], gguf_path: Path) -> None:
    server = serve(None, **model_env(gguf_path, SLUICEGATE_LLM_QUEUE_SIZE="0", SLUICEGATE_LLM_MAX_OUTPUT_TOKENS="400"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client:
        async with client.stream(
            "POST", "/api/stream", headers={"X-API-Key": USER}, json={"prompt": "Tell me a very long story"}
        ) as first:
            async for line in first.aiter_lines():
                if line.startswith("data: "):
                    break  # the model is busy with this one
            second = await client.post("/api/stream", headers={"X-API-Key": USER}, json={"prompt": "hi"})
        assert second.status_code == 503
        assert second.json()["error"] == "Service Unavailable"
        assert "busy" in second.json()["message"]
        assert second.headers["retry-after"] == "1"

        async def served() -> bool:  # once the first is cancelled, the model is free again
            response = await client.post(
                "/api/stream", headers={"X-API-Key": USER}, json={"prompt": "hi", "options": {"maxOutputTokens": 2}}
            )
            return response.status_code == 200

        await eventually(served)


# -- cancellation ------------------------------------------------------------------------


async def test_disconnect_after_two_chunks_stops_the_model(long_server: Server) -> None:
    server = long_server
    async with httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client:
        async with client.stream(
            "POST",
            "/api/stream",
            headers={"X-API-Key": USER},
            json={"prompt": "Tell me a very long story", "agent": "quitter"},
        ) as response:
            chunks = 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    chunks += 1
                    if chunks == 2:
                        break
        match = await asyncio.to_thread(
            server.wait_for_log, r'"message":"generation cancelled".*"chunks":(\d+).*"completion_tokens":(\d+)'
        )
        sent, generated = int(match.group(1)), int(match.group(2))
        # The worker checks the flag between tokens: at most one token past what was sent.
        assert 2 <= sent <= generated <= sent + 2
        assert '"agent":"quitter"' in match.group(0)
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "sluicegate_stream_sessions_cancelled_total", agent="quitter") == 1
    assert metric(metrics, "sluicegate_stream_tokens_total", agent="quitter", type="completion") == generated
    assert metric(metrics, "sluicegate_active_streams", agent="quitter") == 0


# -- WebSocket ---------------------------------------------------------------------------


async def recv_until(ws: Any, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 30 * UNIT))
        messages.append(message)
        if done(message):
            return messages


def send(ws: Any, message: dict[str, Any]) -> Any:
    return ws.send(orjson.dumps(message).decode())


async def test_websocket_generates_and_refuses_bad_messages(server: Server) -> None:
    async with connect(f"{server.ws_url}/api/stream/ws", additional_headers={"X-API-Key": USER}) as ws:
        await send(ws, {"type": "generate", "prompt": "Write a haiku about AI", "agent": "socket"})
        assert_complete_stream(await recv_until(ws, lambda m: "complete" in m))

        await send(ws, {"type": "generate", "prompt": ""})
        refused = orjson.loads(await ws.recv())
        assert refused == {"error": "Prompt is required", "code": "invalid_argument", "recoverable": True}

        await send(ws, {"type": "cancel"})
        assert orjson.loads(await ws.recv())["error"] == "No generation is running"
        await send(ws, {"type": "dance"})
        assert orjson.loads(await ws.recv())["error"] == "Unknown message type: send generate or cancel"

        await send(ws, {"type": "generate", "prompt": "Say hello", "options": {"maxOutputTokens": 3}})
        assert_complete_stream(await recv_until(ws, lambda m: "complete" in m), max_tokens=3)


async def test_websocket_cancel_stops_the_model(long_server: Server) -> None:
    server = long_server
    async with connect(f"{server.ws_url}/api/stream/ws", additional_headers={"X-API-Key": USER}) as ws:
        await send(ws, {"type": "generate", "prompt": "Tell me a very long story", "agent": "socket-quitter"})
        first = await recv_until(ws, lambda m: "chunk" in m)
        await send(ws, {"type": "generate", "prompt": "again"})
        await send(ws, {"type": "cancel"})
        rest = await recv_until(ws, lambda m: bool(m.get("cancelled") or m.get("complete")))
    busy = [m for m in rest if "error" in m]
    assert busy[0]["error"] == "A generation is already running; send cancel first"
    cancelled = rest[-1]
    assert cancelled["cancelled"] is True
    chunks = first + [m for m in rest if "chunk" in m]
    assert cancelled["totalChunks"] == len(chunks)
    assert cancelled["fullText"] == "".join(m["chunk"] for m in chunks)
    usage = cancelled["usage"]
    assert len(chunks) <= usage["completionTokens"] <= len(chunks) + 2 < 500
    match = await asyncio.to_thread(
        server.wait_for_log, r'"message":"generation cancelled".*"agent":"socket-quitter".*'
    )
    assert f'"completion_tokens":{usage["completionTokens"]}' in match.group(0)


async def test_websocket_needs_a_key(server: Server) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{server.ws_url}/api/stream/ws"):
            pass
    assert refused.value.response.status_code == 401
