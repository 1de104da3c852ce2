"""Tenant isolation: another tenant's thing looks exactly like a missing one (security/tenancy.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sluicegate.errors import APIError
from sluicegate.security.identity import Identity
from sluicegate.security.tenancy import owned_by


@dataclass(frozen=True)
class Job:
    id: str
    tenant: int


def _caller(tenant: int) -> Identity:
    return Identity("alice", tenant, "user", frozenset(), "bearer")


def _not_found(thing: Job | None, caller: Identity) -> APIError:
    with pytest.raises(APIError) as info:
        owned_by(caller, thing, "Job not found", jobId="j1", hint="check the id")
    return info.value


def test_thing_of_the_same_tenant_is_returned() -> None:
    job = Job("j1", 3)
    assert owned_by(_caller(3), job, "Job not found") is job


def test_tenant_zero_owns_its_things() -> None:
    job = Job("j1", 0)
    assert owned_by(_caller(0), job, "Job not found") is job


def test_missing_thing_is_not_found_with_details() -> None:
    error = _not_found(None, _caller(3))
    assert error.status == 404
    assert error.body() == {"error": "Job not found", "code": "not_found", "jobId": "j1", "hint": "check the id"}


def test_another_tenants_thing_is_not_found() -> None:
    error = _not_found(Job("j1", 4), _caller(3))
    assert error.status == 404


def test_another_tenants_thing_is_indistinguishable_from_a_missing_one() -> None:
    foreign = _not_found(Job("j1", 4), _caller(3))
    missing = _not_found(None, _caller(3))
    assert (foreign.status, foreign.body(), foreign.headers) == (missing.status, missing.body(), missing.headers)
    assert str(foreign) == str(missing)


def test_admin_of_another_tenant_is_not_let_through() -> None:
    admin = Identity("root", 1, "admin", frozenset({"admin"}), "api_key", "k")
    with pytest.raises(APIError) as info:
        owned_by(admin, Job("j1", 2), "Job not found")
    assert info.value.status == 404
