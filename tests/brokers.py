"""Shared brokers for tests: a fresh namespace per test on the machine's Redis and NATS.

Redis keys live under a unique ``prefix``; JetStream messages in a unique stream. Both
are removed by :func:`drop` so that no test leaves anything behind on the servers.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs, urlsplit

import nats
import redis.asyncio as aioredis
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sluicegate.engines.broker import Broker

B = TypeVar("B", bound="Broker")

REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"

#: Every broker kind the engine suites run against.
KINDS = ("memory", "redis", "nats")


def fresh_url(kind: str) -> str:
    """A broker URL in a namespace no other test uses."""
    tag = secrets.token_hex(4)
    if kind == "memory":
        return "memory://"
    if kind == "redis":
        return f"{REDIS}?prefix=sgtest-{tag}"
    if kind == "nats":
        return f"{NATS}?stream=SG_TEST_{tag.upper()}"
    raise ValueError(kind)


async def drop(url: str) -> None:
    """Remove everything the broker at ``url`` stored."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "redis":
        client = aioredis.from_url(REDIS)
        try:
            prefix = query["prefix"][0]
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    elif parts.scheme == "nats":
        connection = await nats.connect(NATS)
        try:
            await connection.jetstream().delete_stream(query["stream"][0])
        except NotFoundError:
            pass
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def two_nodes(make: Callable[[], B]) -> AsyncIterator[tuple[B, B]]:
    """Two brokers made by ``make`` (on one shared server), open, as two gateway nodes."""
    a, b = make(), make()
    await a.open()
    await b.open()  # the second node finds what the first made
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
