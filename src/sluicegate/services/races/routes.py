"""HTTP surface of race collection: the seed's ingest route and session management.

``POST /api/streams/races/{stream}/data?secret=...`` is the hot path: a plain ASGI
route (FastAPI's per-request machinery costs two thirds of the request rate here), kept
in the OpenAPI document by hand. Its errors are the seed's:

- ``400 {"error": "Incorrect AX Parser secret"}``
- ``400 {"error": "No session present for the stream ID"}``
- ``500 {"error": "Failed to set up stream handler"}`` when the point cannot be made durable
- ``400`` naming the missing or invalid field, ``413`` for a body over the limit;
- ``503`` when the session log cannot be reached (retry).

Every node takes every point: it is appended to the session's log where it arrives.
"""

from __future__ import annotations

import hmac
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_to_bytes

import orjson
from fastapi import APIRouter, Path
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sluicegate.errors import APIError, ErrCode
from sluicegate.responses import json_response
from sluicegate.security.deps import AdminIdentity  # noqa: TC001 -- FastAPI reads route annotations at run time
from sluicegate.services.races.models import STREAM_PATTERN, SessionIn, SessionOut
from sluicegate.services.races.service import RaceService, point_line
from sluicegate.streaming.transport import error_response

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from sluicegate.clock import Clock
    from sluicegate.observability.metrics import Metrics

__all__ = ["RaceRoutes"]

_STREAM = re.compile(STREAM_PATTERN)
ROUTE = "/api/streams/races/{stream}/data"
_JSON_HEADERS = [(b"content-type", b"application/json")]
SessionId = Path(pattern=r"^[0-9a-f]{32}$", description="The session's id.")


def _missing(field: str) -> APIError:
    return APIError(
        ErrCode.INVALID_ARGUMENT,
        f"Missing required field: {field}",
        details={"fields": [{"field": f"body.{field}", "message": "Field required", "type": "missing"}]},
    )


def _invalid(field: str, message: str) -> APIError:
    return APIError(
        ErrCode.INVALID_ARGUMENT,
        f"Invalid field: {field}",
        details={"fields": [{"field": f"body.{field}", "message": message, "type": "value_error"}]},
    )


