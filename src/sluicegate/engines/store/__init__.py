"""The store engine: relational state through SQLAlchemy 2 (async).

``SLUICEGATE_DATABASE_URL`` picks the database: SQLite through aiosqlite by default
(``sqlite+aiosqlite:///<data dir>/sluicegate.db``), PostgreSQL through asyncpg.
Services declare their tables on :class:`Base`; the schema itself is made by the
Alembic migrations shipped in ``migrations/``, which the store applies when it opens
(:mod:`sluicegate.engines.store.migrate`; ``docs/database.md`` says how to add one).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives
a ``kill -9`` of the server (it is in the WAL, handed to the OS), which is what an
acknowledgement promises here.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, Dialect, TypeDecorator, event, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from sluicegate.errors import ConfigurationError, SluicegateError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Base", "Store", "StoreConflict", "StoreUnavailable", "UTCDateTime", "default_database_url"]


class StoreUnavailable(SluicegateError, ConnectionError):
    """The database could not be reached, or failed a statement."""


class StoreConflict(SluicegateError):
    """A unique constraint refused a row: it already exists."""


class Base(DeclarativeBase):
    """The declarative base of every table."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def default_database_url(data_dir: Path) -> str:
    """SQLite in the data dir."""
    return f"sqlite+aiosqlite:///{(data_dir / 'sluicegate.db').as_posix()}"


#: Bytes of a SQLite file each connection reads through a memory map (address space, not
#: memory: the pages are the operating system's cache, shared by every connection). A
#: full-text query of a large catalog reads thousands of scattered rows; through the map
#: they cost a third of what SQLite's own 2 MB page cache does (docs/performance.md).
SQLITE_MMAP_BYTES = 1 << 30


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching to WAL waits for a process that holds the write lock.
    pragmas = ("busy_timeout=5000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON")
    for pragma in (*pragmas, f"mmap_size={SQLITE_MMAP_BYTES}"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


#: Tries at switching a new SQLite database to WAL while another process does (50 ms apart).
WAL_ATTEMPTS = 100


def _make_wal(path: str) -> None:
    """Switch a SQLite database to WAL once, before any connection of the pool (blocking).

    Two processes making a new database WAL at the same moment (the workers of one node
    starting together) race for it, and SQLite refuses the loser at once, busy timeout or
    not; once the file is in WAL mode, the switch is a no-op for every later connection.
    """
    for attempt in range(WAL_ATTEMPTS):
        connection = sqlite3.connect(path, timeout=5)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS - 1:
                raise
        finally:
            connection.close()
        time.sleep(0.05)


class Store:
    """A database, opened at start-up and closed at shutdown.

    Args:
        url: a SQLAlchemy async URL.
    """

    name = "store"

    def __init__(self, url: str) -> None:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ConfigurationError(
                "SLUICEGATE_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (after :meth:`open`)."""
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def open(self) -> None:
        """Connect and migrate the schema to the newest revision.

        Raises:
            ConfigurationError: the database cannot be reached or migrated, or a newer
                version of Sluicegate migrated it.
        """
        from alembic.util import CommandError

        from sluicegate.engines.store.migrate import migrate

        if self.url.startswith("sqlite"):
            path = self.url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                try:
                    await asyncio.to_thread(_make_wal, path)
                except sqlite3.Error as exc:
                    raise ConfigurationError(f"SLUICEGATE_DATABASE_URL: cannot open the database ({exc})") from None
        # A pooled PostgreSQL connection can die with its server; a SQLite file cannot: pinging
        # it before every checkout would cost each transaction a statement for nothing.
        engine = create_async_engine(self.url, pool_pre_ping=not self.url.startswith("sqlite"))
        if self.url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            await migrate(engine)
        except (OSError, SQLAlchemyError) as exc:
            await engine.dispose()
            raise ConfigurationError(f"SLUICEGATE_DATABASE_URL: cannot open the database ({exc})") from None
        except CommandError as exc:
            await engine.dispose()
            raise ConfigurationError(f"SLUICEGATE_DATABASE_URL: cannot migrate the database ({exc})") from exc
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        """Release every connection."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def check(self) -> None:
        """Run ``SELECT 1``."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success and rolled back on error.

        Raises:
            StoreConflict: a unique constraint refused a row.
            StoreUnavailable: the database failed.
        """
        if self._sessions is None:
            raise RuntimeError("the store is not open")
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            raise StoreConflict("It already exists") from exc
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"The database is unavailable: {type(exc).__name__}") from exc
