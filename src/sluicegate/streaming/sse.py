"""Server-Sent Events framing: a pure encoder and an incremental decoder, no I/O.

The encoder follows the WHATWG ``text/event-stream`` format. It is the only place in
Sluicegate that writes ``data:`` lines. Data containing line breaks becomes several
``data:`` lines (the client joins them back with ``\\n``); an event name, id or
comment that contains CR or LF is refused with :class:`SSEFieldError`, so no value
that came from a client can inject an event of its own.

The decoder is used by the Python SDK, the benchmarks and the tests: bytes in, events
out, any chunking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sluicegate.errors import SSEFieldError

__all__ = [
    "HEARTBEAT",
    "SSEDecoder",
    "SSEEvent",
    "encode_comment",
    "encode_event",
    "encode_json_event",
    "encode_retry",
    "retry_field",
]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n]")

#: The comment frame sent to keep idle connections open through proxies.
HEARTBEAT = b": ping\n\n"


def _check_field(name: str, value: str) -> None:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise SSEFieldError(f"SSE {name} must not contain CR or LF: {value!r}")


def field_lines(event: str | None, id: str | None) -> str:
    head = ""
    if event is not None:
        _check_field("event name", event)
        head = f"event: {event}\n"
    if id is not None:
        _check_field("id", id)
        if "\0" in id:
            raise SSEFieldError(f"SSE id must not contain NUL: {id!r}")
        head += f"id: {id}\n"
    return head


def encode_event(data: str | None, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame one event.

    Args:
        data: the payload; ``None`` sends an event without a ``data:`` field (which
            browsers do not dispatch, useful for an ``id:``-only marker). Line breaks
            (CRLF, CR or LF) split it over several ``data:`` lines.
        event: the event name (``event:``); ``None`` makes an unnamed ``message`` event.
        id: the event id (``id:``), which clients echo back in ``Last-Event-ID``.

    Returns:
        The UTF-8 bytes of the frame, ending with the blank line that dispatches it.

    Raises:
        SSEFieldError: when ``event`` or ``id`` contains CR or LF, or ``id`` contains NUL.
    """
    head = field_lines(event, id)
    if data is None:
        return (head + "\n").encode()
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:
        body = f"data: {data}\n"
    return (head + body + "\n").encode()


def encode_json_event(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame an event whose data is already-serialised UTF-8 (normally compact JSON).

    Compact JSON never contains a raw line break, so the data goes on one ``data:``
    line without being decoded; anything else falls back to :func:`encode_event`.
    This is the hot path of every JSON stream.

    Raises:
        SSEFieldError: as :func:`encode_event`.
    """
    if b"\n" in data or b"\r" in data:
        return encode_event(data.decode(), event=event, id=id)
    if event is None and id is None:
        return b"data: " + data + b"\n\n"
    return field_lines(event, id).encode() + b"data: " + data + b"\n\n"


def encode_retry(milliseconds: int) -> bytes:
    """Frame a lone ``retry:`` field telling clients how long to wait before reconnecting."""
    return retry_field(milliseconds) + b"\n"


def retry_field(milliseconds: int) -> bytes:
    """The ``retry:`` line, to put at the head of an event's frame.

    Raises:
        SSEFieldError: for a negative value.
    """
    if milliseconds < 0:
        raise SSEFieldError(f"SSE retry must be a non-negative integer, got {milliseconds}")
    return f"retry: {int(milliseconds)}\n".encode()


def encode_comment(text: str) -> bytes:
    """Frame a comment, which clients ignore (used for heartbeats)."""
    _check_field("comment", text)
    return f": {text}\n\n".encode()


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event, as a client sees it."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental ``text/event-stream`` parser.

    Feed it bytes as they arrive with :meth:`feed`; it returns the events they
    complete. Comments are counted in :attr:`comments` (heartbeats), ``retry:`` values
    kept in :attr:`retry`, and the last seen id in :attr:`last_event_id`, as a browser
    would. Lines end with CRLF, LF or CR; a leading UTF-8 byte order mark is skipped and
    invalid UTF-8 becomes U+FFFD, as the WHATWG parser does.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the last line ended with CR: an LF arriving next belongs to it
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._has_data = False
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume bytes; return the events they complete, in order."""
        buf = self._buffer + chunk
        if not self._started:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._buffer = buf
                return []  # could still be a BOM
            self._started = True
            buf = buf.removeprefix(b"\xef\xbb\xbf")
        events: list[SSEEvent] = []
        pos = 0
        while True:
            if self._skip_lf and pos < len(buf):
                self._skip_lf = False
                if buf[pos : pos + 1] == b"\n":
                    pos += 1
            cr = buf.find(b"\r", pos)
            lf = buf.find(b"\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                line, pos = buf[pos:cr], cr + 1
                self._skip_lf = True
            else:
                line, pos = buf[pos:lf], lf + 1
            event = self._process(line.decode(errors="replace"))
            if event is not None:
                events.append(event)
        self._buffer = buf[pos:]
        return events

    def _process(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._has_data:
            self._event = ""
            return None
        event = SSEEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self.last_event_id,
            retry=self.retry,
        )
        self._data = []
        self._event = ""
        self._has_data = False
        return event
