"""Rate limits per route group, with the ``limits`` library (moving window).

Groups and what they count by:

=================  ===================  ============================================
group              counted per          429 body (the calling route's seed)
=================  ===================  ============================================
``tenant``         tenant               second seed: ``Rate limit exceeded`` with
                                        ``limit``, ``window``, ``retryAfter``
``streaming_ip``   client IP            fourth seed: ``Streaming rate limit
                                        exceeded`` with ``status: 429``;
                                        whitelisted IPs and CIDRs bypass it
``generate``       API key (admins      fifth seed: ``Too Many Requests`` with
                   have their own tier) ``message``
=================  ===================  ============================================

Storage is in memory on a single node, and on Redis when ``SLUICEGATE_REDIS_URL`` is
set or the broker is on Redis (``SLUICEGATE_BROKER_URL=redis://...``, its server is
reused), so that several nodes share one count. Every limited response carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (Unix seconds); a 429 adds
``Retry-After`` (seconds).
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from sluicegate.errors import APIError, ErrCode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from limits.aio.storage import Storage as AsyncStorage
    from starlette.types import Scope

    from sluicegate.security.identity import Identity
    from sluicegate.settings import Settings

__all__ = ["RateLimitEngine", "RateLimitGroup", "RateLimitResult", "RateLimiter", "client_ip", "shared_redis_url"]

KeyKind = Literal["tenant", "ip", "api_key"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(scope: Scope, trusted_proxies: list[Network]) -> str:
    """The client's IP: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted address in ``X-Forwarded-For`` (read right to left)."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not trusted_proxies or not _in(peer, trusted_proxies):
        return str(peer)
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
    for address in reversed(forwarded):
        if address and not _in(address, trusted_proxies):
            return address
    return forwarded[0] if forwarded and forwarded[0] else str(peer)


def shared_redis_url(settings: Settings) -> str | None:
    """The Redis that holds shared state: ``SLUICEGATE_REDIS_URL``, else the broker's
    Redis (without the broker's own query parameters), else none."""
    if settings.redis_url:
        return settings.redis_url
    parts = urlsplit(settings.broker_url)
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit(parts._replace(query=""))
    return None


def _window(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return f"{item.multiples} {unit}{'s' if item.multiples != 1 else ''}"


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """The outcome of one counted request."""

    allowed: bool
    limit: int
    remaining: int
    reset_time: float

    @property
    def retry_after(self) -> int:
        """Whole seconds until the window frees a request (at least 1)."""
        return max(1, math.ceil(self.reset_time - time.time()))

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_time)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


@dataclass(frozen=True, slots=True)
class RateLimitGroup:
    """A named limit: what it counts by, its tiers, and the body of its 429."""

    name: str
    key: KeyKind
    limit: RateLimitItem
    admin_limit: RateLimitItem | None
    refusal: Callable[[RateLimitItem, int], APIError]


def _tenant_refusal(item: RateLimitItem, retry_after: int) -> APIError:
    return APIError(
        ErrCode.RESOURCE_EXHAUSTED,
        "Rate limit exceeded",
        details={
            "limit": item.amount,
            "window": _window(item),
            "retryAfter": retry_after,
            "message": "Too many requests to streaming API",
        },
    )


def _streaming_refusal(item: RateLimitItem, retry_after: int) -> APIError:
    return APIError(ErrCode.RESOURCE_EXHAUSTED, "Streaming rate limit exceeded", details={"status": 429})


def _generate_refusal(item: RateLimitItem, retry_after: int) -> APIError:
    return APIError(
        ErrCode.RESOURCE_EXHAUSTED,
        "Too Many Requests",
        details={"message": "You have exceeded the request limit. Please try again later."},
    )