class IngestApp:
    """``POST /api/streams/races/{stream}/data``: one data point, acknowledged once durable."""

    def __init__(
        self,
        service: RaceService,
        *,
        secret: bytes | None,
        max_body_bytes: int,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.service = service
        self.secret = secret
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.metrics = metrics
        self._ok = metrics.http_requests.labels("POST", ROUTE, "200")
        self._latency = metrics.http_latency.labels("POST", ROUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            total, received_at = await self._ingest(scope, receive)
        except APIError as exc:
            await error_response(send, exc)
            self.metrics.http_requests.labels("POST", ROUTE, str(exc.status)).inc()
            return
        body = orjson.dumps({"status": "data_received", "timestamp": received_at, "data_points": total})
        headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._ok.inc()
        self._latency.observe(time.perf_counter() - started)

    def _check_secret(self, scope: Scope) -> None:
        query: bytes = scope["query_string"]
        if query.startswith(b"secret=") and b"&" not in query:  # the common case, without a full parse
            given = query[7:]
            if b"%" in given:
                given = unquote_to_bytes(given)
        else:
            values = parse_qs(query.decode("latin-1")).get("secret")
            given = values[-1].encode() if values else b""
        # Compare in constant time; an unset server secret matches nothing.
        if self.secret is None or not hmac.compare_digest(given, self.secret):
            raise APIError.invalid_argument("Incorrect AX Parser secret")

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise APIError.payload_too_large(f"The body is over the limit of {limit} bytes", limit=limit)
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise APIError(ErrCode.CANCELLED, "The client went away")
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                raise APIError.payload_too_large(f"The body is over the limit of {limit} bytes", limit=limit)
        return body

    async def _ingest(self, scope: Scope, receive: Receive) -> tuple[int, str]:
        self._check_secret(scope)
        stream = scope["path_params"]["stream"]
        if not _STREAM.match(stream):
            raise APIError.invalid_argument("Invalid stream ID", stream=stream[:100])
        try:
            payload = orjson.loads(await self._read(scope, receive))
        except orjson.JSONDecodeError as exc:
            raise APIError.invalid_argument(f"The body must be JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise APIError.invalid_argument("The body must be a JSON object with data, type and platform")
        for name in ("data", "type", "platform"):
            if name not in payload:
                raise _missing(name)
        kind, platform = payload["type"], payload["platform"]
        if not isinstance(kind, str) or not 0 < len(kind) <= 200:
            raise _invalid("type", "Input should be a string of 1 to 200 characters")
        if not isinstance(platform, str) or not 0 < len(platform) <= 200:
            raise _invalid("platform", "Input should be a string of 1 to 200 characters")
        received_at = self.clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        total = await self.service.ingest(stream, point_line(received_at, kind, platform, payload["data"]))
        return total, received_at


_INGEST_OPENAPI: dict[str, Any] = {
    "post": {
        "tags": ["races"],
        "summary": "Post one race data point (first seed)",
        "description": "Acknowledged once the point is durable in the session's spool. "
        "The secret is `SLUICEGATE_AX_PARSER_SECRET`.",
        "operationId": "race_data",
        "parameters": [
            {"name": "stream", "in": "path", "required": True, "schema": {"type": "string", "pattern": STREAM_PATTERN}},
            {"name": "secret", "in": "query", "required": True, "schema": {"type": "string"}},
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["data", "type", "platform"],
                        "properties": {"data": {}, "type": {"type": "string"}, "platform": {"type": "string"}},
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "Durable.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "status": {"const": "data_received"},
                                "timestamp": {"type": "string", "format": "date-time"},
                                "data_points": {"type": "integer"},
                            },
                        }
                    }
                },
            },
            "400": {"description": "Incorrect AX Parser secret; No session present for the stream ID; a bad field."},
            "413": {"description": "The body is over the limit."},
            "500": {"description": "Failed to set up stream handler (the point could not be made durable)."},
            "503": {"description": "The session log cannot be reached; retry."},
        },
    }
}


class RaceRoutes:
    """The routes of race collection over a :class:`RaceService`."""

    def __init__(
        self,
        service: RaceService,
        *,
        secret: bytes | None,
        max_body_bytes: int,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.service = service
        self.ingest = Route(
            ROUTE,
            IngestApp(
                service,
                secret=secret,
                max_body_bytes=max_body_bytes,
                clock=clock,
                metrics=metrics,
            ),
            methods=["POST"],
            name="race_data",
        )
        self.openapi_paths = {ROUTE: _INGEST_OPENAPI}
        self.router = APIRouter(prefix="/api/races/sessions", tags=["races"])
        self._routes()

    def _routes(self) -> None:
        service = self.service

        @self.router.post("", status_code=201, summary="Open the session of a stream (admin key)")
        async def create_session(body: SessionIn, admin: AdminIdentity) -> SessionOut:
            """Open a session: data posted for `stream` goes to it until it is closed."""
            return await service.create(admin, body)

        @self.router.get("/{session_id}", summary="A session's state, counts and archives (admin key)")
        async def get_session(admin: AdminIdentity, session_id: str = SessionId) -> SessionOut:
            return await service.describe(admin, session_id)

        @self.router.post("/{session_id}/close", summary="Archive what is spooled and close (admin key)")
        async def close_session(admin: AdminIdentity, session_id: str = SessionId) -> Response:
            """200 once everything is archived; 202 while archiving is still being retried."""
            out, done = await service.close_session(admin, session_id)
            return json_response(out.model_dump(mode="json"), 200 if done else 202)

        @self.router.get("/{session_id}/data", summary="Every point of a session, as NDJSON (admin key)")
        async def session_data(admin: AdminIdentity, session_id: str = SessionId) -> StreamingResponse:
            """Archived points, then spooled ones, in the order they were received."""
            await service.describe(admin, session_id)  # 404 before the response starts
            return StreamingResponse(service.read(admin, session_id), media_type="application/x-ndjson")
