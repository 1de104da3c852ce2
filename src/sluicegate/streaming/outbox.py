"""The bounded queue between whoever produces a stream's frames and its one writer.

Policy (Litestar's ``BacklogStrategy`` in spirit, named ``overflow`` here): when a
stream's outbox is full, the stream is *cut off*, never grown. Broadcasts use
:meth:`Outbox.offer`, which never waits, so one slow reader cannot slow a publisher
or the other readers; a single-stream handler uses :meth:`Outbox.put`, which waits for
room up to a send timeout and then cuts the stream off the same way.

The writer takes everything queued at once (:meth:`Outbox.take`), so a backlog of
SSE frames leaves in one socket write instead of one write each.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from sluicegate.errors import StreamClosed
from sluicegate.streaming.codec import OPEN_MARKER

if TYPE_CHECKING:
    from sluicegate.streaming.codec import Frame

__all__ = ["Outbox"]


class Outbox:
    """A bounded queue of frames with a single consumer.

    Args:
        maxsize: how many frames may wait; one more cuts the stream off.
        put_timeout: seconds :meth:`put` waits for room before cutting the stream
            off; ``None`` waits as long as it takes.
    """

    __slots__ = (
        "_closed",
        "_controls",
        "_getter",
        "_items",
        "_maxsize",
        "_put_timeout",
        "_putters",
        "_started",
        "overflow",
    )

    def __init__(self, maxsize: int, *, put_timeout: float | None = None) -> None:
        if maxsize < 1:
            raise ValueError("Outbox maxsize must be at least 1")
        self._items: deque[Frame] = deque()
        self._maxsize = maxsize
        self._put_timeout = put_timeout
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._started = False
        self._controls = 0  # control frames queued: they do not count against maxsize
        #: Resolved when the outbox overflowed; the stream owning it must then close.
        self.overflow: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether no more frames are accepted."""
        return self._closed

    @property
    def started(self) -> bool:
        """Whether anything was ever queued: the stream is (being) opened."""
        return self._started

    def start(self) -> None:
        """Ask the writer to open the stream now, before any message."""
        if not self._started:
            self.push_control(OPEN_MARKER)

    @property
    def overflowed(self) -> bool:
        """Whether the stream was cut off for reading too slowly."""
        return self.overflow.done()

    def offer(self, frame: Frame) -> bool:
        """Queue a frame without waiting.

        Returns:
            ``True`` if queued; ``False`` if the outbox is closed or was full, in which
            case it is now overflowed and closed.
        """
        if self._closed:
            return False
        if len(self._items) - self._controls >= self._maxsize:
            self._trip()
            return False
        self._items.append(frame)
        self._started = True
        self._wake_getter()
        return True

    async def put(self, frame: Frame) -> None:
        """Queue a frame, waiting up to the put timeout for room.

        Raises:
            StreamClosed: the outbox is closed, or stayed full past the timeout (it is
                then overflowed).
        """
        if self._closed:
            raise StreamClosed("stream is closed")
        if len(self._items) - self._controls >= self._maxsize:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._put_timeout):
                    while len(self._items) - self._controls >= self._maxsize and not self._closed:
                        waiter = loop.create_future()
                        self._putters.append(waiter)
                        await waiter
            except TimeoutError:
                self._trip()
                raise StreamClosed("client did not read in time") from None
            if self._closed:
                raise StreamClosed("stream is closed")
        self._items.append(frame)
        self._started = True
        self._wake_getter()

    def push_control(self, frame: Frame) -> None:
        """Queue a control frame (heartbeat, final error) past the size limit."""
        self._items.append(frame)
        self._controls += 1
        self._started = True
        self._wake_getter()

    async def take(self) -> list[Frame]:
        """Wait for frames and take all that are queued.

        Returns:
            The queued frames in order; an empty list once the outbox is closed and drained.
        """
        while not self._items:
            if self._closed:
                return []
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        items = list(self._items)
        self._items.clear()
        self._controls = 0
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
        return items

    def close(self) -> None:
        """Accept no more frames; the writer finishes what is queued."""
        self._closed = True
        self._wake_getter()
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)

    def discard(self) -> None:
        """Close and drop whatever is queued (the stream is gone)."""
        self.close()
        self._items.clear()
        self._controls = 0

    def _trip(self) -> None:
        if not self.overflow.done():
            self.overflow.set_result(None)
        self.close()

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
