"""Generation through the remote providers, end to end.

- ``openai``: the gateway in front of llama-cpp-python's OpenAI-compatible server
  (``python -m llama_cpp.server``), a real third-party server on loopback;
- ``gemini``: the gateway in front of a loopback HTTP server that records the request
  and answers with Gemini-shaped SSE frames (``tests/fixtures``): the real API cannot be
  reached from here, so its request building and frame parsing are what is tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson
import pytest

from sluicegate.streaming.sse import SSEDecoder
from tests.e2e.helpers import eventually
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.server import Server

KEY = "providers-key-0123456789"
LLAMA_ARGS = (
    "--model_alias",
    "gemma",
    "--chat_format",
    "gemma",
    "--host",
    "127.0.0.1",
    "--n_ctx",
    "1024",
    "--n_threads",
    "2",
)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def events_of(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(event.data) for event in SSEDecoder().feed(body)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- OpenAI-compatible: llama.cpp's server ------------------------------------------------


class LlamaServer:
    def __init__(self, gguf: Path) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), *LLAMA_ARGS, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 60 * UNIT
        while time.monotonic() < deadline:
            if any("Uvicorn running on" in line for line in list(self.lines)):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("llama_cpp.server did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def connections(self) -> int:
        """Established TCP connections to the server's port, from /proc."""
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "01" and int(local.rpartition(":")[2], 16) == self.port:
                    count += 1
        return count

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (user and system), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def llama_server(gguf_path: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(gguf_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openai_gateway(serve_module: Callable[..., Server], llama_server: LlamaServer) -> Server:
    return serve_module(
        None,
        SLUICEGATE_API_KEYS=f"{KEY}:user",
        SLUICEGATE_OPENAI_BASE_URL=llama_server.url,
        SLUICEGATE_LLM_MODELS=json.dumps(
            {"gemma-3-270m": "local", "remote-gemma": "openai:gemma", "unreachable": "openai:gemma"}
        ),
        SLUICEGATE_LLM_MAX_OUTPUT_TOKENS="500",
    )


async def test_openai_compatible_provider_streams_through_the_gateway(openai_gateway: Server) -> None:
    async with httpx.AsyncClient(base_url=openai_gateway.url, timeout=60 * UNIT) as client:
        response = await client.post(
            "/api/stream",
            headers={"X-API-Key": KEY},
            json={"prompt": "Write a haiku about AI", "model": "remote-gemma", "options": {"maxOutputTokens": 12}},
        )
        models = (await client.get("/api/models", headers={"X-API-Key": KEY})).json()["models"]
    assert response.status_code == 200
    *chunks, complete = events_of(response.content)
    assert chunks and [c["index"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert complete["fullText"] == "".join(c["chunk"] for c in chunks)
    assert complete["totalChunks"] == len(chunks)
    # llama.cpp's server sends no usage frame: the gateway counts what it received, and says so.
    usage = complete["usage"]
    assert usage["estimated"] is True
    assert usage["completionTokens"] == len(chunks) <= 12
    remote = next(m for m in models if m["id"] == "remote-gemma")
    assert remote == {
        "id": "remote-gemma",
        "provider": "openai",
        "available": True,
        "default": False,
        "upstreamModel": "gemma",
    }


async def test_disconnect_closes_the_upstream_request(openai_gateway: Server, llama_server: LlamaServer) -> None:
    async with (
        httpx.AsyncClient(base_url=openai_gateway.url, timeout=60 * UNIT) as client,
        client.stream(
            "POST",
            "/api/stream",
            headers={"X-API-Key": KEY},
            json={"prompt": "Tell me a very long story", "model": "remote-gemma", "agent": "remote-quitter"},
        ) as response,
    ):
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 2:
                    break
    await asyncio.to_thread(
        openai_gateway.wait_for_log, r'"message":"generation cancelled".*"provider":"openai".*"remote-quitter"'
    )
    # The gateway closed its upstream request...
    await eventually(lambda: asyncio.to_thread(lambda: llama_server.connections() == 0))
    # ...and llama.cpp's server stopped: generating, it burns about a CPU second per second.
    before = llama_server.cpu_seconds()
    await asyncio.sleep(1.0 * UNIT)
    spent = llama_server.cpu_seconds() - before
    assert spent < 0.25, f"the upstream kept generating after the client left ({spent:.2f} CPU s in 1 s)"


async def test_unreachable_upstream_fails_to_start(serve: Callable[..., Server]) -> None:
    gateway = serve(
        None,
        SLUICEGATE_API_KEYS=f"{KEY}:user",
        SLUICEGATE_OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
        SLUICEGATE_LLM_MODELS=json.dumps({"gemma-3-270m": "local", "remote": "openai"}),
    )
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(
            "/api/stream", headers={"X-API-Key": KEY}, json={"prompt": "hi", "model": "remote"}
        )
    assert response.status_code == 500
    assert response.json()["error"] == "Failed to start stream"
    assert response.json()["message"].startswith("cannot reach openai upstream: ClientConnectorError")


# -- Gemini: frames replayed by a loopback server -----------------------------------------


class GeminiReplay(BaseHTTPRequestHandler):
    """Answers every POST with the fixture named by the server's ``fixture`` and records the request."""

    requests: ClassVar[list[dict[str, Any]]] = []
    fixture: ClassVar[str] = "gemini_haiku.sse"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        GeminiReplay.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        payload = (FIXTURES / GeminiReplay.fixture).read_bytes()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        for event in payload.split(b"\r\n\r\n"):  # one write per event, as a stream arrives
            if event:
                self.wfile.write(event + b"\r\n\r\n")
                self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def gemini_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), GeminiReplay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1beta"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gemini_gateway(serve_module: Callable[..., Server], gemini_upstream: str) -> Server:
    return serve_module(
        None,
        SLUICEGATE_API_KEYS=f"{KEY}:user",
        GEMINI_API_KEY="test-gemini-key",
        SLUICEGATE_GEMINI_BASE_URL=gemini_upstream,
    )


async def test_gemini_request_and_frames(gemini_gateway: Server) -> None:
    GeminiReplay.requests.clear()
    GeminiReplay.fixture = "gemini_haiku.sse"
    async with httpx.AsyncClient(base_url=gemini_gateway.url) as client:
        # With GEMINI_API_KEY set, the seed's model is the default.
        response = await client.post(
            "/api/stream",
            headers={"X-API-Key": KEY},
            json={
                "prompt": "Write a haiku about AI",
                "options": {"temperature": 0.2, "topK": 20, "maxOutputTokens": 64},
            },
        )
    assert response.status_code == 200
    events = events_of(response.content)
    assert events == [
        {"chunk": "Silicon", "index": 1},
        {"chunk": " minds awake,\nLearning from", "index": 2},
        {"chunk": " all we know,\nFuture's gentle hum.", "index": 3},
        {
            "complete": True,
            "totalChunks": 3,
            "fullText": "Silicon minds awake,\nLearning from all we know,\nFuture's gentle hum.",
            "usage": {"promptTokens": 7, "completionTokens": 17, "totalTokens": 24},
        },
    ]
    [sent] = GeminiReplay.requests
    assert sent["path"] == "/v1beta/models/gemini-2.0-flash-exp:streamGenerateContent?alt=sse"
    assert sent["headers"]["x-goog-api-key"] == "test-gemini-key"
    assert sent["body"] == {
        "contents": [{"role": "user", "parts": [{"text": "Write a haiku about AI"}]}],
        "generationConfig": {"temperature": 0.2, "topK": 20, "maxOutputTokens": 64},
    }


async def test_gemini_safety_stop_is_an_error_event(gemini_gateway: Server) -> None:
    GeminiReplay.fixture = "gemini_safety_stop.sse"
    try:
        async with httpx.AsyncClient(base_url=gemini_gateway.url) as client:
            response = await client.post(
                "/api/stream", headers={"X-API-Key": KEY}, json={"prompt": "something", "agent": "blocked"}
            )
    finally:
        GeminiReplay.fixture = "gemini_haiku.sse"
    assert events_of(response.content) == [
        {"chunk": "Here is", "index": 1},
        {"error": "generation stopped: SAFETY", "recoverable": False},
    ]
    await asyncio.to_thread(gemini_gateway.wait_for_log, r'"generation failed: generation stopped: SAFETY".*"blocked"')
