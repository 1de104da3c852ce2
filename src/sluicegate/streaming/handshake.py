"""Filling a typed handshake from path, query and headers, before a stream opens.

Each field of the handshake model is looked up by its alias (or name) in the path
parameters, then the query string, then the headers (``user_id`` also matches the
header ``User-Id``); the first place that has it wins. Fields typed as lists take
every repeated query value.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, BaseModel, ValidationError

from sluicegate.errors import invalid_fields

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

__all__ = ["build_handshake", "last_event_id"]

_SEQUENCES = (list, tuple, set, frozenset)


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return False


def _field_keys(name: str, field: Any) -> list[str]:
    """The names a field may be given by: its validation alias (or each of its choices), alias, name."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    return [field.alias or name]


def build_handshake(model: type[BaseModel], conn: HTTPConnection) -> BaseModel:
    """Validate a handshake model against a request or WebSocket handshake.

    Raises:
        APIError: ``invalid_argument`` (400) naming every invalid or missing field.
    """
    values: dict[str, Any] = {}
    path_params = conn.path_params
    query = conn.query_params
    headers = conn.headers
    for name, field in model.model_fields.items():
        many = _is_sequence(field.annotation)
        for key in _field_keys(name, field):
            header = key.replace("_", "-")
            if key in path_params:
                values[key] = path_params[key]
            elif key in query:
                values[key] = query.getlist(key) if many else query[key]
            elif header in headers:
                values[key] = headers.getlist(header) if many else headers[header]
            else:
                continue
            break
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid_fields(exc.errors(), message="Invalid handshake") from None


def last_event_id(conn: HTTPConnection) -> str | None:
    """Where a reconnecting client asks to resume: ``Last-Event-ID`` header, else ``lastEventId`` query."""
    return conn.headers.get("last-event-id") or conn.query_params.get("lastEventId") or None
