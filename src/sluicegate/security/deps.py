"""FastAPI dependencies: the one way routes ask who is calling and count rate limits.

.. code-block:: python

    @router.post("/api/stream", dependencies=[Depends(rate_limited("generate"))])
    async def generate(identity: ApiKeyIdentity) -> ...: ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Response

from sluicegate.errors import APIError
from sluicegate.security.identity import BOTH, AuthMethod, GatewayAuthenticator, Identity

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "AdminIdentity",
    "AnyIdentity",
    "ApiKeyIdentity",
    "BearerIdentity",
    "rate_limited",
    "require_admin",
    "require_any",
    "require_api_key",
    "require_bearer",
]


async def _authenticate(request: Request, accept: tuple[AuthMethod, ...]) -> Identity:
    cached = getattr(request.state, "identity", None)
    if isinstance(cached, Identity) and cached.method in accept:
        return cached
    authenticator = request.app.state.authenticator
    if not isinstance(authenticator, GatewayAuthenticator):
        raise APIError.unauthenticated("Authentication is not configured on this server")
    identity = await authenticator.authenticate(request, accept=accept)
    request.state.identity = identity
    return identity


async def require_any(request: Request) -> Identity:
    """An API key or a bearer token."""
    return await _authenticate(request, BOTH)


async def require_api_key(request: Request) -> Identity:
    """An API key (``X-API-Key``)."""
    return await _authenticate(request, ("api_key",))


async def require_bearer(request: Request) -> Identity:
    """A bearer token (``Authorization: Bearer``)."""
    return await _authenticate(request, ("bearer",))


async def require_admin(request: Request) -> Identity:
    """An admin API key.

    Raises:
        APIError: 403 ``Forbidden: admin API key required.`` for a user key.
    """
    identity = await _authenticate(request, ("api_key",))
    if not identity.is_admin:
        raise APIError.permission_denied("Forbidden: admin API key required.")
    return identity


AnyIdentity = Annotated[Identity, Depends(require_any)]
ApiKeyIdentity = Annotated[Identity, Depends(require_api_key)]
BearerIdentity = Annotated[Identity, Depends(require_bearer)]
AdminIdentity = Annotated[Identity, Depends(require_admin)]

_IDENTITY_FOR_GROUP: dict[str, Callable[[Request], Awaitable[Identity]]] = {
    "tenant": require_any,
    "generate": require_api_key,
}


def rate_limited(group: str) -> Callable[..., Awaitable[None]]:
    """A dependency counting the request against ``group``, adding the ``X-RateLimit-*``
    headers to the response, and refusing it with the group's 429 when over the limit.

    ``tenant`` needs an API key or bearer token and ``generate`` an API key (authenticated first,
    so a missing credential is a 401, not a 429); ``streaming_ip`` needs nothing. A request
    another node forwarded (signed) is not counted again.
    """
    needs = _IDENTITY_FOR_GROUP.get(group)

    async def dependency(request: Request, response: Response) -> None:
        identity = await needs(request) if needs is not None else None
        forwarder = getattr(request.app.state, "forwarder", None)
        if forwarder is not None and forwarder.verified(request.scope):
            return  # counted by the node that received it (services/forward.py)
        result = await request.app.state.rate_limiter.check(group, request.scope, identity)
        if result is not None:
            response.headers.update(result.headers())

    return dependency
