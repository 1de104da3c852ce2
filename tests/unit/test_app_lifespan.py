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
