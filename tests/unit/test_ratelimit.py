"""Client IPs behind proxies, and rate limits per group (security/ratelimit.py)."""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from limits import parse

from sluicegate.errors import APIError
from sluicegate.security.identity import Identity
from sluicegate.security.ratelimit import RateLimiter, RateLimitGroup, RateLimitResult, client_ip
from sluicegate.settings import Settings
from tests.brokers import REDIS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from sluicegate.security.ratelimit import Network


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """Settings come only from the test: no SLUICEGATE_* variables, no .env."""
    for name in list(os.environ):
        if name.upper().startswith("SLUICEGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def _scope(ip: str | None = "10.1.2.3", forwarded: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (ip, 1234) if ip is not None else None,
        "headers": [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded or []],
    }


def _nets(*items: str) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def _identity(tenant: int = 1, key_id: str | None = "k1", role: str = "user", subject: str = "s") -> Identity:
    return Identity(subject, tenant, role, frozenset(), "api_key", key_id)  # type: ignore[arg-type]


#: Where the counters live in this test: memory, or Redis under a prefix of the test's own.
_STORAGE: dict[str, str] = {}
#: Limiters made by this test, closed after it.
_MADE: list[RateLimiter] = []


@pytest.fixture(autouse=True)
async def close_limiters() -> AsyncIterator[None]:
    yield
    while _MADE:
        await _MADE.pop().close()


@pytest.fixture(autouse=True, params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every limiter test runs on memory and on the machine's Redis (as several nodes share it)."""
    kind: str = request.param
    _STORAGE.clear()
    if kind == "redis":
        _STORAGE.update(redis_url=REDIS, key_prefix=f"sgtest-limits-{secrets.token_hex(4)}")
    yield kind
    if kind == "redis":
        with redis.Redis.from_url(REDIS) as client:
            keys = list(client.scan_iter(match=f"{_STORAGE['key_prefix']}*"))
            if keys:
                client.delete(*keys)


def _limiter(on_reject: Callable[[str], None] | None = None, **settings: Any) -> RateLimiter:
    prefix = _STORAGE.get("key_prefix", "sluicegate-limits")
    if "redis_url" in _STORAGE:
        settings.setdefault("redis_url", _STORAGE["redis_url"])
    limiter = RateLimiter.from_settings(Settings(**settings), key_prefix=prefix, on_reject=on_reject)
    assert limiter.shared == ("redis_url" in _STORAGE)
    _MADE.append(limiter)
    return limiter


async def _refusal(limiter: RateLimiter, group: str, scope: dict[str, Any], identity: Identity | None) -> APIError:
    with pytest.raises(APIError) as info:
        await limiter.check(group, scope, identity)
    return info.value


# --- client_ip -----------------------------------------------------------------------------------


def test_peer_is_the_client_without_trusted_proxies() -> None:
    assert client_ip(_scope("10.1.2.3", ["1.1.1.1"]), []) == "10.1.2.3"


def test_forwarded_for_from_untrusted_peer_is_ignored() -> None:
    assert client_ip(_scope("203.0.113.9", ["1.1.1.1"]), _nets("10.0.0.1")) == "203.0.113.9"


def test_trusted_peer_gives_nearest_untrusted_from_the_right() -> None:
    scope = _scope("10.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.2"])
    assert client_ip(scope, _nets("10.0.0.1", "10.0.0.2")) == "1.2.3.4"


def test_spoofed_leftmost_address_is_not_believed() -> None:
    # The client itself wrote "6.6.6.6"; the trusted proxy appended the real peer.
    scope = _scope("10.0.0.1", ["6.6.6.6, 198.51.100.7"])
    assert client_ip(scope, _nets("10.0.0.1")) == "198.51.100.7"


def test_multiple_forwarded_for_headers_are_combined_in_order() -> None:
    scope = _scope("10.0.0.1", ["1.2.3.4", "5.6.7.8, 10.0.0.2"])
    assert client_ip(scope, _nets("10.0.0.0/8")) == "5.6.7.8"


def test_all_trusted_chain_falls_back_to_the_leftmost() -> None:
    scope = _scope("10.0.0.1", ["10.0.0.5, 10.0.0.3", "10.0.0.2"])
    assert client_ip(scope, _nets("10.0.0.0/8")) == "10.0.0.5"


def test_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_ip(_scope("10.0.0.1"), _nets("10.0.0.1")) == "10.0.0.1"


