"""SessionSpool: durable appends with group commits, rotation, recovery, failures."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import pytest

from sluicegate.engines.spool import ACTIVE, SessionSpool, SpoolError

if TYPE_CHECKING:
    from pathlib import Path


def line(i: int) -> bytes:
    return b'{"i":%d}\n' % i


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
def fsync(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


def counting_writes(spool: SessionSpool, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Wrap the instance's ``_write``; returns the list of every batch written."""
    writes: list[bytes] = []
    original = spool._write

    def counted(data: bytes) -> None:
        writes.append(data)
        original(data)

    monkeypatch.setattr(spool, "_write", counted)
    return writes


async def test_append_returns_increasing_totals_from_the_given_total(tmp_path: Path, fsync: bool) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=fsync, total=40)
    totals = [await spool.append(line(i)) for i in range(5)]
    assert totals == [41, 42, 43, 44, 45]
    assert spool.total == 45
    assert spool.active_points == 5
    assert spool.active_bytes == sum(len(line(i)) for i in range(5))
    assert spool.spooled_points == 5
    assert (tmp_path / "s" / ACTIVE).read_bytes() == b"".join(line(i) for i in range(5))
    spool.close()


async def test_append_starts_at_one_by_default_and_creates_the_folder(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    spool = SessionSpool(directory, fsync=False)
    assert await spool.append(line(0)) == 1
    assert directory.is_dir()
    spool.close()


async def test_spool_file_is_private(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=False)
    await spool.append(line(0))
    assert (tmp_path / "s" / ACTIVE).stat().st_mode & 0o077 == 0
    spool.close()


async def test_concurrent_appends_are_group_committed(
    tmp_path: Path, fsync: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=fsync)
    writes = counting_writes(spool, monkeypatch)
    lines = [line(i) for i in range(200)]
    totals = await asyncio.gather(*(spool.append(data) for data in lines))
    assert sorted(totals) == list(range(1, 201))
    assert 1 <= len(writes) <= 20  # far fewer writes (and fsyncs) than appends
    assert sorted(b"".join(writes).splitlines(keepends=True)) == sorted(lines)
    content = (tmp_path / "s" / ACTIVE).read_bytes()
    assert sorted(content.splitlines(keepends=True)) == sorted(lines)  # every line, exactly once
    assert spool.active_points == 200
    assert spool.active_bytes == len(content)
    spool.close()


async def test_appends_arriving_during_a_write_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=False)
    writes = counting_writes(spool, monkeypatch)
    first = asyncio.ensure_future(spool.append(line(0)))
    await asyncio.sleep(0)  # the committer takes the first batch of one
    rest = [asyncio.ensure_future(spool.append(line(i))) for i in range(1, 51)]
    assert await first == 1
    assert sorted(await asyncio.gather(*rest)) == list(range(2, 52))
    assert len(writes) <= 3
    assert spool.active_points == 51
    spool.close()


async def test_rotate_moves_active_to_a_pending_batch(tmp_path: Path, fsync: bool) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=fsync)
    for i in range(3):
        await spool.append(line(i))
    size = spool.active_bytes
    assert await spool.rotate(1) is True
    assert not (tmp_path / "s" / ACTIVE).exists()
    assert spool.pending_path(1) == tmp_path / "s" / "000001.pending.jsonl"
    assert spool.pending_path(1).read_bytes() == line(0) + line(1) + line(2)
    assert spool.pending == {1: (3, size)}
    assert (spool.active_points, spool.active_bytes) == (0, 0)
    assert spool.spooled_points == 3
    assert spool.total == 3
    # appends after a rotation go to a fresh active file, totals keep counting
    assert await spool.append(line(3)) == 4
    assert (tmp_path / "s" / ACTIVE).read_bytes() == line(3)
    assert await spool.rotate(2) is True
    assert spool.pending == {1: (3, size), 2: (1, len(line(3)))}
    assert spool.spooled_points == 4
    spool.close()


async def test_rotate_with_nothing_active_returns_false(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=True)
    assert await spool.rotate(1) is False
    assert spool.pending == {}
    await spool.append(line(0))
    assert await spool.rotate(1) is True
    assert await spool.rotate(2) is False
    assert list(spool.pending) == [1]
    spool.close()


async def test_recover_restores_counts_and_adds_spooled_points_to_total(tmp_path: Path, fsync: bool) -> None:
    directory = tmp_path / "s"
    first = SessionSpool(directory, fsync=fsync, total=10)
    for i in range(4):
        await first.append(line(i))
    await first.rotate(3)
    for i in range(4, 6):
        await first.append(line(i))
    expected_pending, expected_active = dict(first.pending), (first.active_points, first.active_bytes)
    first.close()

    second = SessionSpool(directory, fsync=fsync, total=10)
    await asyncio.to_thread(second.recover)
    assert second.pending == expected_pending == {3: (4, sum(len(line(i)) for i in range(4)))}
    assert (second.active_points, second.active_bytes) == expected_active == (2, len(line(4) + line(5)))
    assert second.spooled_points == 6
    assert second.total == 16
    # and it goes on appending after what was there
    assert await second.append(line(6)) == 17
    assert (directory / ACTIVE).read_bytes() == line(4) + line(5) + line(6)
    second.close()


