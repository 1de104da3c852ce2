"""A token source for ``bench/generate.py``: an OpenAI-compatible streaming endpoint that
answers at once, so that what the benchmark times is the gateway, not a model.

``POST /v1/chat/completions`` streams ``max_tokens`` chunks (one write each, as a model
server writes tokens), a usage frame and ``[DONE]``. A model named ``bench-<ms>`` paces
the chunks that many milliseconds apart, like a model would (``bench-0``: as fast as
possible). Raw ASGI, served by uvicorn:

    .venv/bin/uvicorn bench.openai_upstream:app --port 9100
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _chunk(index: int) -> bytes:
    frame = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": "bench",
        "choices": [{"index": 0, "delta": {"content": f" tok{index}"}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(frame) + b"\n\n"


CHUNKS = [_chunk(i) for i in range(4096)]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = orjson.loads(body) if body else {}
    count = min(int(request.get("max_tokens") or 16), len(CHUNKS))
    delay = float(str(request.get("model", "bench-0")).rpartition("-")[2] or 0) / 1000
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(count):
        if delay:  # against the clock, so that late wake-ups do not add up
            await asyncio.sleep(max(0.0, start + (index + 1) * delay - loop.time()))
        await send({"type": "http.response.body", "body": CHUNKS[index], "more_body": True})
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}}
    tail = b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": tail, "more_body": False})
