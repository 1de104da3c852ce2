"""Identities and access: who is calling, what they may do, and how often.

This package is the one place that reads credentials from a request
(:mod:`~sluicegate.security.identity`), counts rate limits
(:mod:`~sluicegate.security.ratelimit`) and keeps tenants apart
(:mod:`~sluicegate.security.tenancy`). Routes use the dependencies of
:mod:`~sluicegate.security.deps`; stream endpoints declared with ``auth=True`` call the
app's :class:`Authenticator`.
"""

from __future__ import annotations

from sluicegate.security.auth import Authenticator, DenyAllAuthenticator, auth_data
from sluicegate.security.identity import Identity
from sluicegate.security.tenancy import owned_by

__all__ = ["Authenticator", "DenyAllAuthenticator", "Identity", "auth_data", "owned_by"]