async def test_recover_of_an_empty_or_missing_folder(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "new", fsync=True, total=7)
    spool.recover()
    assert (tmp_path / "new").is_dir()
    assert (spool.total, spool.spooled_points, spool.pending) == (7, 0, {})


async def test_recover_ignores_unrelated_files(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / "notes.txt").write_bytes(b"x\ny\n")
    (directory / "1.pending.jsonl").write_bytes(b"short seq\n")
    (directory / "000004.pending.jsonl").write_bytes(line(0) + line(1))
    spool = SessionSpool(directory, fsync=False)
    spool.recover()
    assert spool.pending == {4: (2, len(line(0) + line(1)))}
    assert spool.total == 2


async def test_recover_truncates_a_torn_last_line(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    first = SessionSpool(directory, fsync=True)
    for i in range(3):
        await first.append(line(i))
    first.close()
    whole = line(0) + line(1) + line(2)
    with (directory / ACTIVE).open("ab") as handle:
        handle.write(b'{"i":3,"torn')  # a crash mid-write

    second = SessionSpool(directory, fsync=True)
    second.recover()
    assert (second.active_points, second.active_bytes) == (3, len(whole))
    assert second.total == 3
    assert (directory / ACTIVE).read_bytes() == whole
    assert await second.append(line(3)) == 4
    assert (directory / ACTIVE).read_bytes() == whole + line(3)
    second.close()


async def test_recover_truncates_a_torn_pending_file_and_an_active_file_without_any_newline(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / "000001.pending.jsonl").write_bytes(line(0) + b'{"i":1')
    (directory / ACTIVE).write_bytes(b'{"i":2')
    spool = SessionSpool(directory, fsync=False)
    spool.recover()
    assert spool.pending == {1: (1, len(line(0)))}
    assert (spool.active_points, spool.active_bytes) == (0, 0)
    assert spool.total == 1
    assert spool.pending_path(1).read_bytes() == line(0)
    assert (directory / ACTIVE).read_bytes() == b""


async def test_archived_removes_the_pending_file_and_returns_its_counts(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=False)
    await spool.append(line(0))
    await spool.append(line(1))
    await spool.rotate(1)
    await spool.append(line(2))
    await spool.rotate(2)
    assert spool.archived(1) == (2, len(line(0) + line(1)))
    assert not spool.pending_path(1).exists()
    assert spool.pending_path(2).exists()
    assert spool.pending == {2: (1, len(line(2)))}
    assert spool.spooled_points == 1
    assert spool.total == 3  # archived points are still acknowledged points
    spool.close()


async def test_archived_tolerates_an_already_deleted_file(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=False)
    await spool.append(line(0))
    await spool.rotate(1)
    spool.pending_path(1).unlink()
    assert spool.archived(1) == (1, len(line(0)))
    spool.close()


async def test_write_failure_raises_spool_error_then_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=True)
    assert await spool.append(line(0)) == 1
    original = spool._write

    def full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "_write", full)
    with pytest.raises(SpoolError, match="No space left on device") as caught:
        await spool.append(line(1))
    assert isinstance(caught.value, OSError)
    # every waiter of the failed batch is told
    results = await asyncio.gather(*(spool.append(line(i)) for i in range(2, 6)), return_exceptions=True)
    assert all(isinstance(result, SpoolError) for result in results)
    assert (spool.total, spool.active_points) == (1, 1)

    monkeypatch.setattr(spool, "_write", original)
    assert await spool.append(line(9)) == 2
    assert (tmp_path / "s" / ACTIVE).read_bytes() == line(0) + line(9)
    assert spool.active_points == 2
    spool.close()


async def test_a_failed_partial_write_leaves_no_torn_bytes_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=False)
    assert await spool.append(line(0)) == 1
    original = spool._write

    def short_then_full(data: bytes) -> None:
        original(data[: len(data) // 2])  # the disk fills up half-way through the batch
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "_write", short_then_full)
    with pytest.raises(SpoolError):
        await spool.append(b'{"i":1,"padding":"xxxxxxxxxxxxxxxx"}\n')
    monkeypatch.setattr(spool, "_write", original)
    assert await spool.append(line(2)) == 2
    content = (tmp_path / "s" / ACTIVE).read_bytes()
    assert len(content) == spool.active_bytes
    assert content == line(0) + line(2)
    spool.close()


async def test_close_releases_the_file_and_keeps_the_spool(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", fsync=False)
    await spool.append(line(0))
    spool.close()
    spool.close()  # twice is harmless
    assert (tmp_path / "s" / ACTIVE).read_bytes() == line(0)
    assert await spool.append(line(1)) == 2  # reopens on the next write
    assert (tmp_path / "s" / ACTIVE).read_bytes() == line(0) + line(1)
    spool.close()


async def test_remove_deletes_the_folder(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    spool = SessionSpool(directory, fsync=True)
    await spool.append(line(0))
    await spool.rotate(1)
    await spool.append(line(1))
    assert sorted(os.listdir(directory)) == ["000001.pending.jsonl", ACTIVE]
    spool.remove()
    assert not directory.exists()
