"""Schema migrations: the Alembic scripts in ``migrations/``, applied when the store opens.

:func:`migrate` brings a database to the newest revision (``head``) through the store's
own async engine, in one transaction. No ``alembic.ini`` is read at run time: the
configuration is built here, pointing at the package's ``migrations`` folder.

- PostgreSQL: the upgrade runs under ``pg_advisory_xact_lock(LOCK_KEY)``, so nodes that
  start together migrate one after the other; the later ones find the database at head
  and do nothing. The lock goes with the transaction.
- SQLite: the upgrade runs in one ``BEGIN IMMEDIATE`` transaction, so it is atomic and
  the server processes of one host (``--workers``) migrate one after the other (the
  others wait, up to the busy timeout, for the write lock). Foreign keys are off while
  migrations run (batch mode rebuilds a table by copying it and dropping the original,
  and with foreign keys on that drop would cascade ``ON DELETE`` to the rows of other
  tables); they are on again afterwards.
- A database made by ``create_all`` before Sluicegate had migrations (every table of
  the first revision, no ``alembic_version``) is stamped at that revision, rows kept.

Alembic's ``context`` and ``op`` are module-level proxies, and a migration run through
``run_sync`` yields to the event loop at every statement, so two stores of one process
must not migrate at the same time: a per-loop :class:`asyncio.Lock` keeps them in turn.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text

from sluicegate.engines.store import Base
from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import Connection, MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "BASELINE",
    "BASELINE_TABLES",
    "LOCK_KEY",
    "MIGRATIONS",
    "alembic_config",
    "current_revision",
    "migrate",
    "target_metadata",
]

#: The folder of ``env.py`` and ``versions/``, shipped inside the package.
MIGRATIONS = Path(__file__).with_name("migrations")

#: The first revision: the schema ``create_all`` made before there were migrations.
BASELINE = "8b0c5e1f4a27"

#: The tables of :data:`BASELINE`. Frozen: a table added later belongs to a later revision.
BASELINE_TABLES = frozenset(
    {"challenges", "challenge_messages", "ingest_sessions", "ingest_batches", "ingest_schemas", "race_sessions"}
)

#: The modules that declare tables on :class:`Base`; a new one must be added here, or
#: autogenerate cannot see its tables (the store contract test checks against the app).
TABLE_MODULES = (
    "sluicegate.engines.store.leases",
    "sluicegate.services.challenges",
    "sluicegate.services.chat.tables",
    "sluicegate.services.context.tables",
    "sluicegate.services.ingest.models",
    "sluicegate.services.races.models",
    "sluicegate.services.retrieval.versions",
    "sluicegate.services.search.tables",
)

#: The PostgreSQL advisory lock held while migrating: "sluicega" as a big-endian int64.
LOCK_KEY = int.from_bytes(b"sluicega", "big")

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


#: Schema objects the migrations make that are not in the models: the databases' own
#: full-text indexes over ``products.search_text`` (FTS5 on SQLite, a tsvector on PostgreSQL).
UNMODELLED = frozenset({"products_fts", "search_tsv", "ix_products_search_tsv"})


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Autogenerate's filter: leave :data:`UNMODELLED` objects (and FTS5's shadow tables) alone."""
    return not (name in UNMODELLED or (type_ == "table" and name is not None and name.startswith("products_fts")))


def target_metadata() -> MetaData:
    """Every table of the application (importing the modules that declare them)."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return Base.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the package's scripts, built without a file.

    Args:
        connection: the connection ``env.py`` migrates through; ``None`` leaves it to
            ``env.py`` to connect (the ``alembic`` command line).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, ``None`` when it has none."""
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    """Stamp a database made by ``create_all``, then upgrade to head (in the caller's transaction)."""
    config = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables:
        if tables >= BASELINE_TABLES:
            command.stamp(config, BASELINE)
    else:
        revision = current_revision(connection)
        if revision is not None:
            try:
                ScriptDirectory.from_config(config).get_revision(revision)
            except CommandError:
                raise ConfigurationError(
                    f"SLUICEGATE_DATABASE_URL: the database is at schema revision {revision}, which this "
                    "version of Sluicegate does not know; it was migrated by a newer version"
                ) from None
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the newest revision.

    Raises:
        ConfigurationError: the database was migrated by a newer version.
        sqlalchemy.exc.SQLAlchemyError: the database failed (the store translates it).
        alembic.util.CommandError: a migration script is broken.
    """
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    dialect = engine.dialect.name
    async with lock, engine.connect() as connection:
        if dialect == "sqlite":
            # Outside a transaction, or SQLite ignores it (the commit ends SQLAlchemy's autobegin).
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.commit()
        try:
            async with connection.begin():
                if dialect == "postgresql":
                    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
                elif dialect == "sqlite":
                    # pysqlite would begin only at the first INSERT: take the write lock now.
                    await connection.exec_driver_sql("BEGIN IMMEDIATE")
                await connection.run_sync(_upgrade)
        finally:
            if dialect == "sqlite":
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()
