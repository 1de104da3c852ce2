"""Relaying a broker subscription into an open stream: backlog at the client's pace, then live.

Every surface that streams a channel (native channels, challenge chat, job events)
goes through :func:`follow`, so resume, gaps and slow consumers behave the same
everywhere, and each message is framed once per node (the frame is kept in the
message's memo), not once per subscriber.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluicegate.errors import APIError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate.engines.broker import BrokerMessage, Gap, Subscription
    from sluicegate.streaming.codec import Frame

__all__ = ["follow", "memo_frame"]


def memo_frame(message: BrokerMessage, key: str, build: Callable[[BrokerMessage], Frame]) -> Frame:
    """The frame ``build`` makes of ``message``, built once per node and kept in its memo."""
    frame: Frame | None = message.memo.get(key)
    if frame is None:
        frame = message.memo[key] = build(message)
    return frame


async def follow(
    stream: Any,
    subscription: Subscription,
    frame_of: Callable[[BrokerMessage], Frame],
    *,
    gap_frame: Callable[[Gap], Frame],
    until: Callable[[BrokerMessage], bool] | None = None,
) -> None:
    """Send a subscription's gap and backlog, then every new message, until it ends.

    Args:
        stream: an open :class:`~sluicegate.streaming.StreamOut` or ``StreamInOut``.
        subscription: from :meth:`Broker.subscribe`; closed when this returns.
        frame_of: the (memoised) frame of a message for this surface.
        gap_frame: the frame telling the client that history was lost.
        until: a message after which the stream should end (a challenge closing).

    Raises:
        APIError: ``slow_consumer`` when the client could not catch up with the backlog
            before too many new messages arrived.
    """
    try:
        if subscription.gap is not None:
            await stream.send_frame(gap_frame(subscription.gap))
        for message in subscription.backlog:
            await stream.send_frame(frame_of(message))
            if until is not None and until(message):
                return
        await stream.open()
        offer = stream.offer
        if until is None:

            def sink(message: BrokerMessage) -> bool:
                return bool(offer(frame_of(message)))
        else:
            stop = until

            def sink(message: BrokerMessage) -> bool:
                return bool(offer(frame_of(message))) and not stop(message)

        if not subscription.start(sink):
            raise APIError.slow_consumer("The client could not catch up with the channel; resume with Last-Event-ID")
        await subscription.wait_closed()
    finally:
        subscription.close()
