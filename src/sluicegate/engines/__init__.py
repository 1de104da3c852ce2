"""Engines: the few stateful parts everything else stands on (broker, store, objects).

Each engine is a small interface with one module per implementation, chosen by URL
scheme. The app opens them in its lifespan, checks them in ``/readyz`` and closes
them on shutdown, in reverse order.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Engine"]


class Engine(Protocol):
    """What the app needs of every engine to manage its life."""

    name: str

    async def open(self) -> None:
        """Connect, create what is missing; called once at start-up."""
        ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...

    async def check(self) -> None:
        """Return if the engine is reachable now, raise otherwise."""
        ...