class RateLimiter:
    """Counts requests per group and refuses those over the limit.

    Args:
        groups: the groups, by name.
        storage_uri: a ``limits`` async storage URI (``async+memory://``, ``async+redis://...``).
        whitelist: IPs and CIDRs that bypass ``ip``-keyed groups.
        trusted_proxies: proxies whose ``X-Forwarded-For`` is believed.
        on_reject: called with the group name of every refused request (metrics).
        key_prefix: namespace of the counters in a shared storage.
    """

    def __init__(
        self,
        groups: Iterable[RateLimitGroup],
        *,
        storage_uri: str = "async+memory://",
        whitelist: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        on_reject: Callable[[str], None] | None = None,
        key_prefix: str = "sluicegate-limits",
    ) -> None:
        self.groups = {group.name: group for group in groups}
        self.shared = "redis" in storage_uri
        self._pool: aioredis.ConnectionPool | None = None
        options: dict[str, Any] = {}
        if self.shared:
            # A pool of our own, so that closing the limiter closes its connections.
            self._pool = aioredis.ConnectionPool.from_url(storage_uri.removeprefix("async+"))
            options = {"implementation": "redispy", "key_prefix": key_prefix, "connection_pool": self._pool}
        self._storage = cast("AsyncStorage", storage_from_string(storage_uri, **options))
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._whitelist = _networks(whitelist)
        self.trusted_proxies = _networks(trusted_proxies)
        self._on_reject = on_reject

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        on_reject: Callable[[str], None] | None = None,
        key_prefix: str | None = None,
    ) -> RateLimiter:
        """The three groups of the seeds, configured from settings."""
        groups = [
            RateLimitGroup("tenant", "tenant", parse(settings.rate_limit_tenant), None, _tenant_refusal),
            RateLimitGroup("streaming_ip", "ip", parse(settings.rate_limit_streaming_ip), None, _streaming_refusal),
            RateLimitGroup(
                "generate",
                "api_key",
                parse(settings.rate_limit_generate),
                parse(settings.rate_limit_generate_admin),
                _generate_refusal,
            ),
        ]
        uri = "async+memory://"
        shared = shared_redis_url(settings)
        if shared:
            uri = "async+" + shared
        return cls(
            groups,
            storage_uri=uri,
            whitelist=settings.rate_limit_whitelist,
            trusted_proxies=settings.trusted_proxies,
            on_reject=on_reject,
            key_prefix=key_prefix or settings.rate_limit_key_prefix,
        )

    async def check(self, group_name: str, scope: Scope, identity: Identity | None) -> RateLimitResult | None:
        """Count one request of ``group_name``.

        Returns:
            The counts for the response headers, or ``None`` when the request is not
            limited (a whitelisted IP).

        Raises:
            APIError: 429 with the group's body and headers when over the limit.
            KeyError: ``group_name`` is not a configured group (a programming error).
        """
        group = self.groups[group_name]
        item = group.limit
        if group.key == "ip":
            ip = client_ip(scope, self.trusted_proxies)
            if self._whitelist and _in(ip, self._whitelist):
                return None
            key = ip
        elif identity is None:
            raise APIError.unauthenticated("Unauthorized: API key or bearer token is missing.")
        elif group.key == "tenant":
            key = str(identity.tenant)
        else:
            key = identity.key_id or identity.subject
            if identity.is_admin and group.admin_limit is not None:
                item = group.admin_limit
        allowed = await self._strategy.hit(item, group.name, key)
        stats = await self._strategy.get_window_stats(item, group.name, key)
        result = RateLimitResult(allowed, item.amount, max(0, stats.remaining), stats.reset_time)
        if not allowed:
            if self._on_reject is not None:
                self._on_reject(group.name)
            headers = result.headers()
            error = group.refusal(item, int(headers["Retry-After"]))
            error.headers.update(headers)
            raise error
        return result

    async def close(self) -> None:
        """Close the shared storage's connections."""
        if self._pool is not None:
            await self._pool.aclose()

    async def check_storage(self) -> None:
        """Raise if the storage is unreachable (readiness)."""
        if not await self._storage.check():
            raise ConnectionError("rate-limit storage is unreachable")

    async def reset(self) -> None:
        """Forget every count (tests and operators)."""
        await self._storage.reset()


class RateLimitEngine:
    """A limiter's storage as an engine: checked in ``/readyz``, closed at shutdown."""

    name = "rate_limits"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def open(self) -> None:
        """Nothing to do: the storage connects on first use."""

    async def close(self) -> None:
        await self.limiter.close()

    async def check(self) -> None:
        await self.limiter.check_storage()
