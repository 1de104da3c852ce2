"""Many open streams, one message: serialised and framed once, queued to each without waiting."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from sluicegate.streaming.codec import Frame, MessageCodec

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["BroadcastGroup", "Subscriber"]

T = TypeVar("T")


class Subscriber(Protocol):
    """What a broadcast group needs of a stream: queue a frame without waiting."""

    def offer(self, frame: Frame) -> bool:
        """Queue the frame; ``False`` when the stream is closed or was just cut off."""
        ...


class BroadcastGroup(Generic[T]):
    """A set of open streams that receive the same messages.

    :meth:`publish` encodes the message once (JSON, then SSE framing and WebSocket
    text at most once each) and offers the frame to every member. It never waits: a
    member whose queue is full is cut off with a ``slow_consumer`` error and leaves
    the group, and the others are not slowed.

    Args:
        message_type: the type of the messages (a pydantic model, a TypedDict, ``Any``...).
    """

    def __init__(self, message_type: Any = Any) -> None:
        self.codec: MessageCodec[T] = MessageCodec(message_type)
        self._members: dict[Subscriber, None] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, stream: object) -> bool:
        return stream in self._members

    def add(self, stream: Subscriber) -> None:
        """Add an open stream to the group."""
        self._members[stream] = None

    def discard(self, stream: Subscriber) -> None:
        """Remove a stream; removing one that is not a member does nothing."""
        self._members.pop(stream, None)

    @contextmanager
    def joined(self, stream: Subscriber) -> Iterator[None]:
        """Be a member for the duration of a ``with`` block (leaves on any exit)."""
        self.add(stream)
        try:
            yield
        finally:
            self.discard(stream)

    def publish(
        self,
        message: T,
        *,
        event: str | None = None,
        id: str | None = None,
        exclude: Subscriber | None = None,
    ) -> int:
        """Send a message to every member (but ``exclude``).

        Returns:
            How many members it was queued to.

        Raises:
            SSEFieldError: ``event`` or ``id`` contains CR or LF.
        """
        return self.publish_frame(self.codec.frame(message, event=event, id=id), exclude=exclude)

    def publish_frame(self, frame: Frame, *, exclude: Subscriber | None = None) -> int:
        """Send an already-encoded frame to every member (but ``exclude``)."""
        delivered = 0
        cut_off: list[Subscriber] = []
        for member in self._members:
            if member is exclude:
                continue
            if member.offer(frame):
                delivered += 1
            else:
                cut_off.append(member)
        for member in cut_off:
            self._members.pop(member, None)
        return delivered
