"""The floor for bench/races.py: a bare ASGI app that reads the POST body, parses it and
answers the same response, with no durability and no framework. Served the same way
(``sluicegate serve --app bench.races_baseline:create_app``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"].startswith("/api/races/sessions"):  # the benchmark's set-up and close calls
        reply = orjson.dumps({"id": "0" * 32, "bytes": 0, "data_points": 0, "archived_keys": [], "state": "closed"})
    else:
        orjson.loads(body)
        reply = orjson.dumps({"status": "data_received", "timestamp": "2026-01-01T00:00:00.000Z", "data_points": 1})
    headers = [*_HEADERS, (b"content-length", str(len(reply)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply})


def create_app() -> object:
    return app
