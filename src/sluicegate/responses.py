"""Response helpers shared by the app and the services."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["json_response"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson (``orjson.Fragment`` embeds pre-encoded JSON)."""
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")
