"""The store contract, on SQLite and on PostgreSQL: migrations at start-up, errors, time.

Every test gets a fresh, empty database from the ``database_url`` fixture (a SQLite file,
or a PostgreSQL database created for it and dropped afterwards).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import delete, event, func, insert, inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from sluicegate.edge import api_error
from sluicegate.engines.store import Base, Store, StoreConflict, _sqlite_pragmas
from sluicegate.engines.store.migrate import (
    BASELINE,
    BASELINE_TABLES,
    LOCK_KEY,
    TABLE_MODULES,
    alembic_config,
    current_revision,
    include_object,
    target_metadata,
)
from sluicegate.errors import ConfigurationError, ErrCode
from sluicegate.services.challenges import ChallengeMessageRow, ChallengeRow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy import Connection

REPO = Path(__file__).resolve().parents[2]
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Every module that declares tables: importing them here makes Base.metadata complete.
METADATA = target_metadata()


def at(when: datetime) -> dict[str, datetime]:
    return {"created_at": when, "updated_at": when}


def challenge(name: str = "monza", at: datetime = T0) -> ChallengeRow:
    return ChallengeRow(name=name, status="active", created_at=at, updated_at=at)


async def on(url: str, work: Callable[[Connection], Any]) -> Any:
    """Run ``work`` on a plain connection to ``url`` (no store, no migrations), committed."""
    engine = create_async_engine(url)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def tables(connection: Connection) -> set[str]:
    """The tables of the models (and Alembic's): the databases' own full-text index tables left out."""
    return {name for name in inspect(connection).get_table_names() if include_object(None, name, "table", True, None)}


def schema_diff(connection: Connection) -> list[Any]:
    return list(
        compare_metadata(MigrationContext.configure(connection, opts={"include_object": include_object}), METADATA)
    )


@pytest.fixture
async def opened(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# -- migrations --------------------------------------------------------------------------


async def test_opening_an_empty_database_migrates_it_to_head_with_every_table(opened: Store) -> None:
    async with opened.engine.connect() as connection:
        assert await connection.run_sync(tables) == set(METADATA.tables) | {"alembic_version"}
        assert await connection.run_sync(current_revision) == HEAD


async def test_models_and_migrations_agree(opened: Store) -> None:
    async with opened.engine.connect() as connection:
        assert await connection.run_sync(schema_diff) == []


def test_every_module_with_tables_is_known_to_the_migrations() -> None:
    import sluicegate.app  # noqa: F401 -- registers every table the app uses

    declaring = {mapper.class_.__module__ for mapper in Base.registry.mappers}
    assert declaring <= set(TABLE_MODULES)
    assert set(Base.metadata.tables) >= BASELINE_TABLES


async def test_opening_twice_keeps_the_revision_and_the_data(database_url: str) -> None:
    first = Store(database_url)
    await first.open()
    async with first.session() as session:
        session.add(challenge())
    await first.close()

    again = Store(database_url)
    await again.open()
    try:
        async with again.engine.connect() as connection:
            assert await connection.run_sync(current_revision) == HEAD
        async with again.session() as session:
            assert await session.scalar(select(ChallengeRow.name)) == "monza"
    finally:
        await again.close()


async def test_a_database_made_by_create_all_is_stamped_and_keeps_its_rows(database_url: str) -> None:
    def legacy(connection: Connection) -> None:
        # What create_all made before migrations: the first revision's tables, no alembic_version.
        command.upgrade(alembic_config(connection), BASELINE)
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(insert(ChallengeRow).values(name="imola", status="ended", **at(T0)))

    await on(database_url, legacy)
    store = Store(database_url)
    await store.open()
    try:
        async with store.engine.connect() as connection:
            assert await connection.run_sync(current_revision) == HEAD
            assert await connection.run_sync(schema_diff) == []
        async with store.session() as session:
            assert await session.scalar(select(ChallengeRow.name)) == "imola"
    finally:
        await store.close()


async def test_a_database_with_only_some_tables_from_before_migrations_gets_the_others(database_url: str) -> None:
    older = [METADATA.tables["challenges"], METADATA.tables["challenge_messages"]]  # the first version with a store

    def legacy(connection: Connection) -> None:
        Base.metadata.create_all(connection, tables=older)
        connection.execute(insert(ChallengeRow).values(name="spa", status="active", **at(T0)))

    await on(database_url, legacy)
    store = Store(database_url)
    await store.open()
    try:
        async with store.engine.connect() as connection:
            assert await connection.run_sync(tables) == set(METADATA.tables) | {"alembic_version"}
            assert await connection.run_sync(schema_diff) == []
        async with store.session() as session:
            assert await session.scalar(select(ChallengeRow.name)) == "spa"
    finally:
        await store.close()


async def test_downgrade_to_base_drops_every_table_and_upgrade_restores_them(opened: Store) -> None:
    def down_and_up(connection: Connection) -> tuple[set[str], set[str]]:
        command.downgrade(alembic_config(connection), "base")
        emptied = tables(connection)
        command.upgrade(alembic_config(connection), "head")
        return emptied, tables(connection)

    async with opened.engine.begin() as connection:
        emptied, restored = await connection.run_sync(down_and_up)
    assert emptied == {"alembic_version"}
    assert restored == set(METADATA.tables) | {"alembic_version"}


async def test_a_failing_migration_leaves_the_database_as_it_was(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade = command.upgrade

    def upgrade_then_fail(config: Any, revision: str) -> None:
        upgrade(config, revision)  # every table made, in the store's transaction
        raise CommandError("the next migration failed")

    monkeypatch.setattr(command, "upgrade", upgrade_then_fail)
    with pytest.raises(ConfigurationError, match=r"cannot migrate the database \(the next migration failed\)"):
        await Store(database_url).open()
    assert await on(database_url, tables) == set()


async def test_a_database_migrated_by_a_newer_version_is_refused_at_start_up(database_url: str) -> None:
    store = Store(database_url)
    await store.open()
    async with store.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    await store.close()

    with pytest.raises(ConfigurationError, match=r"SLUICEGATE_DATABASE_URL: .*f00dfeedbeef.* newer version"):
        await Store(database_url).open()


async def test_an_unreachable_database_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_DATABASE_URL: cannot open the database"):
        await Store("postgresql+asyncpg://postgres@127.0.0.1:1/nothing").open()


async def test_two_stores_opening_one_fresh_database_together_both_succeed(database_url: str) -> None:
    stores = [Store(database_url), Store(database_url)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        for store in stores:
            async with store.engine.connect() as connection:
                assert await connection.run_sync(current_revision) == HEAD
        async with stores[0].session() as session:
            session.add(challenge())
        async with stores[1].session() as session:
            assert await session.scalar(select(func.count()).select_from(ChallengeRow)) == 1
    finally:
        for store in stores:
            await store.close()


async def test_start_up_waits_while_another_process_migrates(database_url: str) -> None:
    # Another node (PostgreSQL: the advisory lock) or worker process (SQLite: the write lock) is migrating.
    holder = create_async_engine(database_url)
    if database_url.startswith("sqlite"):
        event.listen(holder.sync_engine, "connect", _sqlite_pragmas)
    try:
        async with holder.connect() as connection:
            if database_url.startswith("sqlite"):
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            store = Store(database_url)
            opening = asyncio.create_task(store.open())
            done, _ = await asyncio.wait([opening], timeout=0.5)
            assert not done, "the store migrated while another process held the lock"
            if database_url.startswith("sqlite"):
                await connection.commit()
            else:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            await asyncio.wait_for(opening, timeout=10)
        try:
            async with store.engine.connect() as migrated:
                assert await migrated.run_sync(current_revision) == HEAD
        finally:
            await store.close()
    finally:
        await holder.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_alembic_command_line_for_developers_sees_no_change_to_generate(database_url: str) -> None:
    # What docs/database.md tells developers to run, on a database at head.
    alembic = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "-x", f"url={database_url}"]
    subprocess.run([*alembic, "upgrade", "head"], check=True, capture_output=True, cwd=REPO, timeout=60)
    checked = subprocess.run([*alembic, "check"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


# -- sessions ----------------------------------------------------------------------------


async def test_a_unique_violation_is_a_conflict_the_api_answers_409(opened: Store) -> None:
    async with opened.session() as session:
        session.add(challenge("suzuka"))
    with pytest.raises(StoreConflict) as caught:
        async with opened.session() as session:
            session.add(challenge("suzuka"))
    mapped = api_error(caught.value)
    assert mapped is not None and mapped.code is ErrCode.ALREADY_EXISTS and mapped.status == 409
    async with opened.session() as session:
        assert await session.scalar(select(func.count()).select_from(ChallengeRow)) == 1


async def test_deleting_a_challenge_deletes_its_messages(opened: Store) -> None:
    # Foreign keys are on again after migrating (SQLite turns them off while it migrates).
    async with opened.session() as session:
        row = challenge()
        session.add(row)
        await session.flush()
        session.add(ChallengeMessageRow(challenge_id=row.id, author="a", text="hi", created_at=T0))
    async with opened.session() as session:
        await session.execute(delete(ChallengeRow))
    async with opened.session() as session:
        assert await session.scalar(select(func.count()).select_from(ChallengeMessageRow)) == 0


async def test_timezone_aware_datetimes_come_back_in_utc(opened: Store) -> None:
    paris = timezone(timedelta(hours=2))
    written = datetime(2026, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    async with opened.session() as session:
        session.add(challenge(at=written))
    async with opened.session() as session:
        read = await session.scalar(select(ChallengeRow.created_at))
    assert read == written
    assert read is not None and read.utcoffset() == timedelta(0)
    assert read.replace(tzinfo=None) == datetime(2026, 6, 1, 12, 30, 15, 123456)


async def test_check_answers_while_open_and_refuses_once_closed(database_url: str) -> None:
    store = Store(database_url)
    await store.open()
    await store.check()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.check()


def _wal_at_once(path: str, barrier: Any, failures: Any) -> None:
    from sluicegate.engines.store import _make_wal

    barrier.wait()
    try:
        _make_wal(path)
    except Exception:
        failures.put(path)


def test_processes_making_a_new_database_wal_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    # The workers of one node start together on a database that does not exist yet.
    import multiprocessing
    import sqlite3

    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for round_ in range(15):
        path = str(tmp_path / f"new{round_}.db")
        barrier = context.Barrier(3)
        workers = [context.Process(target=_wal_at_once, args=(path, barrier, failures)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert [w.exitcode for w in workers] == [0, 0, 0]
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert failures.empty()