def test_trust_by_cidr() -> None:
    trusted = _nets("192.168.0.0/16")
    assert client_ip(_scope("192.168.44.1", ["1.2.3.4"]), trusted) == "1.2.3.4"
    assert client_ip(_scope("192.169.0.1", ["1.2.3.4"]), trusted) == "192.169.0.1"


def test_ipv6_proxy_by_cidr() -> None:
    assert client_ip(_scope("fd00::1", ["2001:db8::5"]), _nets("fd00::/8")) == "2001:db8::5"


def test_empty_forwarded_entries_are_skipped() -> None:
    assert client_ip(_scope("10.0.0.1", ["1.2.3.4, , 10.0.0.2,"]), _nets("10.0.0.0/8")) == "1.2.3.4"


def test_missing_client_is_unknown() -> None:
    assert client_ip(_scope(None), []) == "unknown"


# --- RateLimitResult -----------------------------------------------------------------------------


def test_allowed_result_headers_have_no_retry_after() -> None:
    result = RateLimitResult(allowed=True, limit=10, remaining=3, reset_time=1000.2)
    assert result.headers() == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "1001"}


def test_refused_result_headers_add_retry_after() -> None:
    reset = time.time() + 30
    headers = RateLimitResult(allowed=False, limit=10, remaining=0, reset_time=reset).headers()
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == str(math.ceil(reset))
    assert 29 <= int(headers["Retry-After"]) <= 30


def test_retry_after_is_at_least_one_second() -> None:
    assert RateLimitResult(allowed=False, limit=1, remaining=0, reset_time=time.time() - 100).retry_after == 1


# --- RateLimiter: the tenant group ---------------------------------------------------------------


async def test_tenant_group_allows_exactly_n_then_refuses_with_second_seed_body() -> None:
    limiter = _limiter(rate_limit_tenant="2/minute")
    identity = _identity(tenant=1)
    first = await limiter.check("tenant", _scope(), identity)
    second = await limiter.check("tenant", _scope(), identity)
    assert first is not None and second is not None
    assert (first.allowed, first.limit, first.remaining) == (True, 2, 1)
    assert (second.allowed, second.remaining) == (True, 0)
    error = await _refusal(limiter, "tenant", _scope(), identity)
    assert error.status == 429
    body = error.body()
    assert body["error"] == "Rate limit exceeded"
    assert body["limit"] == 2
    assert body["window"] == "1 minute"
    assert body["message"] == "Too many requests to streaming API"
    assert isinstance(body["retryAfter"], int)
    assert 1 <= body["retryAfter"] <= 60
    assert body["retryAfter"] == int(error.headers["Retry-After"])


async def test_refusal_carries_rate_limit_headers() -> None:
    limiter = _limiter(rate_limit_tenant="1/minute")
    await limiter.check("tenant", _scope(), _identity())
    error = await _refusal(limiter, "tenant", _scope(), _identity())
    headers = error.headers
    assert headers["X-RateLimit-Limit"] == "1"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) >= int(time.time())
    assert 1 <= int(headers["Retry-After"]) <= 60


async def test_window_is_plural_for_multiple_units() -> None:
    limiter = _limiter(rate_limit_tenant="1/15 minutes")
    await limiter.check("tenant", _scope(), _identity())
    error = await _refusal(limiter, "tenant", _scope(), _identity())
    assert error.body()["window"] == "15 minutes"


async def test_tenant_counts_are_per_tenant_not_per_ip_or_key() -> None:
    limiter = _limiter(rate_limit_tenant="1/minute")
    await limiter.check("tenant", _scope("1.1.1.1"), _identity(tenant=1, key_id="a"))
    # Another tenant has its own count.
    assert await limiter.check("tenant", _scope("1.1.1.1"), _identity(tenant=2, key_id="a")) is not None
    # Another key and IP of tenant 1 share tenant 1's count.
    error = await _refusal(limiter, "tenant", _scope("2.2.2.2"), _identity(tenant=1, key_id="b"))
    assert error.status == 429


async def test_tenant_group_without_identity_is_unauthorized() -> None:
    error = await _refusal(_limiter(), "tenant", _scope(), None)
    assert error.status == 401


async def test_generate_group_without_identity_is_unauthorized() -> None:
    error = await _refusal(_limiter(), "generate", _scope(), None)
    assert error.status == 401


async def test_unknown_group_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        await _limiter().check("nope", _scope(), _identity())


# --- RateLimiter: the streaming_ip group ---------------------------------------------------------


