"""Alembic's environment for Sluicegate's schema.

Two ways in:

- the store, at start-up (:func:`sluicegate.engines.store.migrate.migrate`): the
  configuration carries an open connection, already in a transaction;
- the ``alembic`` command line, for developers (``alembic.ini`` at the repository root,
  see ``docs/database.md``): the database is ``-x url=...``, else
  ``SLUICEGATE_DATABASE_URL``; ``--sql`` prints the SQL instead.

SQLite cannot alter most of a table in place, so on SQLite operations run in batch mode
(the table is rebuilt); autogenerate renders them that way too.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import TYPE_CHECKING, Any, Literal

from alembic import context
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import create_async_engine

from sluicegate.engines.store import UTCDateTime
from sluicegate.engines.store.migrate import include_object, target_metadata

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from sqlalchemy import Connection

config = context.config
metadata = target_metadata()


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write ``UTCDateTime`` as the column type it is, so scripts do not import the models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("SLUICEGATE_DATABASE_URL")
    if not url:
        raise CommandError("name the database: alembic -x url=sqlite+aiosqlite:///... (or SLUICEGATE_DATABASE_URL)")
    return url


async def run_online(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        url = database_url()
        context.configure(
            url=url,
            target_metadata=metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            render_as_batch=url.startswith("sqlite"),
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run_online(database_url()))
