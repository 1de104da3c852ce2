"""Chat over uploaded context, end to end: real servers, the real local model, real speech.

Each test talks to ``sluicegate serve`` with the packaged Gemma 3 270M (answers of a few
tokens, so the suite stays fast), the packaged MiniLM embeddings and the packaged Piper
voice, uploads its documents through ``/api/context/upload-file/stream``, and asserts
what a client sees: the named events in order, sources naming the uploaded file, audio
that decodes, memory across turns, the model stopping when the client leaves, the 400s
before the stream, and tenants kept apart.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import soundfile

from sluicegate.providers.tokencounts import encoding
from sluicegate.streaming.sse import SSEDecoder
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.server import Server

USER = "chat-user-key-0123456789"  # tenant 1
OTHER = "chat-other-key-0123456789"  # tenant 2
KEYS = f"{USER}:user:1,{OTHER}:user:2"
ANSWER_TOKENS = 24

MANUAL = b"""# Zephyr Kettle Manual

The Zephyr kettle boils one litre of water in ninety seconds. Its base glows purple while it heats.

## Descaling

Descale the Zephyr kettle every month with white vinegar. Rinse it three times afterwards.
"""


def chat_env(gguf: Path, **extra: str) -> dict[str, str]:
    return {
        "SLUICEGATE_API_KEYS": KEYS,
        "SLUICEGATE_LLM_MODEL_PATH": str(gguf),
        "SLUICEGATE_LLM_THREADS": "2",
        "SLUICEGATE_LLM_CONTEXT_TOKENS": "1024",
        "SLUICEGATE_CHAT_MAX_OUTPUT_TOKENS": str(ANSWER_TOKENS),
        "SLUICEGATE_RATE_LIMIT_STREAMING_IP": "1000/minute",
        **extra,
    }


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server], gguf_path: Path) -> Server:
    return serve_module(None, **chat_env(gguf_path))


@pytest.fixture(scope="module")
def long_server(serve_module: Callable[..., Server], gguf_path: Path) -> Server:
    """A server whose answers run long enough to be cut (500 tokens)."""
    return serve_module(None, **chat_env(gguf_path, SLUICEGATE_CHAT_MAX_OUTPUT_TOKENS="500"))


def events_of(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(event.event, orjson.loads(event.data)) for event in SSEDecoder().feed(body)]


async def upload(client: httpx.AsyncClient, key: str, chatbot: str, name: str, content: bytes) -> str:
    response = await client.post(
        "/api/context/upload-file/stream",
        headers={"X-API-Key": key},
        data={"chatbotId": chatbot},
        files={"file": (name, content)},
    )
    assert response.status_code == 200, response.text
    events = events_of(response.content)
    complete = [data for name, data in events if name == "complete"]
    assert complete, events
    return str(complete[0]["documentId"])


async def chat(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    response = await client.post("/api/chat/query/stream", headers={"X-API-Key": key}, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return events_of(response.content)


def data_of(events: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [data for event, data in events if event == name]


def bot() -> str:
    return f"bot-{uuid.uuid4().hex[:8]}"


async def test_an_answer_is_grounded_in_the_uploaded_document(server: Server) -> None:
    chatbot = bot()
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        document = await upload(client, USER, chatbot, "zephyr-manual.md", MANUAL)
        response = await client.post(
            "/api/chat/query/stream",
            headers={"X-API-Key": USER},
            json={
                "query": "How often should I descale the Zephyr kettle?",
                "chatbotId": chatbot,
                "tokenCounts": "cl100k_base",
            },
        )
    assert response.headers["x-ratelimit-limit"] == "1000"  # the streaming_ip group
    events = events_of(response.content)
    names = [name for name, _ in events]
    # The seed's order: connected, progress, text..., suggestions, complete, close.
    assert names[:3] == ["connected", "progress", "progress"]
    assert names[-3:] == ["suggestions", "complete", "close"]
    assert set(names[3:-3]) == {"text"}
    connected, retrieval, generation = (data for _, data in events[:3])
    assert connected["message"] == "Stream started"
    assert connected["streamId"].startswith("chat-")
    assert connected["chatbotId"] == chatbot
    assert retrieval["step"] == "retrieval" and retrieval["count"] >= 1
    assert generation["step"] == "generation"
    texts = data_of(events, "text")
    assert all(t["token"] for t in texts)
    assert [t["fullText"] for t in texts] == ["".join(t["token"] for t in texts[: i + 1]) for i in range(len(texts))]
    complete = data_of(events, "complete")[0]
    assert complete["fullText"] == texts[-1]["fullText"]
    sources = complete["sources"]
    assert sources and {s["documentId"] for s in sources} == {document}
    assert sources[0]["fileName"] == "zephyr-manual.md"
    assert all(isinstance(s["chunk"], int) and 0 < s["score"] <= 1 for s in sources)
    assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)
    usage = complete["usage"]
    assert usage["promptTokens"] > 50  # the grounded prompt, not the bare question
    assert 1 <= usage["completionTokens"] <= ANSWER_TOKENS
    openai = usage["tokenCounts"]["cl100k_base"]  # asked for: OpenAI-compatible counts beside the model's
    assert openai["completionTokens"] == len(encoding("cl100k_base").encode_ordinary(complete["fullText"]))
    assert openai["promptTokens"] > 50
    assert complete["duration"] >= 0
    assert complete["historyTurns"] == 0
    suggestions = data_of(events, "suggestions")[0]["suggestions"]
    assert suggestions and all(isinstance(s, str) for s in suggestions)
    assert "Tell me more about Zephyr Kettle Manual." in suggestions  # from the document's headings
    assert data_of(events, "close") == [{"message": "Stream ended"}]


async def test_a_chatbot_without_documents_still_answers_with_no_sources(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        events = await chat(client, USER, {"query": "Hello?", "chatbotId": bot()})
    assert data_of(events, "progress")[0]["count"] == 0
    complete = data_of(events, "complete")[0]
    assert complete["sources"] == []
    assert complete["fullText"]
    assert data_of(events, "suggestions") == [{"suggestions": []}]


@pytest.mark.parametrize("audio_format", ["wav", "mp3", "opus"])
async def test_speech_comes_sentence_by_sentence_and_decodes(server: Server, audio_format: str) -> None:
    chatbot = bot()
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        await upload(client, USER, chatbot, "zephyr-manual.md", MANUAL)
        events = await chat(
            client,
            USER,
            {
                "query": "What does the Zephyr kettle do?",
                "chatbotId": chatbot,
                "enableTTS": True,
                "audioFormat": audio_format,
            },
        )
    audio = data_of(events, "audio")
    complete = data_of(events, "complete")[0]
    assert audio, complete["fullText"]
    assert [a["index"] for a in audio] == list(range(len(audio)))
    assert complete["audioChunks"] == len(audio)
    assert "warnings" not in complete
    spoken = 0.0
    for item in audio:
        assert item["format"] == audio_format
        assert item["sentence"] and item["sentence"] in complete["fullText"]
        samples, rate = soundfile.read(io.BytesIO(base64.b64decode(item["chunk"])), dtype="int16")
        assert rate == item["sampleRate"] == (24_000 if audio_format == "opus" else 22_050)
        assert samples.size > 0 and abs(samples).max() > 1_000  # speech, not silence
        spoken += samples.size / rate
    assert spoken > 0.3
    # Every audio event comes after the text of its sentence, and before complete.
    names = [name for name, _ in events]
    first_audio = names.index("audio")
    text_before = "".join(d["token"] for n, d in events[:first_audio] if n == "text")
    assert audio[0]["sentence"] in text_before
    assert max(i for i, n in enumerate(names) if n == "audio") < names.index("complete")


async def test_without_a_voice_the_text_still_streams_with_a_warning(
    serve: Callable[..., Server], gguf_path: Path, tmp_path: Path
) -> None:
    server = serve(None, **chat_env(gguf_path, SLUICEGATE_TTS_VOICE_PATH=str(tmp_path / "no-voice.onnx")))
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        events = await chat(client, USER, {"query": "Hello?", "chatbotId": bot(), "enableTTS": True})
        ready = (await client.get("/readyz")).json()
    speech = [d for d in data_of(events, "progress") if d["step"] == "speech"]
    assert len(speech) == 1 and "SLUICEGATE_TTS_VOICE_PATH" in speech[0]["message"]
    assert data_of(events, "audio") == []
    complete = data_of(events, "complete")[0]
    assert complete["fullText"] and complete["warnings"] == [speech[0]["message"]]
    assert ready["engines"]["speech"].startswith("unavailable")


async def test_a_session_remembers_its_turns(server: Server) -> None:
    chatbot, session = bot(), f"session-{uuid.uuid4().hex[:8]}"
    body = {"query": "Tell me about the Zephyr kettle.", "chatbotId": chatbot, "sessionId": session}
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        await upload(client, USER, chatbot, "zephyr-manual.md", MANUAL)
        first = data_of(await chat(client, USER, body), "complete")[0]
        second = data_of(await chat(client, USER, body), "complete")[0]
        elsewhere = data_of(await chat(client, USER, {**body, "sessionId": "another-session"}), "complete")[0]
        other_tenant = data_of(await chat(client, OTHER, body), "complete")[0]
    assert (first["historyTurns"], second["historyTurns"]) == (0, 1)
    assert first["sessionId"] == second["sessionId"] == session
    # The same question and sources: the second prompt is longer by the first turn.
    assert second["usage"]["promptTokens"] > first["usage"]["promptTokens"] + 10
    assert elsewhere["historyTurns"] == 0
    assert other_tenant["historyTurns"] == 0  # a session id is per tenant


async def test_a_client_that_leaves_stops_the_model(long_server: Server) -> None:
    server = long_server
    async with httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client:
        async with client.stream(
            "POST",
            "/api/chat/query/stream",
            headers={"X-API-Key": USER},
            json={"query": "Write a very long story about a kettle.", "chatbotId": bot(), "enableTTS": True},
        ) as response:
            async for line in response.aiter_lines():
                if line == "event: text":
                    break
        match = await asyncio.to_thread(
            server.wait_for_log,
            r'"message":"generation cancelled".*"route":"chat".*"chunks":(\d+).*"completion_tokens":(\d+)',
            10 * UNIT,
        )
    sent, generated = int(match.group(1)), int(match.group(2))
    assert 1 <= sent <= generated < 100  # stopped long before its 500 tokens
    assert '"generation completed"' not in server.log


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"chatbotId": "b"}', 400, "query is required"),
        (b'{"query": "hi"}', 400, "chatbotId is required"),
        (b'{"query": "hi", "chatbotId": "b", "audioFormat": "ogg"}', 400, "audioFormat must be one of mp3, wav, opus"),
        (b'{"query": "hi", "chatbotId": "b", "enableTTS": 1}', 400, "enableTTS must be true or false"),
        (b"not json", 400, "Request body must be a JSON object"),
        (b'{"query": "hi", "chatbotId": "b", "tokenCounts": 1}', 400, "tokenCounts must be a list of encoding names"),
        (b'{"query": "' + b"x" * 70_000 + b'", "chatbotId": "b"}', 413, "The body is over the limit of 65536 bytes"),
    ],
)
async def test_bad_requests_are_refused_before_the_stream(server: Server, body: bytes, status: int, error: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client:
        response = await client.post("/api/chat/query/stream", headers={"X-API-Key": USER}, content=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error


async def test_a_request_without_credentials_is_401(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/api/chat/query/stream", json={"query": "hi", "chatbotId": "b"})
    assert response.status_code == 401


async def test_another_tenant_never_retrieves_the_documents(server: Server) -> None:
    chatbot = bot()
    query = {"query": "How often should I descale the Zephyr kettle?", "chatbotId": chatbot}
    async with httpx.AsyncClient(base_url=server.url, timeout=60 * UNIT) as client:
        document = await upload(client, USER, chatbot, "zephyr-manual.md", MANUAL)
        owner = await chat(client, USER, query)
        stranger = await chat(client, OTHER, query)  # the same chatbot id, another tenant
    assert {s["documentId"] for s in data_of(owner, "complete")[0]["sources"]} == {document}
    assert data_of(stranger, "progress")[0]["count"] == 0
    assert data_of(stranger, "complete")[0]["sources"] == []


async def test_preloading_loads_the_voice_at_start_up(serve: Callable[..., Server], gguf_path: Path) -> None:
    server = serve(None, **chat_env(gguf_path, SLUICEGATE_TTS_PRELOAD="true"))
    # Before any request: the voice was loaded while the server started.
    match = await asyncio.to_thread(server.wait_for_log, r'"message":"voice loaded".*"load_ms":(\d+)', 10 * UNIT)
    assert int(match.group(1)) > 0
    assert "chat query" not in server.log
