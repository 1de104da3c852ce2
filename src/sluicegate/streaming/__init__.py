"""Typed stream endpoints over SSE and WebSocket (the third seed's framework, for Python).

.. code-block:: python

    from sluicegate.streaming import StreamRouter, StreamOut

    streams = StreamRouter()

    @streams.stream_out("/logs")
    async def logs(handshake: LogsHandshake, stream: StreamOut[LogRow]) -> None:
        for row in range(handshake.rows):
            await stream.send(LogRow(row=row), id=str(row))

See :mod:`sluicegate.streaming.endpoints` for how each kind is served.
"""

from __future__ import annotations

from sluicegate.streaming.broadcast import BroadcastGroup
from sluicegate.streaming.codec import Frame, MessageCodec
from sluicegate.streaming.config import StreamConfig, StreamObserver, StreamStats
from sluicegate.streaming.endpoints import StreamEndpoint, StreamRouter
from sluicegate.streaming.sse import SSEDecoder, SSEEvent, encode_event
from sluicegate.streaming.streams import StreamIn, StreamInfo, StreamInOut, StreamOut

__all__ = [
    "BroadcastGroup",
    "Frame",
    "MessageCodec",
    "SSEDecoder",
    "SSEEvent",
    "StreamConfig",
    "StreamEndpoint",
    "StreamIn",
    "StreamInOut",
    "StreamInfo",
    "StreamObserver",
    "StreamOut",
    "StreamRouter",
    "StreamStats",
    "encode_event",
]
