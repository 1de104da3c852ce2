"""Connecting to NATS, for the broker and the session log alike: within a bound at
start-up (a server that is not there is a configuration error naming the setting), then
reconnecting for as long as it takes, and saying so in the log."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats
import nats.errors

from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from nats.aio.client import Client as NATS

__all__ = ["OPEN_TIMEOUT_SECONDS", "connect"]

#: Seconds a connection at start-up may take before it is given up.
OPEN_TIMEOUT_SECONDS = 5.0


async def connect(url: str, *, name: str, setting: str, log: logging.Logger, in_use: Callable[[], bool]) -> NATS:
    """A connection to the NATS server at ``url``.

    Args:
        url: ``nats://[user:password@]host:port``.
        name: the client's name on the server (``CLIENT INFO``, monitoring).
        setting: the setting that names ``url``, for the error.
        log: where disconnections and reconnections are told.
        in_use: whether the connection is still wanted (a disconnection after our own
            close is not worth a warning).

    Raises:
        ConfigurationError: the server cannot be reached within ``OPEN_TIMEOUT_SECONDS``.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("NATS connection error (%s): %s", name, exc)

    async def on_disconnected() -> None:
        if in_use():
            log.warning("%s is disconnected from NATS; reconnecting", name)

    async def on_reconnected() -> None:
        log.info("%s reconnected to NATS", name)

    try:
        async with asyncio.timeout(OPEN_TIMEOUT_SECONDS):
            return await nats.connect(
                url,
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise ConfigurationError(f"{setting}: cannot reach NATS ({type(exc).__name__})") from None
