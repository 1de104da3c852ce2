"""Local fan-out for shared brokers (Redis, NATS): one reader per channel per node.

A shared broker keeps the log; each node runs, per channel that has local subscribers,
one :class:`ChannelReader` that follows the log and hands every new message to the
node's :class:`FanoutSubscription` objects. The broker's load therefore grows with
nodes and channels, not with subscribers.

The seam between a subscriber's backlog and its live messages is made exact by
ordering: a subscription registers with the reader *before* its backlog is read, holds
what the reader delivers meanwhile as pending, and once it knows the last position of
its backlog (:meth:`FanoutSubscription.set_backlog`) drops whatever is not newer.
Each message carries an order key (a Redis stream id as a tuple, a JetStream
sequence) so "newer" is a comparison, never a parse at delivery time.

The memory broker uses :class:`FanoutSubscription` too, delivering during ``publish``
with no floor (it takes the backlog and registers in one step, so there is no seam).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sluicegate.engines.broker import BrokerMessage, Gap, History, Sink

__all__ = ["ChannelReader", "FanoutSubscription", "ReaderPool"]

log = logging.getLogger("sluicegate.broker")

#: Seconds a reader waits before retrying after its broker failed.
READER_RETRY_SECONDS = 0.5


class FanoutSubscription:
    """A subscriber of one channel on this node, fed by the channel's reader."""

    __slots__ = (
        "_backlog",
        "_closed",
        "_done",
        "_floor",
        "_gap",
        "_on_close",
        "_pending",
        "_pending_limit",
        "_sink",
    )

    def __init__(self, pending_limit: int, on_close: Callable[[FanoutSubscription], None]) -> None:
        self._backlog: list[BrokerMessage] = []
        self._gap: Gap | None = None
        self._floor: Any = None  # order key of the last backlog message: skip what is not newer
        self._pending: list[tuple[Any, BrokerMessage]] | None = []
        self._pending_limit = pending_limit
        self._sink: Sink | None = None
        self._closed = False
        self._done: asyncio.Event | None = None
        self._on_close = on_close

    @property
    def gap(self) -> Gap | None:
        return self._gap

    @property
    def backlog(self) -> list[BrokerMessage]:
        return self._backlog

    @property
    def closed(self) -> bool:
        return self._closed

    def set_backlog(self, backlog: list[BrokerMessage], gap: Gap | None, floor: Any) -> None:
        """Record the backlog read after registering; drop pending messages it already holds."""
        self._backlog = backlog
        self._gap = gap
        self._floor = floor
        if self._pending and floor is not None:
            self._pending = [(key, message) for key, message in self._pending if key > floor]

    def deliver(self, key: Any, message: BrokerMessage) -> None:
        floor = self._floor
        if floor is not None and key <= floor:
            return
        sink = self._sink
        if sink is not None:
            try:
                accepted = sink(message)
            except Exception:  # a subscriber's bug must not reach the reader or the others
                log.exception("subscriber of %s failed; unsubscribing it", message.channel)
                accepted = False
            if not accepted:
                self.close()
        elif self._pending is not None:
            self._pending.append((key, message))
            if len(self._pending) > self._pending_limit:
                self.close()  # it could not catch up

    def start(self, sink: Sink) -> bool:
        if self._closed:
            return False
        pending, self._pending = self._pending or [], None
        for _, message in pending:
            if not sink(message):
                self.close()
                return False
        self._sink = sink
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending = None
            self._sink = None
            self._on_close(self)
            if self._done is not None:
                self._done.set()

    async def wait_closed(self) -> None:
        if self._closed:
            return
        if self._done is None:
            self._done = asyncio.Event()
        await self._done.wait()


