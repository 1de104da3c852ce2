"""Declaring typed stream endpoints: :class:`StreamRouter` and its three decorators.

.. code-block:: python

    streams = StreamRouter()

    @streams.stream_out("/logs", auth=True)
    async def logs(handshake: LogsHandshake, stream: StreamOut[LogRow]) -> None: ...

    @streams.stream_in("/upload")
    async def upload(handshake: UploadHandshake, stream: StreamIn[Chunk]) -> UploadResult: ...

    @streams.stream_in_out("/chat")
    async def chat(handshake: ChatHandshake, stream: StreamInOut[ChatIn, ChatOut]) -> None: ...

The handshake parameter is optional (``async def chat(stream: StreamInOut[...])``).
``auth=True`` calls the app's authenticator before the stream opens;
``rate_limit="streaming_ip"`` counts the request against a rate-limit group.
Types are read from the annotations when the decorator runs, so the message and
handshake classes must be importable at module level. How each kind is served:

========================  =====================================================
``stream_out``            ``GET`` as SSE and WebSocket on the same path
``stream_in``             WebSocket, and ``POST`` with an NDJSON body
``stream_in_out``         WebSocket
========================  =====================================================
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel

from sluicegate.streaming.codec import MessageCodec
from sluicegate.streaming.streams import StreamIn, StreamInOut, StreamOut

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["StreamEndpoint", "StreamKind", "StreamRouter"]

StreamKind = Literal["out", "in", "in_out"]

H = TypeVar("H", bound="Callable[..., Awaitable[Any]]")

_STREAM_CLASS: dict[StreamKind, type] = {"out": StreamOut, "in": StreamIn, "in_out": StreamInOut}
_DECORATOR: dict[StreamKind, str] = {"out": "stream_out", "in": "stream_in", "in_out": "stream_in_out"}


@dataclass(frozen=True, slots=True)
class StreamEndpoint:
    """One declared stream endpoint (what the decorator learned from the handler)."""

    kind: StreamKind
    path: str
    handler: Callable[..., Awaitable[Any]]
    handshake_model: type[BaseModel] | None
    in_codec: MessageCodec[Any] | None
    out_codec: MessageCodec[Any] | None
    result_codec: MessageCodec[Any] | None
    auth: bool
    rate_limit: str | None
    name: str
    summary: str
    description: str
    tags: tuple[str, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        """The HTTP methods served besides the WebSocket upgrade."""
        return {"out": ("GET",), "in": ("POST",), "in_out": ()}[self.kind]


def _inspect_handler(kind: StreamKind, handler: Callable[..., Awaitable[Any]]) -> dict[str, Any]:
    where = f"{_DECORATOR[kind]} handler {handler.__qualname__}"
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{where} must be an async function")
    try:
        hints = typing.get_type_hints(handler)
    except NameError as exc:
        raise TypeError(f"{where}: cannot resolve its annotations ({exc}); define the types at module level") from exc
    params = list(inspect.signature(handler).parameters.values())
    if len(params) not in (1, 2):
        raise TypeError(f"{where} must take (stream) or (handshake, stream)")
    stream_hint = hints.get(params[-1].name)
    expected = _STREAM_CLASS[kind]
    if typing.get_origin(stream_hint) is not expected:
        raise TypeError(f"{where}: its last parameter must be annotated {expected.__name__}[...]")
    args = typing.get_args(stream_hint)
    handshake_model = None
    if len(params) == 2:
        handshake_model = hints.get(params[0].name)
        if not (isinstance(handshake_model, type) and issubclass(handshake_model, BaseModel)):
            raise TypeError(f"{where}: the handshake parameter must be annotated with a pydantic model")
    result = hints.get("return", type(None))
    return {
        "handshake_model": handshake_model,
        "in_codec": MessageCodec(args[0]) if kind in ("in", "in_out") else None,
        "out_codec": MessageCodec(args[-1]) if kind in ("out", "in_out") else None,
        "result_codec": MessageCodec(result) if kind == "in" and result is not type(None) else None,
    }


class StreamRouter:
    """A collection of stream endpoints, mounted on an app by :func:`sluicegate.app.create_app`.

    Args:
        prefix: prepended to every path.
        tags: OpenAPI tags of every endpoint.
    """

    def __init__(self, *, prefix: str = "", tags: tuple[str, ...] = ()) -> None:
        self.prefix = prefix.rstrip("/")
        self.tags = tags
        self.endpoints: list[StreamEndpoint] = []

    def _register(
        self, kind: StreamKind, path: str, auth: bool, rate_limit: str | None, name: str | None
    ) -> Callable[[H], H]:
        def decorator(handler: H) -> H:
            parts = _inspect_handler(kind, handler)
            doc = inspect.getdoc(handler) or ""
            summary, _, description = doc.partition("\n\n")
            self.endpoints.append(
                StreamEndpoint(
                    kind=kind,
                    path=self.prefix + path,
                    handler=handler,
                    auth=auth,
                    rate_limit=rate_limit,
                    name=name or handler.__name__,
                    summary=summary.replace("\n", " "),
                    description=description,
                    tags=self.tags,
                    **parts,
                )
            )
            return handler

        return decorator

    def stream_out(
        self, path: str, *, auth: bool = False, rate_limit: str | None = None, name: str | None = None
    ) -> Callable[[H], H]:
        """Declare a server-to-client stream, served as SSE (``GET``) and WebSocket on ``path``."""
        return self._register("out", path, auth, rate_limit, name)

    def stream_in(
        self, path: str, *, auth: bool = False, rate_limit: str | None = None, name: str | None = None
    ) -> Callable[[H], H]:
        """Declare a client-to-server stream whose handler returns the response."""
        return self._register("in", path, auth, rate_limit, name)

    def stream_in_out(
        self, path: str, *, auth: bool = False, rate_limit: str | None = None, name: str | None = None
    ) -> Callable[[H], H]:
        """Declare a bidirectional stream over WebSocket."""
        return self._register("in_out", path, auth, rate_limit, name)
