"""Identities and access: who is calling, and what they may do.

This package is the one place that reads credentials from a request. Stream
endpoints declared with ``auth=True`` and routes that depend on :func:`auth_data`
call the app's :class:`Authenticator`.
"""

from __future__ import annotations

from sluicegate.security.auth import Authenticator, DenyAllAuthenticator, auth_data

__all__ = ["Authenticator", "DenyAllAuthenticator", "auth_data"]
