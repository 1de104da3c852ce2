"""The in-process broker: bounded history per channel, an epoch per process.

Positions are ``<epoch>.<generation>-<sequence>``. The epoch is random per broker
instance, so a client resuming with a position from before a restart (whose history is
gone) gets a :class:`~sluicegate.engines.broker.Gap` rather than a silent skip. History
is trimmed to ``history_size`` messages and ``history_seconds`` of age; channels with
no history and no subscribers are forgotten, and a channel used again afterwards
starts a new generation, so positions from before are reported as a gap too, never
mistaken for new ones.

Everything runs on the event loop without awaiting, so the seam between backlog and
live delivery is exact: :meth:`MemoryBroker.subscribe` takes the backlog and registers
the subscription in one step.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from typing import TYPE_CHECKING

from sluicegate.engines.broker import BrokerMessage, ChannelStats, Gap, History
from sluicegate.engines.broker.fanout import FanoutSubscription
from sluicegate.errors import APIError

if TYPE_CHECKING:
    from sluicegate.clock import Clock

__all__ = ["MemoryBroker"]


class _Channel:
    __slots__ = ("log", "name", "prefix", "seq", "subscriptions")

    def __init__(self, name: str, prefix: str, history_size: int) -> None:
        self.name = name
        self.prefix = prefix
        self.log: deque[BrokerMessage] = deque(maxlen=history_size)
        self.seq = 0
        self.subscriptions: dict[FanoutSubscription, None] = {}


class MemoryBroker:
    """A broker in this process's memory (the single-node default, ``memory://``).

    Args:
        history_size: messages retained per channel.
        history_seconds: age after which retained messages are dropped.
        pending_limit: messages a subscription may hold between subscribe and start.
        clock: the time source for ages.
    """

    name = "broker"

    def __init__(self, *, history_size: int, history_seconds: float, pending_limit: int, clock: Clock) -> None:
        self.epoch = secrets.token_hex(4)
        self._generations = itertools.count(1)
        self._history_size = history_size
        self._history_seconds = history_seconds
        self._pending_limit = pending_limit
        self._clock = clock
        self._channels: dict[str, _Channel] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        for channel in list(self._channels.values()):
            for subscription in list(channel.subscriptions):
                subscription.close()
        self._channels.clear()

    async def check(self) -> None:
        return None

    def _trim(self, channel: _Channel) -> None:
        oldest = self._clock.now().timestamp() - self._history_seconds
        log = channel.log
        while log and log[0].published_at < oldest:
            log.popleft()

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            prefix = f"{self.epoch}.{next(self._generations)}-"
            channel = self._channels[name] = _Channel(name, prefix, self._history_size)
        return channel

    async def publish(self, channel: str, data: bytes) -> str:
        ch = self._channel(channel)
        ch.seq += 1
        message = BrokerMessage(channel, f"{ch.prefix}{ch.seq}", data, self._clock.now().timestamp())
        ch.log.append(message)
        self._trim(ch)
        for subscription in list(ch.subscriptions):
            subscription.deliver(None, message)
        return message.position

    @staticmethod
    def _parse(position: str) -> tuple[str, int]:
        """Split a position into its prefix (``<epoch>.<generation>-``) and sequence.

        Raises:
            APIError: ``invalid_argument`` for something that is no position at all.
        """
        head, sep, seq = position.rpartition("-")
        epoch, dot, generation = head.partition(".")
        if not sep or not dot or not epoch or not generation.isdigit() or not seq.isascii() or not seq.isdigit():
            raise APIError.invalid_argument(f"Invalid position {position!r}: expected <epoch>.<generation>-<sequence>")
        return head + sep, int(seq)

    def _after(self, channel: _Channel, after: str | None) -> tuple[list[BrokerMessage], Gap | None]:
        self._trim(channel)
        log = channel.log
        if after is None:
            return list(log), None
        prefix, seq = self._parse(after)
        first = log[0].position if log else None
        if prefix != channel.prefix:
            reason = "expired" if prefix.startswith(f"{self.epoch}.") else "unknown_epoch"
            return list(log), Gap(after=after, resumed_from=first, reason=reason)
        if seq > channel.seq:
            raise APIError.invalid_argument(f"Position {after!r} is ahead of the channel")
        oldest = int(log[0].position.rpartition("-")[2]) if log else channel.seq + 1
        gap = Gap(after=after, resumed_from=first, reason="expired") if seq + 1 < oldest else None
        start = max(0, seq + 1 - oldest)
        return [log[i] for i in range(start, len(log))], gap

    async def subscribe(
        self, channel: str, *, after: str | None = None, from_start: bool = False
    ) -> FanoutSubscription:
        ch = self._channel(channel)
        backlog, gap = self._after(ch, after) if after is not None or from_start else ([], None)
        subscription = FanoutSubscription(self._pending_limit, lambda s: ch.subscriptions.pop(s, None))
        subscription.set_backlog(backlog, gap, None)  # delivered during publish: no seam to filter
        ch.subscriptions[subscription] = None
        return subscription

    async def history(self, channel: str, *, after: str | None = None, limit: int = 100) -> History:
        ch = self._channels.get(channel)
        if ch is None:
            if after is None:
                return History([], None, None)
            prefix, _ = self._parse(after)  # refuses garbage too
            reason = "expired" if prefix.startswith(f"{self.epoch}.") else "unknown_epoch"
            return History([], Gap(after=after, resumed_from=None, reason=reason), None)
        messages, gap = self._after(ch, after)
        last = ch.log[-1].position if ch.log else None
        return History(messages[:limit], gap, last)

    def _stats(self, channel: _Channel) -> ChannelStats:
        self._trim(channel)
        last = f"{channel.prefix}{channel.seq}" if channel.seq else None
        return ChannelStats(channel.name, len(channel.subscriptions), last, len(channel.log))

    async def channels(self, prefix: str = "") -> list[ChannelStats]:
        result = []
        for name, channel in list(self._channels.items()):
            if not name.startswith(prefix):
                continue
            stats = self._stats(channel)
            if not stats.retained and not stats.subscribers:
                del self._channels[name]  # nothing left to say about it
                continue
            result.append(stats)
        return sorted(result, key=lambda s: s.channel)

    async def stats(self, channel: str) -> ChannelStats:
        ch = self._channels.get(channel)
        if ch is None:
            return ChannelStats(channel, 0, None, 0)
        return self._stats(ch)
