"""Who is calling: API keys (``X-API-Key``) and bearer tokens (JWT, HS256).

API keys carry a role (``user`` or ``admin``) and a tenant (0 unless configured);
bearer tokens carry ``sub``, ``tenant`` (an integer) and ``scopes``. Both become an
:class:`Identity`. Keys are compared in constant time and are never logged: an
identity only holds a short fingerprint of its key.

Error bodies follow the fifth seed: a missing key is
``401 {"error": "Unauthorized: API key is missing."}``, an unknown one
``403 {"error": "Forbidden: Invalid API key."}``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import jwt

from sluicegate.errors import APIError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from starlette.requests import HTTPConnection

    from sluicegate.clock import Clock

__all__ = [
    "ApiKeyStore",
    "AuthMethod",
    "GatewayAuthenticator",
    "Identity",
    "TokenService",
    "load_or_create_secret",
]

Role = Literal["user", "admin"]
AuthMethod = Literal["api_key", "bearer"]
BOTH: tuple[AuthMethod, ...] = ("api_key", "bearer")

_MISSING: dict[tuple[AuthMethod, ...], str] = {
    ("api_key",): "Unauthorized: API key is missing.",
    ("bearer",): "Unauthorized: bearer token is missing.",
}


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    Attributes:
        subject: the token's ``sub``, or ``key:<fingerprint>`` for an API key.
        tenant: the tenant every stored thing of this caller belongs to.
        role: ``admin`` or ``user``.
        scopes: the token's scopes (API keys have none).
        method: how the caller authenticated.
        key_id: a fingerprint of the API key (never the key), for per-key limits.
    """

    subject: str
    tenant: int
    role: Role
    scopes: frozenset[str]
    method: AuthMethod
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the caller has the admin role."""
        return self.role == "admin"


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeyStore:
    """Configured API keys, looked up in constant time.

    Args:
        entries: ``key:role`` or ``key:role:tenant`` strings (keys cannot contain ``:``).
        source: the setting they came from, named in configuration errors.

    Raises:
        ConfigurationError: an entry is malformed, has an unknown role or a bad tenant.
    """

    def __init__(self, entries: Iterable[str], *, source: str = "SLUICEGATE_API_KEYS") -> None:
        self._keys: list[tuple[bytes, Identity]] = []
        for n, raw in enumerate(entries, 1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            parts = entry.split(":")
            if len(parts) not in (2, 3) or not parts[0]:
                raise ConfigurationError(f"{source} entry {n} must be 'key:role' or 'key:role:tenant'")
            key, role = parts[0], parts[1]
            if role not in ("user", "admin"):
                raise ConfigurationError(f"{source} entry {n} has an unknown role; use 'user' or 'admin'")
            try:
                tenant = int(parts[2]) if len(parts) == 3 else 0
            except ValueError:
                raise ConfigurationError(f"{source} entry {n} has a tenant that is not an integer") from None
            fingerprint = _fingerprint(key)
            identity = Identity(
                subject=f"key:{fingerprint}",
                tenant=tenant,
                role=role,  # type: ignore[arg-type]  # checked above
                scopes=frozenset(),
                method="api_key",
                key_id=fingerprint,
            )
            self._keys.append((hashlib.sha256(key.encode()).digest(), identity))

    @classmethod
    def from_settings(cls, keys: Iterable[str], keys_file: Path | None) -> ApiKeyStore:
        """Keys from ``SLUICEGATE_API_KEYS`` and ``SLUICEGATE_API_KEYS_FILE``.

        Raises:
            ConfigurationError: the file cannot be read, or an entry is invalid.
        """
        entries = list(keys)
        store = cls(entries)
        if keys_file is not None:
            try:
                lines = keys_file.read_text().splitlines()
            except OSError as exc:
                raise ConfigurationError(f"SLUICEGATE_API_KEYS_FILE cannot be read: {exc.strerror}") from None
            store._keys.extend(cls(lines, source="SLUICEGATE_API_KEYS_FILE")._keys)
        return store

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, key: str) -> Identity:
        """The identity of a presented key.

        Every configured key is compared, with :func:`hmac.compare_digest`, so the time
        taken does not depend on which key (or how much of one) matched.

        Raises:
            APIError: 403 ``Forbidden: Invalid API key.``
        """
        digest = hashlib.sha256(key.encode()).digest()
        found: Identity | None = None
        for candidate, identity in self._keys:
            if hmac.compare_digest(digest, candidate):
                found = identity
        if found is None:
            raise APIError.permission_denied("Forbidden: Invalid API key.")
        return found


def load_or_create_secret(data_dir: Path) -> str:
    """The bearer-token secret kept in ``data_dir/jwt_secret``, created (mode 0600) on first use.

    Raises:
        ConfigurationError: the file cannot be created or read.
    """
    path = data_dir / "jwt_secret"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # another worker may be writing it right now
                secret = path.read_text().strip()
                if secret:
                    return secret
                time.sleep(0.01)
            raise ConfigurationError(f"{path} is empty; delete it or set SLUICEGATE_JWT_SECRET") from None
        secret = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret)
        return secret
    except OSError as exc:
        raise ConfigurationError(f"cannot keep the bearer-token secret in {path}: {exc.strerror}") from None


class TokenService:
    """Issues and verifies bearer tokens (JWT, HS256).

    Args:
        secret: the signing secret.
        clock: decides ``iat`` and ``exp`` of issued tokens.
    """

    def __init__(self, secret: str, *, clock: Clock) -> None:
        if len(secret) < 32:
            raise ConfigurationError("SLUICEGATE_JWT_SECRET must be at least 32 characters")
        self._secret = secret
        self._clock = clock

    def issue(
        self, *, tenant: int, subject: str = "cli", scopes: Iterable[str] = (), ttl: timedelta = timedelta(hours=24)
    ) -> tuple[str, int]:
        """A signed token and its expiry (Unix seconds)."""
        now = self._clock.now()
        expires = int((now + ttl).timestamp())
        claims: dict[str, Any] = {
            "sub": subject,
            "tenant": tenant,
            "scopes": sorted(set(scopes)),
            "iat": int(now.timestamp()),
            "exp": expires,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256"), expires

    def verify(self, token: str) -> Identity:
        """The identity a token stands for.

        Raises:
            APIError: 401 naming what is wrong (expired, bad signature, malformed).
        """
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub", "tenant"]}
            )
        except jwt.ExpiredSignatureError:
            raise APIError.unauthenticated("Unauthorized: token has expired.") from None
        except jwt.InvalidSignatureError:
            raise APIError.unauthenticated("Unauthorized: token signature is invalid.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise APIError.unauthenticated(f"Unauthorized: token is missing the '{exc.claim}' claim.") from None
        except jwt.InvalidTokenError:
            raise APIError.unauthenticated("Unauthorized: token is malformed.") from None
        tenant, scopes = claims.get("tenant"), claims.get("scopes", [])
        if not isinstance(tenant, int) or isinstance(tenant, bool):
            raise APIError.unauthenticated("Unauthorized: token's 'tenant' claim must be an integer.")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise APIError.unauthenticated("Unauthorized: token's 'scopes' claim must be a list of strings.")
        return Identity(
            subject=str(claims["sub"]),
            tenant=tenant,
            role="admin" if "admin" in scopes else "user",
            scopes=frozenset(scopes),
            method="bearer",
        )


class GatewayAuthenticator:
    """The app's authenticator: ``X-API-Key`` and ``Authorization: Bearer``.

    Browsers' ``EventSource`` and WebSocket cannot set headers, so a bearer token is
    also taken from the ``access_token`` query parameter (RFC 6750); logs redact it.
    """

    def __init__(self, keys: ApiKeyStore, tokens: TokenService) -> None:
        self.keys = keys
        self.tokens = tokens

    async def authenticate(self, conn: HTTPConnection, *, accept: tuple[AuthMethod, ...] = BOTH) -> Identity:
        """Identify the caller by the methods ``accept`` allows.

        Raises:
            APIError: 401 when no usable credential is present or a token is invalid;
                403 for an unknown API key.
        """
        if "api_key" in accept:
            key = conn.headers.get("x-api-key")
            if key is not None:
                return self.keys.verify(key)
        if "bearer" in accept:
            header = conn.headers.get("authorization")
            if header is not None:
                scheme, _, token = header.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise APIError.unauthenticated("Unauthorized: use 'Authorization: Bearer <token>'.")
                return self.tokens.verify(token.strip())
            query_token = conn.query_params.get("access_token")
            if query_token:
                return self.tokens.verify(query_token)
        raise APIError.unauthenticated(_MISSING.get(accept, "Unauthorized: API key or bearer token is missing."))
