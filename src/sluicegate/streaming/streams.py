"""The stream objects handed to handlers: :class:`StreamOut`, :class:`StreamIn`, :class:`StreamInOut`.

Handlers only see these; the transports (SSE, WebSocket, NDJSON over HTTP) feed and
drain them.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from sluicegate.errors import APIError, StreamClosed

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from starlette.requests import HTTPConnection

    from sluicegate.streaming.codec import Frame, MessageCodec
    from sluicegate.streaming.outbox import Outbox

__all__ = ["StreamIn", "StreamInOut", "StreamInfo", "StreamOut", "Transport"]

Transport = Literal["sse", "websocket", "http"]

InT = TypeVar("InT")
OutT = TypeVar("OutT")


class _End:
    """Marks the end of a stream's input."""


END_OF_INPUT = _End()


class StreamInfo:
    """What every stream knows about itself.

    Attributes:
        id: a unique id for logs and metrics.
        path: the route path template (``/api/channels/{channel}/events``).
        transport: ``"sse"``, ``"websocket"`` or ``"http"`` (NDJSON upload).
        last_event_id: where the client asks to resume from (``Last-Event-ID``
            header or ``lastEventId`` query), or ``None``.
        auth: the caller's auth data when the endpoint has ``auth=True``.
        connection: the request that opened the stream (its headers and query), when
            the stream was opened by one.
    """

    __slots__ = ("auth", "connection", "id", "last_event_id", "path", "transport")

    def __init__(
        self,
        *,
        path: str,
        transport: Transport,
        last_event_id: str | None,
        auth: Any,
        connection: HTTPConnection | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.path = path
        self.transport: Transport = transport
        self.last_event_id = last_event_id
        self.auth = auth
        self.connection = connection


class _Sender(Generic[OutT]):
    def __init__(self, codec: MessageCodec[OutT], outbox: Outbox) -> None:
        self._codec = codec
        self._outbox = outbox
        self.messages_sent = 0

    def encode(self, message: OutT, *, event: str | None = None, id: str | None = None) -> Frame:
        """Serialise a message once, to send it to many streams."""
        return self._codec.frame(message, event=event, id=id)

    async def send(self, message: OutT, *, event: str | None = None, id: str | None = None) -> None:
        """Send one message, waiting (up to the send timeout) while the client catches up.

        Args:
            message: the typed message.
            event: SSE event name; ``None`` sends an unnamed ``data:``-only event.
            id: SSE event id, echoed back by clients as ``Last-Event-ID``.

        Raises:
            StreamClosed: the client has gone, or read too slowly and was cut off.
        """
        await self.send_frame(self._codec.frame(message, event=event, id=id))

    async def send_frame(self, frame: Frame) -> None:
        """Send an already-encoded frame, waiting as :meth:`send` does."""
        await self._outbox.put(frame)
        self.messages_sent += 1

    async def open(self) -> None:
        """Open the stream now (send the response headers or accept the WebSocket).

        A stream opens by itself with its first message, and otherwise after the
        app's open timeout. Until it is open, an ``APIError`` raised by the handler
        is answered as a plain HTTP error (a 404 with a JSON body, say); call this
        once the request is known to be good, when the first message may be a while.
        """
        self._outbox.start()

    def offer(self, frame: Frame) -> bool:
        """Queue a frame without waiting; a full queue cuts this stream off.

        Returns:
            Whether the frame was queued.
        """
        if self._outbox.offer(frame):
            self.messages_sent += 1
            return True
        return False

    @property
    def closed(self) -> bool:
        """Whether the stream accepts no more messages."""
        return self._outbox.closed

    @property
    def backlog(self) -> int:
        """Messages queued for this client and not yet written to its socket."""
        return len(self._outbox)


class _Receiver(Generic[InT]):
    def __init__(self, inbox: asyncio.Queue[Any], opener: Callable[[], None] | None) -> None:
        self._inbox = inbox
        self._opener = opener
        self.messages_received = 0

    def __aiter__(self) -> _Receiver[InT]:
        return self

    async def __anext__(self) -> InT:
        if self._opener is not None:  # the client can only send once the stream is open
            self._opener()
            self._opener = None
        item = await self._inbox.get()
        if item is END_OF_INPUT:
            self._inbox.put_nowait(END_OF_INPUT)  # stay at the end for later reads
            raise StopAsyncIteration
        if isinstance(item, APIError):
            raise item
        self.messages_received += 1
        return item  # type: ignore[no-any-return]

    async def recv(self) -> InT:
        """Receive the next message.

        Raises:
            StreamClosed: the input has ended.
            APIError: the next message was invalid (``invalid_argument``).
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise StreamClosed("input has ended") from None


class StreamOut(_Sender[OutT]):
    """A server-to-client stream, served over SSE and WebSocket from one handler."""

    def __init__(self, info: StreamInfo, codec: MessageCodec[OutT], outbox: Outbox) -> None:
        super().__init__(codec, outbox)
        self.info = info

    @property
    def last_event_id(self) -> str | None:
        """Where the client asks to resume from, or ``None``."""
        return self.info.last_event_id

    @property
    def auth(self) -> Any:
        """The caller's auth data (``auth=True`` endpoints)."""
        return self.info.auth


class StreamIn(_Receiver[InT]):
    """A client-to-server stream: iterate it for messages; the handler's return value is the response."""

    def __init__(self, info: StreamInfo, inbox: asyncio.Queue[Any], opener: Callable[[], None] | None = None) -> None:
        super().__init__(inbox, opener)
        self.info = info

    @property
    def auth(self) -> Any:
        """The caller's auth data (``auth=True`` endpoints)."""
        return self.info.auth


class StreamInOut(_Receiver[InT], Generic[InT, OutT]):
    """A bidirectional stream over WebSocket: iterate it for messages and ``send`` replies."""

    def __init__(
        self,
        info: StreamInfo,
        inbox: asyncio.Queue[Any],
        codec: MessageCodec[OutT],
        outbox: Outbox,
    ) -> None:
        super().__init__(inbox, outbox.start)
        self.info = info
        self._out = _Sender(codec, outbox)

    @property
    def auth(self) -> Any:
        """The caller's auth data (``auth=True`` endpoints)."""
        return self.info.auth

    @property
    def last_event_id(self) -> str | None:
        """Where the client asks to resume from, or ``None``."""
        return self.info.last_event_id

    def encode(self, message: OutT, *, event: str | None = None, id: str | None = None) -> Frame:
        """Serialise a message once, to send it to many streams."""
        return self._out.encode(message, event=event, id=id)

    async def send(self, message: OutT, *, event: str | None = None, id: str | None = None) -> None:
        """Send one message to this client (see :meth:`StreamOut.send`)."""
        await self._out.send(message, event=event, id=id)

    async def send_frame(self, frame: Frame) -> None:
        """Send an already-encoded frame."""
        await self._out.send_frame(frame)

    async def open(self) -> None:
        """Accept the WebSocket now (see :meth:`StreamOut.open`)."""
        await self._out.open()

    def offer(self, frame: Frame) -> bool:
        """Queue a frame without waiting; a full queue cuts this stream off."""
        return self._out.offer(frame)

    @property
    def closed(self) -> bool:
        """Whether the stream accepts no more messages."""
        return self._out.closed

    @property
    def messages_sent(self) -> int:
        """How many messages were queued to this client."""
        return self._out.messages_sent

    @property
    def backlog(self) -> int:
        """Messages queued for this client and not yet written to its socket."""
        return self._out.backlog
