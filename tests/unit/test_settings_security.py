"""Security and metrics settings: key lists, whitelists, proxies, rate limits, namespace."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from sluicegate.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No stray SLUICEGATE_* variables, and an empty working directory for .env."""
    for name in list(os.environ):
        if name.upper().startswith("SLUICEGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def _refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    return str(info.value)


def test_security_defaults() -> None:
    s = Settings()
    assert s.api_keys == []
    assert s.api_keys_file is None
    assert s.jwt_secret is None
    assert s.redis_url is None
    assert s.rate_limit_whitelist == []
    assert s.trusted_proxies == []
    assert (s.rate_limit_tenant, s.rate_limit_streaming_ip) == ("1000/minute", "30/minute")
    assert (s.rate_limit_generate, s.rate_limit_generate_admin) == ("100/15 minutes", "1000/15 minutes")
    assert s.metrics_namespace == "sluicegate"


def test_api_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_API_KEYS", " k1:user , k2:admin:3,,  ,k3:user")
    assert Settings().api_keys == ["k1:user", "k2:admin:3", "k3:user"]


def test_single_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_API_KEYS", "only:admin")
    assert Settings().api_keys == ["only:admin"]


def test_empty_api_keys_is_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_API_KEYS", "")
    assert Settings().api_keys == []


def test_api_keys_from_dotenv(clean_env: Path) -> None:
    (clean_env / ".env").write_text("SLUICEGATE_API_KEYS=a:user, b:admin\n")
    assert Settings().api_keys == ["a:user", "b:admin"]


def test_api_keys_file_is_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_API_KEYS_FILE", "/etc/sluicegate/keys")
    assert Settings().api_keys_file == Path("/etc/sluicegate/keys")


def test_jwt_secret_is_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_JWT_SECRET", "very-secret-value-of-some-length-1234")
    s = Settings()
    assert s.jwt_secret is not None
    assert s.jwt_secret.get_secret_value() == "very-secret-value-of-some-length-1234"
    assert "very-secret-value" not in repr(s)


def test_whitelist_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_RATE_LIMIT_WHITELIST", "127.0.0.1, 10.0.0.0/8 ,,::1,")
    assert Settings().rate_limit_whitelist == ["127.0.0.1", "10.0.0.0/8", "::1"]


def test_trusted_proxies_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_TRUSTED_PROXIES", " 172.16.0.0/12 , 192.168.1.10,fd00::/8 ")
    assert Settings().trusted_proxies == ["172.16.0.0/12", "192.168.1.10", "fd00::/8"]


def test_cidr_with_host_bits_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_TRUSTED_PROXIES", "10.1.2.3/8")
    assert Settings().trusted_proxies == ["10.1.2.3/8"]


def test_lists_may_be_given_as_lists_in_code() -> None:
    s = Settings(api_keys=["a:user"], rate_limit_whitelist=["1.2.3.4"], trusted_proxies=["10.0.0.0/8"])
    assert (s.api_keys, s.rate_limit_whitelist, s.trusted_proxies) == (["a:user"], ["1.2.3.4"], ["10.0.0.0/8"])


@pytest.mark.parametrize("bad", ["not-an-ip", "10.0.0.0/33", "300.1.1.1", "1.2.3.4/abc"])
def test_invalid_whitelist_entry_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    message = _refused(monkeypatch, "SLUICEGATE_RATE_LIMIT_WHITELIST", f"127.0.0.1,{bad}")
    assert "rate_limit_whitelist" in message
    assert "is not an IP address or CIDR network" in message


@pytest.mark.parametrize("bad", ["proxy.internal", "10.0.0.0/99"])
def test_invalid_trusted_proxy_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    message = _refused(monkeypatch, "SLUICEGATE_TRUSTED_PROXIES", bad)
    assert "trusted_proxies" in message
    assert "is not an IP address or CIDR network" in message


@pytest.mark.parametrize(
    "env", ["RATE_LIMIT_TENANT", "RATE_LIMIT_STREAMING_IP", "RATE_LIMIT_GENERATE", "RATE_LIMIT_GENERATE_ADMIN"]
)
def test_invalid_rate_limit_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    message = _refused(monkeypatch, f"SLUICEGATE_{env}", "lots/minute")
    assert env.lower() in message
    assert "'lots/minute' is not a rate limit" in message


@pytest.mark.parametrize("limit", ["5/second", "10 per minute", "100/15 minutes"])
def test_valid_rate_limits_are_accepted(monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    monkeypatch.setenv("SLUICEGATE_RATE_LIMIT_TENANT", limit)
    assert Settings().rate_limit_tenant == limit


@pytest.mark.parametrize("name", ["amrikyy", "_private", "My_App2"])
def test_valid_metrics_namespace(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("SLUICEGATE_METRICS_NAMESPACE", name)
    assert Settings().metrics_namespace == name


@pytest.mark.parametrize("name", ["1bad-name", "bad-name", "9lives", "", "has space", "a:b"])
def test_invalid_metrics_namespace_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    assert "metrics_namespace" in _refused(monkeypatch, "SLUICEGATE_METRICS_NAMESPACE", name)
