"""Tenant isolation as a primitive: a lookup from another tenant is a 404, never a 403.

Every stored session, job, channel and event carries its tenant. Services fetch the
thing, then pass it through :func:`owned_by`, which answers the same ``not_found``
error whether the thing does not exist or belongs to someone else, so a caller can
never learn that another tenant's id exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sluicegate.errors import APIError

if TYPE_CHECKING:
    from sluicegate.security.identity import Identity

__all__ = ["TenantOwned", "owned_by"]


class TenantOwned(Protocol):
    """Anything stored for a tenant."""

    @property
    def tenant(self) -> int:
        """The owning tenant."""
        ...


T = TypeVar("T", bound=TenantOwned)


def owned_by(identity: Identity, thing: T | None, not_found: str, **details: Any) -> T:
    """Return ``thing`` if it exists and belongs to the caller's tenant.

    Args:
        identity: the caller.
        thing: what the lookup found, or ``None``.
        not_found: the 404 message (the same for missing and foreign things).
        details: extra fields of the 404 body (the seeds' bodies carry ids and hints).

    Raises:
        APIError: 404 when ``thing`` is ``None`` or another tenant's.
    """
    if thing is None or thing.tenant != identity.tenant:
        raise APIError.not_found(not_found, **details)
    return thing
