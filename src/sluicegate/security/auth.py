"""The authenticator interface that ``auth=True`` endpoints call."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Protocol

from sluicegate.errors import APIError

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

__all__ = ["Authenticator", "DenyAllAuthenticator", "auth_data"]

_current_auth: contextvars.ContextVar[Any] = contextvars.ContextVar("sluicegate_auth", default=None)


class Authenticator(Protocol):
    """Decides who a connection is, from its headers or query.

    ``authenticate`` returns the caller's auth data (any object: an identity with a
    tenant and a role, for instance) or raises :class:`APIError` with
    ``unauthenticated`` (401, no or unusable credentials) or ``permission_denied``
    (403, credentials that are not accepted).
    """

    async def authenticate(self, conn: HTTPConnection) -> Any:
        """Identify the caller of an HTTP request or WebSocket handshake.

        Raises:
            APIError: ``unauthenticated`` or ``permission_denied``.
        """
        ...


class DenyAllAuthenticator:
    """The authenticator of an app that configured none: every ``auth=True`` call is a 401."""

    async def authenticate(self, conn: HTTPConnection) -> Any:
        raise APIError.unauthenticated("Authentication is not configured on this server")


def auth_data() -> Any:
    """The auth data of the caller of the running stream handler (``None`` without auth)."""
    return _current_auth.get()


def set_auth_data(value: Any) -> contextvars.Token[Any]:
    """Bind auth data for the current context (the framework calls this, not services)."""
    return _current_auth.set(value)
