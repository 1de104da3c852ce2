"""Chat benchmark: time to the first text and to the first audio of ``POST /api/chat/query/stream``.

Starts ``sluicegate serve`` (the packaged Gemma 3 270M, MiniLM and the Piper voice, as a
fresh install has them), uploads one Markdown document to a chatbot, then runs
``--queries`` chat queries one at a time, alternating ``enableTTS: false`` (the
baseline) and ``enableTTS: true`` (``audioFormat`` ``--format``). Per query, timed at
the client from the request's start:

- ``first_text_ms``: the first ``text`` event;
- ``first_audio_ms``: the first ``audio`` event (speech queries);
- ``speech_gap_ms``: the first ``audio`` event less the arrival of the ``text`` event
  that completed its sentence (the first whose ``fullText`` holds it): how long the
  client waits for a sentence's speech once it has its text. The issue's goal is under
  300 ms;
- ``next_text_wait_ms``: the arrival of the ``text`` event after that one, less its own:
  what a splitter that waits for the next token's space (the code before the first
  sentence was cut at its own mark) adds to the gap, measured in the same run.

The first speech query of a server without ``SLUICEGATE_TTS_PRELOAD`` waits for the voice
to load; it is reported apart (``cold``), and a second server with preload shows what
that setting saves. Medians and p90 over the warm queries. Prints ONE JSON line.

    .venv/bin/python bench/chat.py
    .venv/bin/python bench/chat.py --queries 12 --format wav
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import start_server  # noqa: E402 -- the same launcher the tests use

from sluicegate.streaming.sse import SSEDecoder  # noqa: E402

KEY = "sk-bench-chat-0123456789"
CHATBOT = "bench-bot"
DOCUMENT = b"""# Zephyr Kettle Manual

The Zephyr kettle boils one litre of water in ninety seconds. Its base glows purple while it heats.
The handle stays cool, and the lid opens with one button.

## Descaling

Descale the kettle every month with white vinegar. Rinse it three times afterwards.

## Warranty

