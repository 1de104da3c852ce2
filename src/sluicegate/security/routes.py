"""``POST /api/auth/tokens``: an admin API key issues bearer tokens for a tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from sluicegate.security.deps import AdminIdentity  # noqa: TC001 -- FastAPI reads route annotations at run time

if TYPE_CHECKING:
    from sluicegate.security.identity import TokenService

__all__ = ["router"]

router = APIRouter(prefix="/api/auth", tags=["auth"])

MAX_TTL_SECONDS = 366 * 24 * 3600


class TokenRequest(BaseModel):
    """What the token may do, for how long."""

    tenant: int = Field(ge=0, description="The tenant the token acts for.")
    scopes: list[str] = Field(default_factory=list, max_length=50, description="Scopes; `admin` makes an admin.")
    ttlSeconds: int = Field(86400, ge=1, le=MAX_TTL_SECONDS, description="Lifetime in seconds.")
    subject: str = Field("api", min_length=1, max_length=200, description="The token's `sub`.")


class TokenResponse(BaseModel):
    """A bearer token: send it as `Authorization: Bearer <token>`."""

    token: str
    tokenType: str = "Bearer"
    tenant: int
    scopes: list[str]
    expiresAt: datetime
    expiresIn: int


@router.post("/tokens", status_code=201, summary="Issue a bearer token (admin API key)")
async def create_token(body: TokenRequest, request: Request, admin: AdminIdentity) -> TokenResponse:
    """Issue a JWT (HS256) with `sub`, `tenant`, `scopes` and `exp`."""
    tokens: TokenService = request.app.state.tokens
    token, expires = tokens.issue(
        tenant=body.tenant, subject=body.subject, scopes=body.scopes, ttl=timedelta(seconds=body.ttlSeconds)
    )
    return TokenResponse(
        token=token,
        tenant=body.tenant,
        scopes=sorted(set(body.scopes)),
        expiresAt=datetime.fromtimestamp(expires, UTC),
        expiresIn=body.ttlSeconds,
    )
