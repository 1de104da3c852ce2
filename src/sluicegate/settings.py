"""All settings, read once, from the environment (prefix ``SLUICEGATE_``) and ``.env``.

Every embedded default lives under ``SLUICEGATE_DATA_DIR`` (``./data``), so one
folder holds everything a single-machine install keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Sluicegate's settings. Each field ``name`` is read from ``SLUICEGATE_NAME``."""

    model_config = SettingsConfigDict(env_prefix="SLUICEGATE_", env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("./data"), description="Folder for every embedded default (database, objects, keys).")

    host: str = Field("127.0.0.1", description="Address `sluicegate serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `sluicegate serve` binds (0 picks a free one).")
    workers: int = Field(1, ge=1, description="Server processes `sluicegate serve` starts.")
    access_log: bool = Field(False, description="Log one line per HTTP request (uvicorn's access log).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="On shutdown, how long open streams may run before they are cancelled."
    )

    sse_heartbeat_seconds: float = Field(
        15.0, ge=0, description="Silence after which an SSE stream gets a `: ping` comment; 0 disables."
    )
    sse_retry_ms: int = Field(3000, ge=0, description="The `retry:` sent when an SSE stream opens.")
    stream_queue_size: int = Field(
        1000, ge=1, description="Messages that may wait for one slow client before it is cut off (`slow_consumer`)."
    )
    stream_send_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a stream's send waits for a full queue before the client is cut off."
    )
    stream_close_timeout_seconds: float = Field(
        5.0, gt=0, description="Time spent delivering the final error to a client that is being cut off."
    )
    stream_max_message_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest incoming WebSocket message or NDJSON line."
    )
    ws_ping_interval_seconds: float = Field(20.0, gt=0, description="WebSocket protocol ping interval.")
    ws_ping_timeout_seconds: float = Field(20.0, gt=0, description="Close a WebSocket whose pong is this late.")
