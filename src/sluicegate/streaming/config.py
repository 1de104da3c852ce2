"""Run-time options of the stream endpoints of one app, and the hooks that observe them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from sluicegate.clock import Clock, SystemClock
from sluicegate.security.auth import Authenticator, DenyAllAuthenticator

if TYPE_CHECKING:
    from sluicegate.errors import APIError
    from sluicegate.security.ratelimit import RateLimiter
    from sluicegate.streaming.streams import StreamInfo

__all__ = ["LoggingObserver", "Outcome", "StreamConfig", "StreamObserver", "StreamStats"]

#: How a stream ended.
Outcome = Literal["completed", "error", "disconnected", "slow_consumer"]

log = logging.getLogger("sluicegate.streams")


@dataclass(slots=True)
class StreamStats:
    """Counters of one open stream, for logs and metrics."""

    started: float
    frames_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    last_write: float = 0.0

    @property
    def messages_sent(self) -> int:
        """Messages written (heartbeats and other control frames are not counted)."""
        return self.frames_sent


class StreamObserver(Protocol):
    """Told when streams open and close (logs and metrics hang off this)."""

    def opened(self, info: StreamInfo, kind: str) -> None:
        """A stream was accepted and its handler is about to run."""
        ...

    def closed(
        self, info: StreamInfo, kind: str, outcome: Outcome, error: APIError | None, stats: StreamStats, duration: float
    ) -> None:
        """A stream ended; its handler's ``finally`` blocks have run."""
        ...


class LoggingObserver:
    """Logs the start (DEBUG) and end (INFO, or WARNING for a slow consumer) of every stream."""

    def opened(self, info: StreamInfo, kind: str) -> None:
        log.debug("stream opened", extra={"stream_id": info.id, "route": info.path, "transport": info.transport})

    def closed(
        self, info: StreamInfo, kind: str, outcome: Outcome, error: APIError | None, stats: StreamStats, duration: float
    ) -> None:
        level = logging.WARNING if outcome == "slow_consumer" else logging.INFO
        log.log(
            level,
            "stream %s %s via %s ended: %s after %.3fs, %d sent, %d received",
            info.id,
            info.path,
            info.transport,
            outcome if error is None else f"{outcome} ({error.code.value})",
            duration,
            stats.messages_sent,
            stats.messages_received,
            extra={"stream_id": info.id, "route": info.path, "transport": info.transport, "outcome": outcome},
        )


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Options shared by every stream endpoint of an app.

    Attributes:
        heartbeat_interval: seconds of silence after which an SSE stream gets a
            ``: ping`` comment; ``None`` disables heartbeats.
        retry_ms: the ``retry:`` sent when an SSE stream opens; ``None`` sends none.
        outbox_size: frames that may wait for a slow client before it is cut off.
        inbox_size: incoming messages buffered before the server stops reading.
        send_timeout: seconds a handler's ``send`` waits for a full queue to drain
            before the client is cut off as a slow consumer; ``None`` waits forever.
        close_timeout: seconds to spend delivering a final error to a client being
            cut off.
        open_timeout: seconds a handler may take before its first message (or
            ``stream.open()``) before the stream is opened anyway; until then an
            ``APIError`` it raises is answered as a plain HTTP error.
        max_message_bytes: largest NDJSON line accepted by ``stream_in`` over HTTP.
        authenticator: called for ``auth=True`` endpoints.
        limiter: counts endpoints declared with ``rate_limit=``.
        observer: told of every stream's start and end.
        clock: time source for heartbeats and durations.
    """

    heartbeat_interval: float | None = 15.0
    retry_ms: int | None = 3000
    outbox_size: int = 1000
    inbox_size: int = 64
    send_timeout: float | None = 10.0
    close_timeout: float = 5.0
    open_timeout: float = 1.0
    max_message_bytes: int = 1024 * 1024
    authenticator: Authenticator = field(default_factory=DenyAllAuthenticator)
    limiter: RateLimiter | None = None
    observer: StreamObserver = field(default_factory=LoggingObserver)
    clock: Clock = field(default_factory=SystemClock)
