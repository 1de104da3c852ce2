"""Stream-out: a log tail, over SSE and WebSocket from one handler, resumable.

Run it and read it::

    sluicegate serve --app examples.logs:create_app
    curl -N 'http://127.0.0.1:8000/logs?rows=5'
    curl -N -H 'Last-Event-ID: 2' 'http://127.0.0.1:8000/logs?rows=5'   # resumes at row 3
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from sluicegate.app import create_app as create_sluicegate_app
from sluicegate.streaming import StreamOut, StreamRouter

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sluicegate.settings import Settings

streams = StreamRouter()


class LogsHandshake(BaseModel):
    rows: int = Field(10, ge=0, le=100_000, description="How many log rows to stream.")
    interval: float = Field(0.0, ge=0, le=10, description="Seconds between rows.")


class LogRow(BaseModel):
    row: int
    line: str


def mocked_log_line(row: int) -> str:
    """A deterministic, realistic-looking log line."""
    levels = ("INFO", "INFO", "INFO", "WARN", "DEBUG")
    return f"{levels[row % len(levels)]} worker-{row % 4} handled request {row:06d} in {(row * 7) % 97} ms"


@streams.stream_out("/logs")
async def logs(handshake: LogsHandshake, stream: StreamOut[LogRow]) -> None:
    """Stream log rows; each event id is the row number, so a reconnect resumes after it."""
    resume = stream.last_event_id
    start = int(resume) + 1 if resume is not None and resume.isdigit() else 0
    for row in range(start, handshake.rows):
        await stream.send(LogRow(row=row, line=mocked_log_line(row)), id=str(row))
        if handshake.interval:
            await asyncio.sleep(handshake.interval)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The example app: Sluicegate with the log stream mounted."""
    return create_sluicegate_app(settings, streams=[streams])
