"""Telemetry schemas (the second seed's format), registered per tenant and looked up by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from sluicegate.errors import APIError
from sluicegate.services.ingest.models import SchemaRow
from sluicegate.services.ingest.validation import Schema, parse_schema

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.security.identity import Identity

__all__ = ["get_schema", "put_schema", "schema_definition"]


async def put_schema(store: Store, clock: Clock, identity: Identity, definition: dict[str, Any]) -> tuple[Schema, bool]:
    """Register (or replace) a schema; returns it and whether it is new.

    Raises:
        APIError: 400 naming what is wrong with the definition.
    """
    schema = parse_schema(definition)
    async with store.session() as db:
        row = await db.scalar(
            select(SchemaRow).where(SchemaRow.tenant == identity.tenant, SchemaRow.name == schema.name)
        )
        created = row is None
        if row is None:
            db.add(SchemaRow(tenant=identity.tenant, name=schema.name, definition=definition, created_at=clock.now()))
        else:
            row.definition = definition
    return schema, created


async def get_schema(store: Store, identity: Identity, name: str) -> Schema:
    """A registered schema of the tenant.

    Raises:
        APIError: 404.
    """
    return parse_schema(await schema_definition(store, identity.tenant, name))


async def schema_definition(store: Store, tenant: int, name: str) -> dict[str, Any]:
    """The definition of a tenant's schema.

    Raises:
        APIError: 404.
    """
    async with store.session() as db:
        row = await db.scalar(select(SchemaRow).where(SchemaRow.tenant == tenant, SchemaRow.name == name))
    if row is None:
        raise APIError.not_found("Schema not found", schemaName=name)
    return row.definition
