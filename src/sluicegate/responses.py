"""Request and response helpers shared by the app and the services."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request  # noqa: TC002 -- used at run time by callers
from starlette.responses import Response

from sluicegate.errors import APIError

__all__ = ["json_response", "read_body"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson (``orjson.Fragment`` embeds pre-encoded JSON)."""
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError.payload_too_large(f"The body is over the limit of {limit} bytes", limit=limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError.payload_too_large(f"The body is over the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)