async def test_streaming_ip_refuses_with_fourth_seed_body() -> None:
    limiter = _limiter(rate_limit_streaming_ip="2/minute")
    assert await limiter.check("streaming_ip", _scope("1.2.3.4"), None) is not None
    assert await limiter.check("streaming_ip", _scope("1.2.3.4"), None) is not None
    error = await _refusal(limiter, "streaming_ip", _scope("1.2.3.4"), None)
    assert error.status == 429
    assert error.body() == {"error": "Streaming rate limit exceeded", "code": "resource_exhausted", "status": 429}
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"} <= set(error.headers)


async def test_streaming_ip_counts_per_ip_not_per_tenant() -> None:
    limiter = _limiter(rate_limit_streaming_ip="1/minute")
    await limiter.check("streaming_ip", _scope("1.2.3.4"), _identity(tenant=1))
    assert await limiter.check("streaming_ip", _scope("5.6.7.8"), _identity(tenant=1)) is not None
    error = await _refusal(limiter, "streaming_ip", _scope("1.2.3.4"), _identity(tenant=2))
    assert error.status == 429


async def test_streaming_ip_counts_the_forwarded_client_behind_a_trusted_proxy() -> None:
    limiter = _limiter(rate_limit_streaming_ip="1/minute", trusted_proxies=["10.0.0.0/8"])
    await limiter.check("streaming_ip", _scope("10.0.0.1", ["1.2.3.4"]), None)
    # Another client through the same proxy has its own count.
    assert await limiter.check("streaming_ip", _scope("10.0.0.1", ["5.6.7.8"]), None) is not None
    error = await _refusal(limiter, "streaming_ip", _scope("10.0.0.2", ["1.2.3.4"]), None)
    assert error.status == 429


@pytest.mark.parametrize("whitelist", [["1.2.3.4"], ["1.2.3.0/24"], ["9.9.9.9", "1.2.0.0/16"]])
async def test_whitelisted_ip_is_not_limited(whitelist: list[str]) -> None:
    limiter = _limiter(rate_limit_streaming_ip="1/minute", rate_limit_whitelist=whitelist)
    for _ in range(3):
        assert await limiter.check("streaming_ip", _scope("1.2.3.4"), None) is None


async def test_whitelist_does_not_cover_other_ips() -> None:
    limiter = _limiter(rate_limit_streaming_ip="1/minute", rate_limit_whitelist=["1.2.3.0/24"])
    assert await limiter.check("streaming_ip", _scope("1.2.4.4"), None) is not None
    assert (await _refusal(limiter, "streaming_ip", _scope("1.2.4.4"), None)).status == 429


async def test_whitelist_does_not_bypass_tenant_group() -> None:
    limiter = _limiter(rate_limit_tenant="1/minute", rate_limit_whitelist=["1.2.3.4"])
    await limiter.check("tenant", _scope("1.2.3.4"), _identity())
    assert (await _refusal(limiter, "tenant", _scope("1.2.3.4"), _identity())).status == 429


# --- RateLimiter: the generate group -------------------------------------------------------------


async def test_generate_refuses_with_fifth_seed_body() -> None:
    limiter = _limiter(rate_limit_generate="1/minute")
    await limiter.check("generate", _scope(), _identity())
    error = await _refusal(limiter, "generate", _scope(), _identity())
    assert error.status == 429
    assert error.body() == {
        "error": "Too Many Requests",
        "code": "resource_exhausted",
        "message": "You have exceeded the request limit. Please try again later.",
    }
    assert error.headers["X-RateLimit-Limit"] == "1"
    assert "Retry-After" in error.headers


async def test_generate_counts_per_key() -> None:
    limiter = _limiter(rate_limit_generate="1/minute")
    await limiter.check("generate", _scope(), _identity(tenant=1, key_id="a"))
    assert await limiter.check("generate", _scope(), _identity(tenant=1, key_id="b")) is not None
    assert (await _refusal(limiter, "generate", _scope("9.9.9.9"), _identity(tenant=5, key_id="a"))).status == 429


async def test_generate_without_key_id_counts_per_subject() -> None:
    limiter = _limiter(rate_limit_generate="1/minute")
    await limiter.check("generate", _scope(), _identity(key_id=None, subject="alice"))
    assert await limiter.check("generate", _scope(), _identity(key_id=None, subject="bob")) is not None
    assert (await _refusal(limiter, "generate", _scope(), _identity(key_id=None, subject="alice"))).status == 429


