"""OpenAPI entries for stream endpoints, which FastAPI cannot see (they are raw ASGI routes).

SSE endpoints appear as ``GET`` operations answering ``text/event-stream`` whose
``itemSchema`` is the message type (OpenAPI 3.2's convention for event streams);
NDJSON uploads as ``POST`` with an ``application/x-ndjson`` body. WebSocket support,
which OpenAPI cannot describe, is given in an ``x-sluicegate-websocket`` extension of
the path item, with the schemas of both directions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sluicegate.streaming.codec import MessageCodec
    from sluicegate.streaming.endpoints import StreamEndpoint

__all__ = ["add_stream_paths"]

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")
_ERROR = {
    "description": "The handshake was refused (bad parameters, missing or invalid credentials).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error", "code"],
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
    "additionalProperties": True,
}


def _schema(codec: MessageCodec[Any] | None, components: dict[str, Any]) -> dict[str, Any]:
    if codec is None:
        return {}
    schema = TypeAdapter(codec.type).json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    return schema


def _parameters(endpoint: StreamEndpoint, components: dict[str, Any]) -> list[dict[str, Any]]:
    in_path = set(_PATH_PARAM.findall(endpoint.path))
    params = []
    if endpoint.handshake_model is not None:
        schema = endpoint.handshake_model.model_json_schema(ref_template=_REF)
        components.update(schema.pop("$defs", {}))
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            where = "path" if name in in_path else "query"
            params.append(
                {
                    "name": name,
                    "in": where,
                    "required": where == "path" or name in required,
                    "schema": prop,
                    "description": prop.get("description", "Also accepted as a header of the same name."),
                }
            )
    if endpoint.kind == "out":
        params.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "Resume after this event id (also accepted as the `lastEventId` query parameter).",
            }
        )
    return params


def _operation(endpoint: StreamEndpoint, params: list[dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": endpoint.summary or endpoint.name,
        "parameters": params,
        "responses": {"400": _ERROR, "401": _ERROR, "403": _ERROR},
    }
    if endpoint.description:
        op["description"] = endpoint.description
    if endpoint.tags:
        op["tags"] = list(endpoint.tags)
    if endpoint.auth:
        op["security"] = [{}]
    return op


def add_stream_paths(openapi: dict[str, Any], endpoints: Iterable[StreamEndpoint]) -> None:
    """Add the stream endpoints to an OpenAPI document, in place."""
    components: dict[str, Any] = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Error", _ERROR_SCHEMA)
    paths: dict[str, Any] = openapi.setdefault("paths", {})
    for ep in endpoints:
        item: dict[str, Any] = paths.setdefault(ep.path, {})
        params = _parameters(ep, components)
        in_schema = _schema(ep.in_codec, components)
        out_schema = _schema(ep.out_codec, components)
        result_schema = _schema(ep.result_codec, components)
        item["x-sluicegate-websocket"] = {
            "kind": {"out": "stream_out", "in": "stream_in", "in_out": "stream_in_out"}[ep.kind],
            "clientMessages": in_schema,
            "serverMessages": out_schema if ep.kind != "in" else result_schema,
        }
        if ep.kind == "out":
            op = _operation(ep, params)
            op["responses"]["200"] = {
                "description": "An SSE stream of messages; heartbeats are `: ping` comments.",
                "content": {"text/event-stream": {"itemSchema": out_schema}},
            }
            item["get"] = op
        elif ep.kind == "in":
            op = _operation(ep, params)
            op["requestBody"] = {
                "required": True,
                "content": {"application/x-ndjson": {"itemSchema": in_schema}},
            }
            op["responses"]["200"] = {
                "description": "The handler's result, once the body has been read.",
                "content": {"application/json": {"schema": result_schema}},
            }
            item["post"] = op
