"""The broker engine: channels of messages with positions, history, and live delivery.

A broker keeps, per channel, an ordered log of messages (``bytes``), each with a
*position*: an opaque string that the broker can later resume from. Subscribing from
a position gives what the retained history holds after it (the *backlog*), then every
new message, with nothing lost or repeated at the seam between the two. A position
older than what is retained, or from an earlier incarnation of the broker, is
reported as a :class:`Gap` instead of being skipped silently.

Delivery is push-based and never waits: a subscriber hands the broker a *sink*, a
plain function that queues a message and returns ``False`` when the subscriber is
gone or full, which ends the subscription. That keeps the publisher's cost one
function call per local subscriber, whatever the subscribers do.

Implementations, chosen by ``SLUICEGATE_BROKER_URL``: ``memory://`` (one process),
``redis://`` (Redis Streams) and ``nats://`` (NATS JetStream). The shared ones deliver
through one reader per channel per node (:mod:`sluicegate.engines.broker.fanout`), so
their live delivery is asynchronous: a subscriber sees a message shortly after
``publish`` returns, in order, rather than during it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from sluicegate.clock import Clock

__all__ = [
    "Broker",
    "BrokerMessage",
    "ChannelStats",
    "Gap",
    "History",
    "Sink",
    "Subscription",
    "broker_from_url",
]


class BrokerMessage:
    """One message of a channel.

    Attributes:
        channel: the channel it was published to.
        position: where it stands in the channel; resume after it with this.
        data: the payload, as published.
        published_at: Unix time of publication (seconds).
        memo: per-node memo for whatever consumers derive from the message once (an
            SSE frame, a parsed field), so that it is derived once, not per subscriber.
    """

    __slots__ = ("channel", "data", "memo", "position", "published_at")

    def __init__(self, channel: str, position: str, data: bytes, published_at: float) -> None:
        self.channel = channel
        self.position = position
        self.data = data
        self.published_at = published_at
        self.memo: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"BrokerMessage({self.channel!r}, {self.position!r}, {self.data[:40]!r})"


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages between ``after`` and ``resumed_from`` are no longer retained.

    Attributes:
        after: the position the subscriber asked to resume after.
        resumed_from: the oldest position still retained (``None`` when none is).
        reason: ``expired`` (older than the history) or ``unknown_epoch`` (from
            before the broker's history was lost, a restart of the memory broker).
    """

    after: str
    resumed_from: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class History:
    """A page of a channel's retained history."""

    messages: list[BrokerMessage]
    gap: Gap | None
    last_position: str | None


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """What a node knows of a channel."""

    channel: str
    subscribers: int
    last_position: str | None
    retained: int


#: Queues one message for a subscriber; ``False`` means the subscriber is gone or full.
Sink: TypeAlias = Callable[[BrokerMessage], bool]


class Subscription(Protocol):
    """A subscriber's place in a channel.

    Between :meth:`Broker.subscribe` and :meth:`start`, new messages wait in the
    subscription (up to its limit); the subscriber first sends :attr:`backlog`
    (after :attr:`gap`, if any) at its own pace, then calls :meth:`start`.
    """

    @property
    def gap(self) -> Gap | None:
        """Set when the requested position is older than the retained history."""
        ...

    @property
    def backlog(self) -> list[BrokerMessage]:
        """Retained messages after the requested position, oldest first."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (closed, or its sink refused a message)."""
        ...

    def start(self, sink: Sink) -> bool:
        """Deliver what arrived since :meth:`Broker.subscribe`, then every new message, to ``sink``.

        Returns:
            ``False`` if the subscription already ended: too much arrived before it
            started (the subscriber was too slow to catch up) or the sink refused.
        """
        ...

    def close(self) -> None:
        """Stop delivering; closing twice does nothing."""
        ...

    async def wait_closed(self) -> None:
        """Return once the subscription has ended."""
        ...


class Broker(Protocol):
    """Publish to channels; subscribe from a position; read history."""

    name: str

    async def open(self) -> None:
        """Connect; called once at start-up."""
        ...

    async def close(self) -> None:
        """Disconnect and end every subscription."""
        ...

    async def check(self) -> None:
        """Return if the broker is reachable, raise otherwise."""
        ...

    async def publish(self, channel: str, data: bytes) -> str:
        """Append a message to a channel and deliver it to its subscribers.

        Returns:
            The message's position.
        """
        ...

    async def subscribe(self, channel: str, *, after: str | None = None, from_start: bool = False) -> Subscription:
        """Subscribe to a channel, with the retained messages after ``after`` as backlog
        (every retained message with ``from_start``; none when neither is given).

        Raises:
            APIError: ``invalid_argument`` for a position this broker cannot have issued.
        """
        ...

    async def history(self, channel: str, *, after: str | None = None, limit: int = 100) -> History:
        """Up to ``limit`` retained messages after ``after`` (from the oldest when ``None``).

        Raises:
            APIError: ``invalid_argument`` for a malformed position.
        """
        ...

    async def channels(self, prefix: str = "") -> list[ChannelStats]:
        """The channels whose name starts with ``prefix``, with this node's subscriber counts."""
        ...

    async def stats(self, channel: str) -> ChannelStats:
        """One channel's statistics (zeros for a channel never used)."""
        ...


def broker_from_url(url: str, *, history_size: int, history_seconds: float, pending_limit: int, clock: Clock) -> Broker:
    """The broker named by ``SLUICEGATE_BROKER_URL``.

    Raises:
        ConfigurationError: for a scheme no implementation handles.
    """
    scheme = url.partition("://")[0]
    if scheme == "memory":
        from sluicegate.engines.broker.memory import MemoryBroker

        return MemoryBroker(
            history_size=history_size, history_seconds=history_seconds, pending_limit=pending_limit, clock=clock
        )
    if scheme in ("redis", "rediss"):
        from sluicegate.engines.broker.redis_streams import RedisBroker

        return RedisBroker(
            url, history_size=history_size, history_seconds=history_seconds, pending_limit=pending_limit, clock=clock
        )
    if scheme == "nats":
        from sluicegate.engines.broker.jetstream import JetStreamBroker

        return JetStreamBroker(
            url, history_size=history_size, history_seconds=history_seconds, pending_limit=pending_limit, clock=clock
        )
    raise ConfigurationError(
        f"SLUICEGATE_BROKER_URL has an unsupported scheme {scheme!r}; use memory://, redis:// or nats://"
    )
