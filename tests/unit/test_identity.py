"""API keys, bearer tokens and the gateway authenticator (security/identity.py)."""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from starlette.requests import HTTPConnection

from sluicegate.clock import ManualClock, SystemClock
from sluicegate.errors import APIError, ConfigurationError
from sluicegate.security.identity import ApiKeyStore, GatewayAuthenticator, TokenService, load_or_create_secret

if TYPE_CHECKING:
    from pathlib import Path

    from sluicegate.security.identity import AuthMethod

SECRET = "s" * 40
OTHER_SECRET = "o" * 40
USER_KEY = "user-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "alice",
        "tenant": 7,
        "scopes": ["read"],
        "exp": int((datetime.now(UTC) + timedelta(hours=1)).timestamp()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _unauthenticated(call: Any, *args: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)
    assert info.value.status == 401
    return info.value


# --- ApiKeyStore ---------------------------------------------------------------------------------


def test_key_role_entry_gives_that_role_and_tenant_zero() -> None:
    store = ApiKeyStore([f"{USER_KEY}:user"])
    found = store.verify(USER_KEY)
    assert (found.role, found.tenant, found.method, found.is_admin) == ("user", 0, "api_key", False)
    assert found.scopes == frozenset()


def test_key_role_tenant_entry_sets_the_tenant() -> None:
    store = ApiKeyStore([f"{ADMIN_KEY}:admin:42"])
    found = store.verify(ADMIN_KEY)
    assert (found.role, found.tenant, found.is_admin) == ("admin", 42, True)


def test_each_key_maps_to_its_own_identity() -> None:
    store = ApiKeyStore([f"{USER_KEY}:user:1", f"{ADMIN_KEY}:admin:2"])
    assert len(store) == 2
    assert (store.verify(USER_KEY).role, store.verify(USER_KEY).tenant) == ("user", 1)
    assert (store.verify(ADMIN_KEY).role, store.verify(ADMIN_KEY).tenant) == ("admin", 2)


def test_blank_and_comment_lines_are_skipped() -> None:
    store = ApiKeyStore(["", "   ", "# a comment", "  # indented comment", f"  {USER_KEY}:user  "])
    assert len(store) == 1
    assert store.verify(USER_KEY).role == "user"


def test_key_id_is_a_fingerprint_not_the_key() -> None:
    found = ApiKeyStore([f"{USER_KEY}:user"]).verify(USER_KEY)
    assert found.key_id is not None
    assert USER_KEY not in found.key_id
    assert found.subject == f"key:{found.key_id}"
    assert USER_KEY not in repr(found)


def test_different_keys_have_different_fingerprints_and_the_same_key_the_same() -> None:
    first = ApiKeyStore([f"{USER_KEY}:user", f"{ADMIN_KEY}:admin"])
    second = ApiKeyStore([f"{USER_KEY}:admin:9"])
    assert first.verify(USER_KEY).key_id != first.verify(ADMIN_KEY).key_id
    assert first.verify(USER_KEY).key_id == second.verify(USER_KEY).key_id


@pytest.mark.parametrize(
    ("entries", "entry_number"),
    [
        (["topsecretvalue"], 1),  # no role
        (["ok-key:user", "topsecretvalue:user:1:extra"], 2),  # too many parts
        (["", "# comment", ":user"], 3),  # empty key; numbering counts skipped lines
    ],
)
def test_malformed_entry_is_refused_naming_setting_and_entry(entries: list[str], entry_number: int) -> None:
    with pytest.raises(ConfigurationError) as info:
        ApiKeyStore(entries)
    message = str(info.value)
    assert "SLUICEGATE_API_KEYS" in message
    assert f"entry {entry_number}" in message
    assert "topsecretvalue" not in message


def test_unknown_role_is_refused_without_echoing_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        ApiKeyStore(["topsecretvalue:superuser"])
    message = str(info.value)
    assert "SLUICEGATE_API_KEYS entry 1" in message
    assert "unknown role" in message
    # Neither part is echoed: with a ':' inside a key, the "role" would be a piece of the key.
    assert "topsecretvalue" not in message and "superuser" not in message


def test_role_is_case_sensitive() -> None:
    with pytest.raises(ConfigurationError, match="entry 1"):
        ApiKeyStore(["topsecretvalue:Admin"])


def test_non_integer_tenant_is_refused_without_echoing_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        ApiKeyStore(["topsecretvalue:user:acme"])
    message = str(info.value)
    assert "SLUICEGATE_API_KEYS entry 1" in message
    assert "tenant" in message
    assert "topsecretvalue" not in message


def test_source_name_is_used_in_errors() -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_API_KEYS_FILE entry 1"):
        ApiKeyStore(["topsecretvalue"], source="SLUICEGATE_API_KEYS_FILE")


def test_unknown_key_is_forbidden() -> None:
    store = ApiKeyStore([f"{USER_KEY}:user"])
    with pytest.raises(APIError) as info:
        store.verify("not-a-configured-key")
    assert info.value.status == 403
    assert info.value.body()["error"] == "Forbidden: Invalid API key."


def test_prefix_of_a_key_is_forbidden() -> None:
    store = ApiKeyStore([f"{USER_KEY}:user"])
    with pytest.raises(APIError) as info:
        store.verify(USER_KEY[:-1])
    assert info.value.status == 403


def test_empty_store_forbids_everything() -> None:
    with pytest.raises(APIError) as info:
        ApiKeyStore([]).verify("")
    assert info.value.status == 403


def test_from_settings_combines_setting_and_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# operators\n\n{ADMIN_KEY}:admin:3\n")
    store = ApiKeyStore.from_settings([f"{USER_KEY}:user"], keys_file)
    assert len(store) == 2
    assert store.verify(USER_KEY).role == "user"
    assert (store.verify(ADMIN_KEY).role, store.verify(ADMIN_KEY).tenant) == ("admin", 3)


def test_from_settings_without_file_uses_setting_only() -> None:
    store = ApiKeyStore.from_settings([f"{USER_KEY}:user"], None)
    assert len(store) == 1


def test_bad_entry_in_keys_file_names_the_file_setting_and_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# header\n{USER_KEY}:user\ntopsecretvalue:root\n")
    with pytest.raises(ConfigurationError) as info:
        ApiKeyStore.from_settings([], keys_file)
    message = str(info.value)
    assert "SLUICEGATE_API_KEYS_FILE entry 3" in message
    assert "topsecretvalue" not in message


def test_missing_keys_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_API_KEYS_FILE cannot be read"):
        ApiKeyStore.from_settings([], tmp_path / "absent.txt")


def test_directory_as_keys_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_API_KEYS_FILE cannot be read"):
        ApiKeyStore.from_settings([], tmp_path)


# --- load_or_create_secret -----------------------------------------------------------------------


def test_secret_file_is_created_private(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    path = tmp_path / "jwt_secret"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 32


def test_secret_is_the_same_on_the_second_call(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path) == load_or_create_secret(tmp_path)


def test_secret_differs_between_data_dirs(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_missing_parent_dirs_are_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "er" / "data"
    secret = load_or_create_secret(data_dir)
    assert (data_dir / "jwt_secret").read_text() == secret


def test_existing_secret_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text("an-operator-chosen-secret-of-sufficient-length\n")
    assert load_or_create_secret(tmp_path) == "an-operator-chosen-secret-of-sufficient-length"


def test_empty_secret_file_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jwt_secret").write_text("")
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    with pytest.raises(ConfigurationError, match="SLUICEGATE_JWT_SECRET"):
        load_or_create_secret(tmp_path)
    assert waits  # it waited (for another worker) before giving up


def test_data_dir_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigurationError, match="bearer-token secret"):
        load_or_create_secret(blocker / "data")


# --- TokenService --------------------------------------------------------------------------------


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(SECRET, clock=SystemClock())


def test_issued_token_verifies_to_its_claims(tokens: TokenService) -> None:
    token, expires = tokens.issue(tenant=5, subject="bob", scopes=["read", "write", "read"])
    found = tokens.verify(token)
    assert (found.subject, found.tenant, found.method) == ("bob", 5, "bearer")
    assert found.scopes == frozenset({"read", "write"})
    assert found.role == "user"
    assert found.key_id is None
    assert expires > datetime.now(UTC).timestamp()


def test_admin_scope_gives_admin_role(tokens: TokenService) -> None:
    token, _ = tokens.issue(tenant=1, scopes=["admin"])
    assert tokens.verify(token).role == "admin"
    assert tokens.verify(token).is_admin


def test_issue_uses_the_clock_and_ttl() -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    service = TokenService(SECRET, clock=ManualClock(start))
    token, expires = service.issue(tenant=1, ttl=timedelta(minutes=10))
    assert expires == int((start + timedelta(minutes=10)).timestamp())
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["iat"] == int(start.timestamp())
    assert claims["exp"] == expires
    assert claims["sub"] == "cli"
    assert claims["scopes"] == []


def test_token_issued_in_the_past_is_expired() -> None:
    service = TokenService(SECRET, clock=ManualClock(datetime(2020, 1, 1, tzinfo=UTC)))
    token, _ = service.issue(tenant=1)
    error = _unauthenticated(service.verify, token)
    assert error.message == "Unauthorized: token has expired."


def test_token_signed_with_another_secret_is_refused(tokens: TokenService) -> None:
    other, _ = TokenService(OTHER_SECRET, clock=SystemClock()).issue(tenant=1)
    assert _unauthenticated(tokens.verify, other).message == "Unauthorized: token signature is invalid."


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", ""])
def test_garbage_token_is_malformed(tokens: TokenService, garbage: str) -> None:
    assert _unauthenticated(tokens.verify, garbage).message == "Unauthorized: token is malformed."


def test_unsigned_token_is_refused(tokens: TokenService) -> None:
    unsigned = jwt.encode(_claims(scopes=["admin"]), None, algorithm="none")  # type: ignore[arg-type]
    assert _unauthenticated(tokens.verify, unsigned).message == "Unauthorized: token is malformed."


@pytest.mark.parametrize("claim", ["tenant", "sub", "exp"])
def test_token_missing_a_required_claim_names_it(tokens: TokenService, claim: str) -> None:
    token = _token(_claims(**{claim: None}))
    assert _unauthenticated(tokens.verify, token).message == f"Unauthorized: token is missing the '{claim}' claim."


@pytest.mark.parametrize("tenant", ["7", 7.5, True, False, [7]])
def test_non_integer_tenant_is_refused(tokens: TokenService, tenant: object) -> None:
    payload = _claims()
    payload["tenant"] = tenant
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    assert "'tenant' claim must be an integer" in _unauthenticated(tokens.verify, token).message


@pytest.mark.parametrize("scopes", ["admin", {"admin": True}, [1, 2], ["admin", 3]])
def test_scopes_must_be_a_list_of_strings(tokens: TokenService, scopes: object) -> None:
    token = _token(_claims(scopes=scopes))
    assert "'scopes' claim must be a list of strings" in _unauthenticated(tokens.verify, token).message


def test_token_without_scopes_is_a_user(tokens: TokenService) -> None:
    payload = _claims()
    del payload["scopes"]
    found = tokens.verify(jwt.encode(payload, SECRET, algorithm="HS256"))
    assert (found.role, found.scopes) == ("user", frozenset())


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_short_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_JWT_SECRET"):
        TokenService(secret, clock=SystemClock())


def test_secret_of_exactly_32_characters_is_accepted() -> None:
    service = TokenService("x" * 32, clock=SystemClock())
    token, _ = service.issue(tenant=2)
    assert service.verify(token).tenant == 2


# --- GatewayAuthenticator ------------------------------------------------------------------------


def _conn(headers: dict[str, str] | None = None, query: str = "") -> HTTPConnection:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
        "query_string": query.encode(),
    }
    return HTTPConnection(scope)


@pytest.fixture
def auth(tokens: TokenService) -> GatewayAuthenticator:
    return GatewayAuthenticator(ApiKeyStore([f"{USER_KEY}:user:1", f"{ADMIN_KEY}:admin:2"]), tokens)


@pytest.fixture
def bearer(tokens: TokenService) -> str:
    return tokens.issue(tenant=9, subject="carol", scopes=["read"])[0]


async def _refused(auth: GatewayAuthenticator, conn: HTTPConnection, accept: tuple[AuthMethod, ...]) -> APIError:
    with pytest.raises(APIError) as info:
        await auth.authenticate(conn, accept=accept)
    return info.value


async def test_api_key_header_authenticates(auth: GatewayAuthenticator) -> None:
    found = await auth.authenticate(_conn({"X-API-Key": ADMIN_KEY}))
    assert (found.method, found.role, found.tenant) == ("api_key", "admin", 2)


async def test_api_key_is_preferred_over_bearer(auth: GatewayAuthenticator, bearer: str) -> None:
    found = await auth.authenticate(_conn({"X-API-Key": USER_KEY, "Authorization": f"Bearer {bearer}"}))
    assert (found.method, found.tenant) == ("api_key", 1)


async def test_invalid_api_key_is_forbidden_even_with_valid_bearer(auth: GatewayAuthenticator, bearer: str) -> None:
    error = await _refused(
        auth, _conn({"X-API-Key": "wrong", "Authorization": f"Bearer {bearer}"}), ("api_key", "bearer")
    )
    assert (error.status, error.message) == (403, "Forbidden: Invalid API key.")


async def test_bearer_header_authenticates(auth: GatewayAuthenticator, bearer: str) -> None:
    found = await auth.authenticate(_conn({"Authorization": f"Bearer {bearer}"}))
    assert (found.method, found.subject, found.tenant) == ("bearer", "carol", 9)


async def test_bearer_scheme_is_case_insensitive(auth: GatewayAuthenticator, bearer: str) -> None:
    found = await auth.authenticate(_conn({"Authorization": f"bearer {bearer}"}))
    assert found.subject == "carol"


async def test_access_token_query_authenticates(auth: GatewayAuthenticator, bearer: str) -> None:
    found = await auth.authenticate(_conn(query=f"other=1&access_token={bearer}"))
    assert (found.method, found.subject) == ("bearer", "carol")


async def test_authorization_header_wins_over_query_token(auth: GatewayAuthenticator, bearer: str) -> None:
    error = await _refused(auth, _conn({"Authorization": "Bearer garbage"}, f"access_token={bearer}"), ("bearer",))
    assert error.message == "Unauthorized: token is malformed."


async def test_invalid_query_token_is_unauthorized(auth: GatewayAuthenticator) -> None:
    error = await _refused(auth, _conn(query="access_token=garbage"), ("api_key", "bearer"))
    assert (error.status, error.message) == (401, "Unauthorized: token is malformed.")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer   "])
async def test_non_bearer_authorization_is_unauthorized(auth: GatewayAuthenticator, header: str) -> None:
    error = await _refused(auth, _conn({"Authorization": header}), ("api_key", "bearer"))
    assert error.status == 401
    assert "Bearer" in error.message


@pytest.mark.parametrize(
    ("accept", "message"),
    [
        (("api_key",), "Unauthorized: API key is missing."),
        (("bearer",), "Unauthorized: bearer token is missing."),
        (("api_key", "bearer"), "Unauthorized: API key or bearer token is missing."),
    ],
)
async def test_missing_credentials_message_depends_on_accept(
    auth: GatewayAuthenticator, accept: tuple[AuthMethod, ...], message: str
) -> None:
    error = await _refused(auth, _conn(), accept)
    assert (error.status, error.message) == (401, message)
    assert error.body()["error"] == message


async def test_default_accept_takes_both(auth: GatewayAuthenticator) -> None:
    with pytest.raises(APIError) as info:
        await auth.authenticate(_conn())
    assert info.value.message == "Unauthorized: API key or bearer token is missing."


async def test_bearer_only_ignores_api_key_header(auth: GatewayAuthenticator) -> None:
    error = await _refused(auth, _conn({"X-API-Key": ADMIN_KEY}), ("bearer",))
    assert (error.status, error.message) == (401, "Unauthorized: bearer token is missing.")


async def test_bearer_only_uses_bearer_when_api_key_also_sent(auth: GatewayAuthenticator, bearer: str) -> None:
    found = await auth.authenticate(
        _conn({"X-API-Key": ADMIN_KEY, "Authorization": f"Bearer {bearer}"}), accept=("bearer",)
    )
    assert found.method == "bearer"


async def test_api_key_only_ignores_bearer_credentials(auth: GatewayAuthenticator, bearer: str) -> None:
    conn = _conn({"Authorization": f"Bearer {bearer}"}, f"access_token={bearer}")
    error = await _refused(auth, conn, ("api_key",))
    assert (error.status, error.message) == (401, "Unauthorized: API key is missing.")
