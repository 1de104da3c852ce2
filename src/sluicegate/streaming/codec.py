"""Typed messages to bytes and back, and the encoded :class:`Frame` that fans out.

A message is serialised once into a :class:`Frame`; the SSE bytes and the WebSocket
text of a frame are each built at most once, however many streams it is sent to.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

import orjson
from pydantic import TypeAdapter, ValidationError

from sluicegate.errors import APIError, invalid_fields
from sluicegate.streaming.sse import encode_json_event, field_lines

__all__ = ["OPEN_MARKER", "Frame", "MessageCodec"]

T = TypeVar("T")


class Frame:
    """One serialised message, with its SSE framing and WebSocket text made lazily, once.

    Over WebSocket only the data travels; the event name and id are SSE framing.

    Raises:
        SSEFieldError: at construction, when ``event`` or ``id`` would break SSE framing.
    """

    __slots__ = ("_sse", "_text", "control", "data", "event", "id")

    def __init__(self, data: bytes, *, event: str | None = None, id: str | None = None) -> None:
        if event is not None or id is not None:
            field_lines(event, id)  # refuse CR/LF now, not when the first SSE client reads it
        self.data = data
        self.event = event
        self.id = id
        #: A frame of the transport (heartbeat, open marker), not a message.
        self.control = False
        self._sse: bytes | None = None
        self._text: str | None = None

    @classmethod
    def preframed(cls, sse: bytes) -> Frame:
        """A control frame whose SSE bytes are given verbatim (a heartbeat comment).

        Control frames are not messages: WebSocket writers skip them and they are not
        counted as sent messages.
        """
        frame = cls(b"")
        frame._sse = sse
        frame.control = True
        return frame

    @property
    def sse(self) -> bytes:
        """The complete SSE frame."""
        if self._sse is None:
            self._sse = encode_json_event(self.data, event=self.event, id=self.id)
        return self._sse

    @property
    def text(self) -> str:
        """The WebSocket text frame payload."""
        if self._text is None:
            self._text = self.data.decode()
        return self._text

    def __repr__(self) -> str:
        return f"Frame({self.data[:60]!r}, event={self.event!r}, id={self.id!r})"


#: Pushed to a stream's outbox to open it (send the headers) before its first message.
OPEN_MARKER = Frame.preframed(b"")


def _is_untyped(tp: Any) -> bool:
    return tp is Any or tp is dict or tp is list or tp is object


class MessageCodec(Generic[T]):
    """Encodes and validates the messages of one stream type.

    Pydantic models, dataclasses, TypedDicts and builtin types go through a pydantic
    ``TypeAdapter``; ``Any`` and bare ``dict`` go through orjson untouched.
    """

    __slots__ = ("_adapter", "type")

    def __init__(self, tp: Any) -> None:
        self.type = tp
        self._adapter: TypeAdapter[T] | None = None if _is_untyped(tp) else TypeAdapter(tp)

    def encode(self, message: T) -> bytes:
        """Serialise one message to compact JSON."""
        if self._adapter is None:
            return orjson.dumps(message)
        return self._adapter.dump_json(message)

    def frame(self, message: T, *, event: str | None = None, id: str | None = None) -> Frame:
        """Serialise one message into a frame ready to fan out."""
        return Frame(self.encode(message), event=event, id=id)

    def decode(self, raw: str | bytes) -> T:
        """Parse and validate one incoming message.

        Raises:
            APIError: ``invalid_argument`` naming the offending fields.
        """
        if self._adapter is None:
            try:
                return cast("T", orjson.loads(raw))
            except orjson.JSONDecodeError as exc:
                raise APIError.invalid_argument(f"Invalid message: not JSON ({exc})") from None
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            raise invalid_fields(exc.errors(), message="Invalid message") from None
