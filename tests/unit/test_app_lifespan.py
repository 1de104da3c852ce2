"""The app's lifespan opens and closes its engines and tunes the garbage collector while serving."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from sluicegate.app import create_app
from sluicegate.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path


async def test_lifespan_raises_the_gc_threshold_while_serving_and_restores_it(tmp_path: Path) -> None:
    before = gc.get_threshold()
    app = create_app(Settings(data_dir=tmp_path, gc_gen0_threshold=12345))
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == (12345, *before[1:])
        await app.state.store.check()  # the store was opened
    assert gc.get_threshold() == before


async def test_gc_threshold_zero_leaves_the_interpreter_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    app = create_app(Settings(data_dir=tmp_path, gc_gen0_threshold=0))
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == before


async def test_the_embedded_database_lives_in_the_data_dir(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "nested"))
    async with app.router.lifespan_context(app):
        pass
    assert (tmp_path / "nested" / "sluicegate.db").exists()
    assert (tmp_path / "nested" / "jwt_secret").exists()


def test_lease_holders_differ_by_process_on_a_shared_log_and_by_data_folder_on_the_spool(tmp_path: Path) -> None:
    from sluicegate.app import _holder
    from sluicegate.clock import SystemClock
    from sluicegate.engines.log import log_from_url

    spool = log_from_url("spool://", data_dir=tmp_path / "a", fsync=True, clock=SystemClock())
    redis = log_from_url("redis://127.0.0.1:6379/0", data_dir=tmp_path, fsync=True, clock=SystemClock())
    assert _holder(spool, tmp_path / "a") == _holder(spool, tmp_path / "a")  # a restart takes its leases back
    assert _holder(spool, tmp_path / "a") != _holder(spool, tmp_path / "b")  # another node's spool
    assert _holder(redis, tmp_path) != _holder(redis, tmp_path)  # every process its own
    assert all(len(_holder(log, tmp_path)) <= 100 for log in (spool, redis))