The warranty covers parts and labour for two years from the date of purchase.
"""
QUESTIONS = [
    "How long does the Zephyr kettle take to boil water?",
    "How often should I descale the kettle?",
    "What does the warranty cover?",
    "What colour is the base while it heats?",
]


async def timed_query(client: httpx.AsyncClient, question: str, tts: bool, fmt: str) -> dict[str, Any]:
    body = {"query": question, "chatbotId": CHATBOT, "enableTTS": tts, "audioFormat": fmt}
    decoder = SSEDecoder()
    texts: list[tuple[float, str]] = []  # (arrival ms, fullText)
    first_audio: tuple[float, str] | None = None
    started = time.perf_counter()
    async with client.stream("POST", "/api/chat/query/stream", headers={"X-API-Key": KEY}, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for raw in response.aiter_raw():
            now = (time.perf_counter() - started) * 1000
            for event in decoder.feed(raw):
                data = orjson.loads(event.data)
                if event.event == "text":
                    texts.append((now, data["fullText"]))
                elif event.event == "audio" and first_audio is None:
                    first_audio = (now, data["sentence"])
                elif event.event == "error":
                    raise RuntimeError(data)
    result: dict[str, Any] = {"first_text_ms": texts[0][0] if texts else None}
    if first_audio is not None:
        at, sentence = first_audio
        position = next((n for n, (_, full) in enumerate(texts) if sentence in full), None)
        completed = texts[position][0] if position is not None else None
        result["first_audio_ms"] = at
        result["speech_gap_ms"] = at - completed if completed is not None else None
        if position is not None and position + 1 < len(texts):
            # What a splitter that waits for the next token's space would have waited on top.
            result["next_text_wait_ms"] = texts[position + 1][0] - texts[position][0]
    return result


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p90": round(p90, 1), "n": len(ordered)}


async def run_server(
    gguf: str | None,
    queries: int,
    fmt: str,
    tokens: int,
    preload: bool,
    llm_threads: int | None,
    tts_threads: int | None = None,
) -> dict[str, Any]:
    env = {
        "SLUICEGATE_API_KEYS": f"{KEY}:user",
        "SLUICEGATE_CHAT_MAX_OUTPUT_TOKENS": str(tokens),
        "SLUICEGATE_RATE_LIMIT_STREAMING_IP": "10000/minute",
        "SLUICEGATE_LLM_PRELOAD": "true",
        "SLUICEGATE_TTS_PRELOAD": "true" if preload else "false",
        "SLUICEGATE_LLM_CONTEXT_TOKENS": "2048",
    }
    if gguf:
        env["SLUICEGATE_LLM_MODEL_PATH"] = gguf
    if llm_threads:
        env["SLUICEGATE_LLM_THREADS"] = str(llm_threads)
    if tts_threads:
        env["SLUICEGATE_TTS_THREADS"] = str(tts_threads)
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_server(None, Path(data_dir), env)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                upload = await client.post(
                    "/api/context/upload-file/stream",
                    headers={"X-API-Key": KEY},
                    data={"chatbotId": CHATBOT},
                    files={"file": ("zephyr-manual.md", DOCUMENT)},
                )
                assert b"event: complete" in upload.content, upload.content[-500:]
                await timed_query(client, QUESTIONS[0], False, fmt)  # warms the model and the embedder
                cold = await timed_query(client, QUESTIONS[1], True, fmt)
                plain: list[dict[str, Any]] = []
                spoken: list[dict[str, Any]] = []
                for index in range(queries):
                    # A question other than the last one's each time: llama.cpp reuses a prompt
                    # prefix it has just seen, which would flatter the second of two equal queries.
                    plain.append(await timed_query(client, QUESTIONS[(2 * index) % len(QUESTIONS)], False, fmt))
                    spoken.append(await timed_query(client, QUESTIONS[(2 * index + 1) % len(QUESTIONS)], True, fmt))
        finally:
            server.stop()
    gaps = [q["speech_gap_ms"] for q in spoken if q.get("speech_gap_ms") is not None]
    waits = [q["next_text_wait_ms"] for q in spoken if q.get("next_text_wait_ms") is not None]
    return {
        "cold_first_speech_query": {k: round(v, 1) for k, v in cold.items() if v is not None},
        "baseline_first_text_ms": summary([q["first_text_ms"] for q in plain if q["first_text_ms"] is not None]),
        "tts_first_text_ms": summary([q["first_text_ms"] for q in spoken if q["first_text_ms"] is not None]),
        "tts_first_audio_ms": summary([q["first_audio_ms"] for q in spoken if "first_audio_ms" in q]),
        "speech_gap_ms": summary(gaps) if gaps else None,
        "speech_gap_under_300ms": sum(1 for g in gaps if g < 300),
        "next_text_wait_ms": summary(waits) if waits else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=8, help="queries of each kind per server")
    parser.add_argument("--format", default="mp3", choices=["mp3", "wav", "opus"])
    parser.add_argument("--tokens", type=int, default=48, help="SLUICEGATE_CHAT_MAX_OUTPUT_TOKENS")
    parser.add_argument("--model-path", default=None, help="a GGUF instead of the packaged model")
    parser.add_argument("--llm-threads", type=int, default=None, help="SLUICEGATE_LLM_THREADS (default: llama.cpp's)")
    parser.add_argument("--tts-threads", type=int, default=None, help="SLUICEGATE_TTS_THREADS (default: the setting's)")
    args = parser.parse_args()
    model, fmt, tokens = args.model_path, args.format, args.tokens
    threads = {"llm_threads": args.llm_threads, "tts_threads": args.tts_threads}
    lazy = await run_server(model, args.queries, fmt, tokens, preload=False, **threads)
    preloaded = await run_server(model, 1, fmt, tokens, preload=True, **threads)
    print(
        json.dumps(
            {
                "bench": "chat",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "format": args.format,
                "max_output_tokens": args.tokens,
                "queries": args.queries,
                "llm_threads": args.llm_threads,
                "tts_threads": args.tts_threads,
                "load_average_1m": round(os.getloadavg()[0], 2),
                "voice_loaded_on_first_use": lazy,
                "voice_preloaded_cold_query": preloaded["cold_first_speech_query"],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
