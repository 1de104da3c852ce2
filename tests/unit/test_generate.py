"""Generation pieces in isolation: request validation, stop strings, the model map, and the
remote providers' request building and frame parsing (over httpx's mock transport)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp import web

from sluicegate.clock import ManualClock
from sluicegate.errors import APIError, ConfigurationError
from sluicegate.observability.metrics import Metrics
from sluicegate.providers.llm import (
    GeminiProvider,
    GenerationOptions,
    GenerationRequest,
    ModelRegistry,
    OpenAICompatibleProvider,
    ProviderError,
    UnknownModelError,
    registry_from_settings,
)
from sluicegate.providers.llm.local import StopMatcher
from sluicegate.services.generate.models import parse_generate_request
from sluicegate.services.generate.service import GenerateService
from sluicegate.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def parse(body: dict[str, Any] | bytes, **limits: int) -> Any:
    return parse_generate_request(
        body, max_prompt_chars=limits.get("max_prompt_chars", 1000), max_output_tokens=limits.get("max_output", 64)
    )


# -- request validation ---------------------------------------------------------------------


def test_a_full_request_parses_into_provider_options() -> None:
    request = parse(
        {"prompt": "hi", "model": "m", "agent": "poet", "options": {"temperature": 0.7, "topP": 0.95, "topK": 40}}
    )
    assert (request.prompt, request.model, request.agent) == ("hi", "m", "poet")
    assert request.options.to_options(64) == GenerationOptions(0.7, 0.95, 40, 64)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Prompt is required"),
        ({"prompt": None}, "Prompt is required"),
        ({"prompt": "\n\t "}, "Prompt is required"),
        (b"  ", "Prompt is required"),
        ({"prompt": ["a"]}, "Prompt must be a string"),
        (b"{", "Request body must be a JSON object"),
        (b"3", "Request body must be a JSON object"),
        ({"prompt": "x" * 1001}, "Prompt is too long: 1001 characters, the limit is 1000"),
        ({"prompt": "x", "options": {"maxOutputTokens": 65}}, "Invalid options: maxOutputTokens must be at most 64"),
        ({"prompt": "x", "options": {"topP": 0}}, "Invalid options: topP"),
        ({"prompt": "x", "options": "hot"}, "Invalid options: options"),
        ({"prompt": "x", "model": ""}, "Invalid request"),
    ],
)
def test_bad_requests_name_the_problem(body: dict[str, Any] | bytes, message: str) -> None:
    with pytest.raises(APIError) as refused:
        parse(body)
    assert refused.value.status == 400
    assert refused.value.message == message


# -- stop strings --------------------------------------------------------------------------


def test_stop_matcher_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    stopper = StopMatcher(["<end>"])
    assert stopper.feed("Hello <e") == "Hello "
    assert stopper.feed("xtra") == "<extra"
    assert stopper.feed(" bye<en") == " bye"
    assert stopper.feed("d> ignored") == ""
    assert stopper.stopped


def test_stop_matcher_releases_what_it_held_at_the_end() -> None:
    stopper = StopMatcher(["</s>"])
    assert stopper.feed("tail </") == "tail "
    assert stopper.flush() == "</"
    assert StopMatcher([]).feed("as is") == "as is"


# -- the model map --------------------------------------------------------------------------


def test_registry_resolves_models_and_describes_them() -> None:
    openai = OpenAICompatibleProvider("http://127.0.0.1:1/v1")
    gemini = GeminiProvider(None)
    registry = ModelRegistry(
        {"openai": openai, "gemini": gemini}, {"mine": "openai:Qwen/Qwen2.5", "g": "gemini"}, "mine"
    )
    route = registry.resolve(None)
    assert (route.model, route.provider, route.upstream) == ("mine", openai, "Qwen/Qwen2.5")
    assert registry.resolve("g").upstream == "g"
    with pytest.raises(UnknownModelError):
        registry.resolve("nope")
    assert registry.describe() == [
        {"id": "mine", "provider": "openai", "available": True, "default": True, "upstreamModel": "Qwen/Qwen2.5"},
        {"id": "g", "provider": "gemini", "available": False, "default": False, "reason": "GEMINI_API_KEY is not set"},
    ]


def test_registry_refuses_a_bad_map() -> None:
    with pytest.raises(ConfigurationError, match="unknown 'claude'"):
        ModelRegistry({"gemini": GeminiProvider(None)}, {"x": "claude"}, "x")
    with pytest.raises(ConfigurationError, match="SLUICEGATE_LLM_DEFAULT_MODEL"):
        ModelRegistry({"gemini": GeminiProvider(None)}, {"x": "gemini"}, "y")


def test_default_model_is_local_without_keys_and_gemini_with_one(tmp_path: Path) -> None:
    offline = Settings(data_dir=tmp_path)
    assert offline.default_model == "gemma-3-270m"
    assert registry_from_settings(offline).resolve(None).provider.name == "local"
    online = Settings(data_dir=tmp_path, gemini_api_key="k")
    assert online.default_model == "gemini-2.0-flash-exp"
    assert registry_from_settings(online).resolve(None).provider.name == "gemini"
    with pytest.raises(ValueError, match="providers are local, openai and gemini"):
        Settings(data_dir=tmp_path, llm_models={"x": "anthropic"})


def test_agent_labels_are_capped() -> None:
    registry = ModelRegistry({"gemini": GeminiProvider(None)}, {"g": "gemini"}, "g")
    service = GenerateService(
        registry, Metrics(), ManualClock(), max_prompt_chars=10, max_output_tokens=10, max_agents=2
    )
    assert [service.agent_label(a) for a in (None, "a", "b", "c", "a")] == ["", "a", "b", "other", "a"]


# -- remote providers against a loopback HTTP server -----------------------------------------


class Upstream:
    """A loopback aiohttp server answering each POST with ``status`` and ``body``, written
    ``chunking`` bytes at a time; it records every request."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.chunking = 1 << 20
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {"path": request.path_qs, "headers": dict(request.headers), "body": orjson.loads(await request.read())}
        )
        if self.status >= 400:
            return web.Response(status=self.status, body=self.body, content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(self.body), self.chunking):
            await response.write(self.body[i : i + self.chunking])
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