class ChannelReader(ABC):
    """Follows one channel of a shared broker and fans its new messages out locally.

    Subclasses implement :meth:`read` (wait for the messages after the cursor) and
    :meth:`head` (the channel's last position now). The reader stops by itself when
    its last subscription closes.
    """

    def __init__(self, channel: str, on_idle: Callable[[ChannelReader], None]) -> None:
        self.channel = channel
        self.subscriptions: dict[FanoutSubscription, None] = {}
        self.cursor: Any = None
        self._task: asyncio.Task[None] | None = None
        self._on_idle = on_idle

    @abstractmethod
    async def head(self) -> Any:
        """The channel's last position now, as the cursor to read after."""

    @abstractmethod
    async def read(self, cursor: Any) -> list[tuple[Any, BrokerMessage]]:
        """Wait (bounded) for the messages after ``cursor``; ``(key, message)`` in order."""

    @abstractmethod
    def advance(self, key: Any) -> Any:
        """The cursor after the message whose order key is ``key``."""

    async def start(self) -> None:
        """Fix the cursor at the channel's head, then follow it in the background."""
        self.cursor = await self.head()
        self._task = asyncio.create_task(self._run(), name=f"broker reader {self.channel}")

    def add(self, subscription: FanoutSubscription) -> None:
        self.subscriptions[subscription] = None

    def remove(self, subscription: FanoutSubscription) -> None:
        self.subscriptions.pop(subscription, None)
        if not self.subscriptions:
            self.stop()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._on_idle(self)

    async def wait_stopped(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while self.subscriptions:
            try:
                batch = await self.read(self.cursor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reader of channel %s failed (%s); retrying", self.channel, exc)
                await asyncio.sleep(READER_RETRY_SECONDS)
                continue
            for key, message in batch:
                self.cursor = self.advance(key)
                for subscription in list(self.subscriptions):
                    subscription.deliver(key, message)


class ReaderPool:
    """This node's readers, one per channel with local subscribers."""

    def __init__(self, factory: Callable[[str, Callable[[ChannelReader], None]], ChannelReader]) -> None:
        self._factory = factory
        self.readers: dict[str, ChannelReader] = {}
        self._starting: dict[str, asyncio.Future[ChannelReader]] = {}

    async def register(self, channel: str, pending_limit: int) -> FanoutSubscription:
        """A new subscription of ``channel``, registered with its (started) reader."""
        reader = self.readers.get(channel)
        if reader is None:
            reader = await self._start(channel)
        subscription = FanoutSubscription(pending_limit, reader.remove)
        reader.add(subscription)
        return subscription

    async def subscribe(
        self,
        channel: str,
        pending_limit: int,
        *,
        after: str | None,
        from_start: bool,
        read: Callable[[], Awaitable[History]],
        order: Callable[[str], Any],
    ) -> FanoutSubscription:
        """A subscription with its backlog, the seam made exact: register with the reader,
        then ``read`` the backlog, then drop what the reader delivered meanwhile that the
        backlog already holds (``order`` turns a position into its order key, and refuses
        a malformed ``after`` before anything is registered)."""
        floor = order(after) if after is not None else None
        subscription = await self.register(channel, pending_limit)
        try:
            if after is None and not from_start:
                subscription.set_backlog([], None, None)
                return subscription
            page = await read()
        except BaseException:
            subscription.close()
            raise
        if page.messages:
            floor = order(page.messages[-1].position)
        subscription.set_backlog(page.messages, page.gap, floor)
        return subscription

    async def _start(self, channel: str) -> ChannelReader:
        starting = self._starting.get(channel)
        if starting is not None:  # another subscriber is starting this reader right now
            return await asyncio.shield(starting)
        future: asyncio.Future[ChannelReader] = asyncio.get_running_loop().create_future()
        self._starting[channel] = future
        try:
            reader = self._factory(channel, self._forget)
            await reader.start()
            self.readers[channel] = reader
            future.set_result(reader)
            return reader
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._starting[channel]

    def _forget(self, reader: ChannelReader) -> None:
        if self.readers.get(reader.channel) is reader:
            del self.readers[reader.channel]

    def subscribers(self, channel: str) -> int:
        reader = self.readers.get(channel)
        return len(reader.subscriptions) if reader is not None else 0

    async def close(self) -> None:
        for reader in list(self.readers.values()):
            for subscription in list(reader.subscriptions):
                subscription.close()
            await reader.wait_stopped()
        self.readers.clear()
