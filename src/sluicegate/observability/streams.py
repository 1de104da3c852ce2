"""Logs and metrics for every stream, fed by the streaming framework's observer hooks.

Each stream logs its start and its end at INFO (the fourth seed's "Stream
start/complete"), with its id, route, transport, tenant, and at the end its outcome,
duration and message counts; a failure (a 5xx error) logs at ERROR and a slow
consumer at WARNING.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.errors import APIError
    from sluicegate.observability.metrics import Metrics
    from sluicegate.streaming.config import Outcome, StreamStats
    from sluicegate.streaming.streams import StreamInfo

__all__ = ["StreamTelemetry"]

log = logging.getLogger("sluicegate.streams")

_KIND = {"out": "stream_out", "in": "stream_in", "in_out": "stream_in_out"}


def _fields(info: StreamInfo, kind: str) -> dict[str, Any]:
    return {
        "stream_id": info.id,
        "route": info.path,
        "kind": _KIND.get(kind, kind),
        "transport": info.transport,
        "tenant": getattr(info.auth, "tenant", None),
    }


class StreamTelemetry:
    """The app's stream observer: logs and Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def opened(self, info: StreamInfo, kind: str) -> None:
        self.metrics.open_streams.labels(_KIND.get(kind, kind), info.transport).inc()
        log.info("[%s] Stream started %s via %s", info.id, info.path, info.transport, extra=_fields(info, kind))

    def closed(
        self, info: StreamInfo, kind: str, outcome: Outcome, error: APIError | None, stats: StreamStats, duration: float
    ) -> None:
        m = self.metrics
        m.open_streams.labels(_KIND.get(kind, kind), info.transport).dec()
        if stats.messages_sent:
            m.messages_sent.labels(info.transport).inc(stats.messages_sent)
        if stats.bytes_sent:
            m.bytes_sent.labels(info.transport).inc(stats.bytes_sent)
        if outcome == "slow_consumer":
            m.slow_consumers.labels(info.transport).inc()
        fields = _fields(info, kind)
        fields.update(
            outcome=outcome,
            error=error.code.value if error is not None else None,
            duration_ms=round(duration * 1000, 1),
            sent=stats.messages_sent,
            received=stats.messages_received,
        )
        if error is not None and error.status >= 500:
            level = logging.ERROR
        elif outcome == "slow_consumer":
            level = logging.WARNING
        else:
            level = logging.INFO
        described = outcome if error is None else f"{outcome} ({error.code.value})"
        log.log(
            level,
            "[%s] Stream ended %s via %s: %s after %.3fs, %d sent, %d received",
            info.id,
            info.path,
            info.transport,
            described,
            duration,
            stats.messages_sent,
            stats.messages_received,
            extra=fields,
        )