def openai_frames(*frames: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + orjson.dumps(frame) + b"\n\n" for frame in frames)
    return body + (b"data: [DONE]\n\n" if done else b"")


def delta(text: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


async def collect(provider: Any, request: GenerationRequest) -> tuple[list[str], Any]:
    await provider.open()
    try:
        generation = await provider.start(request)
        pieces = [piece async for piece in generation]
        return pieces, generation.usage
    finally:
        await provider.close()


REQUEST = GenerationRequest(
    "Write a haiku", "gpt-x", GenerationOptions(temperature=0.5, top_p=0.9, max_output_tokens=20)
)


async def test_openai_request_and_stream_with_usage(upstream: Upstream) -> None:
    upstream.body = openai_frames(
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        delta("Silicon"),
        delta(" dreams"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
    )
    provider = OpenAICompatibleProvider(upstream.url + "/v1/", "sk-test")
    pieces, usage = await collect(provider, REQUEST)
    assert pieces == ["Silicon", " dreams"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (9, 2, False)
    [request] = upstream.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "Write a haiku"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 20,
    }


async def test_openai_without_usage_counts_pieces_as_an_estimate(upstream: Upstream) -> None:
    upstream.body = openai_frames(delta("a"), delta("b"), delta("c"))
    upstream.chunking = 5
    pieces, usage = await collect(OpenAICompatibleProvider(upstream.url + "/v1"), REQUEST)
    assert pieces == ["a", "b", "c"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (0, 3, True)
    assert usage.as_dict() == {"promptTokens": 0, "completionTokens": 3, "totalTokens": 3, "estimated": True}
    assert upstream.requests[0]["headers"].get("Authorization") is None


async def test_openai_upstream_error_status_names_its_message(upstream: Upstream) -> None:
    upstream.status = 401
    upstream.body = orjson.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
    with pytest.raises(ProviderError, match="upstream answered 401: Incorrect API key provided"):
        await collect(OpenAICompatibleProvider(upstream.url + "/v1"), REQUEST)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            openai_frames(delta("a"), {"error": {"message": "model crashed"}}, done=False),
            "upstream error: model crashed",
        ),
        (b"data: {not json\n\n", "not JSON"),
        (b"data: [1, 2]\n\n", "not a JSON object"),
    ],
)
async def test_openai_bad_frames_fail_the_stream(upstream: Upstream, body: bytes, message: str) -> None:
    upstream.body = body
    with pytest.raises(ProviderError, match=message):
        await collect(OpenAICompatibleProvider(upstream.url + "/v1"), REQUEST)


async def test_openai_without_an_endpoint_cannot_start() -> None:
    provider = OpenAICompatibleProvider(None)
    assert provider.unavailable_reason() is not None
    with pytest.raises(ProviderError, match="SLUICEGATE_OPENAI_BASE_URL"):
        await provider.start(REQUEST)


@pytest.mark.parametrize("chunking", [1, 7, 1 << 20])
async def test_gemini_frames_parse_in_any_chunking(upstream: Upstream, chunking: int) -> None:
    upstream.body = (FIXTURES / "gemini_haiku.sse").read_bytes()
    upstream.chunking = chunking
    provider = GeminiProvider("g-key", upstream.url + "/v1beta")
    request = GenerationRequest("Write a haiku about AI", "gemini-2.0-flash-exp", GenerationOptions(top_k=40))
    pieces, usage = await collect(provider, request)
    assert "".join(pieces) == "Silicon minds awake,\nLearning from all we know,\nFuture's gentle hum."
    assert len(pieces) == 3
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (7, 17, False)
    [sent] = upstream.requests
    assert sent["path"] == "/v1beta/models/gemini-2.0-flash-exp:streamGenerateContent?alt=sse"
    assert sent["headers"]["x-goog-api-key"] == "g-key"
    assert sent["body"] == {
        "contents": [{"role": "user", "parts": [{"text": "Write a haiku about AI"}]}],
        "generationConfig": {"topK": 40},
    }


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"promptFeedback": {"blockReason": "SAFETY"}}, "the prompt was blocked: SAFETY"),
        ({"error": {"code": 503, "message": "The model is overloaded."}}, r"upstream error: The model is overloaded\."),
    ],
)
async def test_gemini_refusals_are_provider_errors(upstream: Upstream, frame: dict[str, Any], message: str) -> None:
    upstream.body = b"data: " + orjson.dumps(frame) + b"\r\n\r\n"
    with pytest.raises(ProviderError, match=message):
        await collect(GeminiProvider("g-key", upstream.url), GenerationRequest("x", "gemini-2.0-flash"))


async def test_gemini_error_status_names_the_upstream_message(upstream: Upstream) -> None:
    upstream.status = 400
    upstream.body = orjson.dumps(
        {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}
    )
    with pytest.raises(ProviderError, match=r"upstream answered 400: API key not valid\."):
        await collect(GeminiProvider("bad", upstream.url), GenerationRequest("x", "gemini-2.0-flash"))


def test_gemini_without_a_key_is_unavailable() -> None:
    assert GeminiProvider(None).unavailable_reason() == "GEMINI_API_KEY is not set"


async def test_an_unreachable_upstream_cannot_start() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAICompatibleProvider(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ProviderError, match="cannot reach openai upstream"):
        await collect(provider, REQUEST)