async def test_admin_gets_the_admin_tier_for_generate() -> None:
    limiter = _limiter(rate_limit_generate="1/minute", rate_limit_generate_admin="3/minute")
    admin = _identity(key_id="boss", role="admin")
    results = [await limiter.check("generate", _scope(), admin) for _ in range(3)]
    assert [r.limit for r in results if r is not None] == [3, 3, 3]
    assert [r.remaining for r in results if r is not None] == [2, 1, 0]
    error = await _refusal(limiter, "generate", _scope(), admin)
    assert error.headers["X-RateLimit-Limit"] == "3"


async def test_user_gets_the_user_tier_for_generate() -> None:
    limiter = _limiter(rate_limit_generate="1/minute", rate_limit_generate_admin="3/minute")
    user = _identity(key_id="pleb", role="user")
    result = await limiter.check("generate", _scope(), user)
    assert result is not None and result.limit == 1
    assert (await _refusal(limiter, "generate", _scope(), user)).status == 429


async def test_admin_tier_applies_only_to_generate() -> None:
    limiter = _limiter(rate_limit_tenant="1/minute", rate_limit_generate_admin="100/minute")
    admin = _identity(role="admin")
    await limiter.check("tenant", _scope(), admin)
    assert (await _refusal(limiter, "tenant", _scope(), admin)).status == 429


async def test_groups_count_separately() -> None:
    limiter = _limiter(rate_limit_tenant="1/minute", rate_limit_generate="1/minute", rate_limit_streaming_ip="1/minute")
    identity = _identity()
    for group in ("tenant", "generate", "streaming_ip"):
        assert await limiter.check(group, _scope(), identity) is not None


# --- on_reject, custom groups and reset ----------------------------------------------------------


async def test_two_nodes_share_one_count_on_redis(storage: str) -> None:
    node_a, node_b = (_limiter(rate_limit_tenant="2/minute") for _ in range(2))
    await node_a.check("tenant", _scope(), _identity())
    await node_b.check("tenant", _scope(), _identity())
    if storage == "redis":
        assert (await _refusal(node_a, "tenant", _scope(), _identity())).status == 429
        assert (await _refusal(node_b, "tenant", _scope(), _identity())).status == 429
    else:  # one process's memory: each node counts alone
        assert await node_a.check("tenant", _scope(), _identity()) is not None


def test_a_redis_broker_also_holds_the_counts() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0?prefix=mine")
    assert RateLimiter.from_settings(settings).shared
    assert not RateLimiter.from_settings(Settings(broker_url="nats://127.0.0.1:4222")).shared


async def test_on_reject_is_called_with_the_group_name() -> None:
    rejected: list[str] = []
    limiter = _limiter(rate_limit_streaming_ip="1/minute", rate_limit_tenant="1/minute", on_reject=rejected.append)
    await limiter.check("streaming_ip", _scope(), None)
    await limiter.check("tenant", _scope(), _identity())
    assert rejected == []
    await _refusal(limiter, "streaming_ip", _scope(), None)
    await _refusal(limiter, "tenant", _scope(), _identity())
    await _refusal(limiter, "tenant", _scope(), _identity())
    assert rejected == ["streaming_ip", "tenant", "tenant"]


async def test_custom_group_uses_its_refusal() -> None:
    def refusal(item: Any, retry_after: int) -> APIError:
        return APIError.resource_exhausted("custom", amount=item.amount, retry=retry_after)

    limiter = RateLimiter([RateLimitGroup("mine", "tenant", parse("1/hour"), None, refusal)])
    await limiter.check("mine", _scope(), _identity())
    error = await _refusal(limiter, "mine", _scope(), _identity())
    assert error.body()["error"] == "custom"
    assert error.body()["amount"] == 1
    assert error.body()["retry"] == int(error.headers["Retry-After"])
    assert 3500 <= error.body()["retry"] <= 3600


async def test_reset_forgets_counts() -> None:
    limiter = _limiter(rate_limit_tenant="1/minute")
    await limiter.check("tenant", _scope(), _identity())
    await limiter.reset()
    assert await limiter.check("tenant", _scope(), _identity()) is not None


async def test_memory_storage_is_ready() -> None:
    await _limiter().check_storage()


async def test_closing_the_limiter_releases_its_connections() -> None:
    limiter = _limiter(rate_limit_tenant="5/minute")
    await limiter.check("tenant", _scope(), _identity())
    await limiter.close()
    await limiter.close()  # twice is fine
