"""SpoolLog on real files: group commits, crashes, failed writes, one process, restarts."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from sluicegate.clock import ManualClock
from sluicegate.engines.log import (
    LogClosed,
    LogEntry,
    LogEntryTooLarge,
    LogError,
    LogNotFound,
    LogState,
    LogUnavailable,
    spool_state,
)
from sluicegate.engines.log import spool as spool_module
from sluicegate.engines.log import spool_files as files
from sluicegate.engines.log.frames import entry_header
from sluicegate.engines.log.spool import SpoolLog
from sluicegate.errors import ConfigurationError
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path


def line(i: int) -> bytes:
    return b'{"i":%d}\n' % i


def lines(first: int, count: int) -> bytes:
    return b"".join(line(i) for i in range(first, first + count))


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
def fsync(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def spools(tmp_path: Path, fsync: bool, clock: ManualClock) -> AsyncIterator[Callable[..., SpoolLog]]:
    """``spools()`` makes a SpoolLog on the test's folder (a restart is a new one); all are closed after."""
    made: list[SpoolLog] = []

    def make(**options: int) -> SpoolLog:
        log = SpoolLog(tmp_path / "log", fsync=fsync, clock=clock, **options)
        made.append(log)
        return log

    yield make
    for log in made:
        await log.close()


@pytest.fixture
async def spool(spools: Callable[..., SpoolLog]) -> SpoolLog:
    log = spools()
    await log.open()
    return log


def folder(tmp_path: Path, name: str) -> Path:
    return tmp_path / "log" / "logs" / f"{name}{files.SUFFIX}"


def segments(tmp_path: Path, name: str) -> list[Path]:
    return sorted(folder(tmp_path, name).glob("*.seg"))


def counting_writes(spool: SpoolLog, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Wrap the instance's ``_write``; returns the list of every group commit written."""
    writes: list[bytes] = []
    original = spool._write

    def counted(log: spool_state.Log, buffers: list[bytes]) -> None:
        writes.append(b"".join(buffers))
        original(log, buffers)

    monkeypatch.setattr(spool, "_write", counted)
    return writes


async def read_all(spool: SpoolLog, name: str, start: int = 0) -> list[LogEntry]:
    return [entry async for entries in spool.read(name, start=start) for entry in entries]


def records_of(entries: list[LogEntry]) -> bytes:
    return b"".join(entry.data for entry in entries if entry.mark is None)


async def restart(spool: SpoolLog, spools: Callable[..., SpoolLog]) -> SpoolLog:
    await spool.close()
    again = spools()
    await again.open()
    return again


# -- group commit ----------------------------------------------------------------------------


async def test_concurrent_appends_are_group_committed(spool: SpoolLog, monkeypatch: pytest.MonkeyPatch) -> None:
    await spool.create("races/many")
    writes = counting_writes(spool, monkeypatch)
    appended = await asyncio.gather(*(spool.append("races/many", line(i), 1) for i in range(200)))
    assert sorted(a.first for a in appended) == list(range(200))
    assert 1 <= len(writes) <= 20  # far fewer writes (and fdatasyncs) than appends
    entries = await read_all(spool, "races/many")
    assert len(entries) == len(writes)  # appends without meta that share a write share an entry
    by_index = {a.first: i for i, a in enumerate(appended)}
    assert records_of(entries) == b"".join(line(by_index[n]) for n in range(200))
    assert all(a.total >= a.first + 1 for a in appended)


async def test_appends_arriving_during_a_write_share_the_next_one(
    spool: SpoolLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.create("races/during")
    writes = counting_writes(spool, monkeypatch)
    first = asyncio.ensure_future(spool.append("races/during", line(0), 1))
    await until(lambda: len(writes) == 1, "the first write")
    rest = [
        asyncio.ensure_future(spool.append("races/during", line(i), 1, meta=b"m%d" % (i % 2))) for i in range(1, 51)
    ]
    assert (await first).first == 0
    assert sorted(a.first for a in await asyncio.gather(*rest)) == list(range(1, 51))
    assert len(writes) <= 3
    entries = await read_all(spool, "races/during")
    assert len(entries) == 51  # each meta differs from the one before it: one entry each
    assert [e.meta for e in entries[1:]] == [b"m%d" % (i % 2) for i in range(1, 51)]


async def test_merged_appends_keep_their_own_indices(spool: SpoolLog) -> None:
    await spool.create("ingest/merge")
    appended = await asyncio.gather(*(spool.append("ingest/merge", lines(10 * n, n + 1), n + 1) for n in range(5)))
    assert [(a.first, a.total) for a in appended] == [(0, 15), (1, 15), (3, 15), (6, 15), (10, 15)]
    (entry,) = await read_all(spool, "ingest/merge")
    assert (entry.first, entry.count) == (0, 15)


# -- durability: crashes, failed writes ---------------------------------------------------------


async def test_a_torn_tail_is_cut_off_on_the_next_open_and_appends_continue(
    spool: SpoolLog, spools: Callable[..., SpoolLog], tmp_path: Path
) -> None:
    await spool.create("ingest/torn")
    await spool.append("ingest/torn", lines(0, 3), 3)
    await spool.close()
    (segment,) = segments(tmp_path, "ingest/torn")
    whole = segment.read_bytes()
    with segment.open("ab") as handle:  # a crash in the middle of a group commit
        handle.write(entry_header(2, len(lines(3, 2)), 1, b"") + lines(3, 2)[:5])

    again = spools()
    await again.open()
    head = await again.head("ingest/torn")
    assert (head.total, head.bytes) == (3, len(lines(0, 3)))
    assert segment.read_bytes() == whole
    assert (await again.append("ingest/torn", line(3), 1)).first == 3
    assert records_of(await read_all(again, "ingest/torn")) == lines(0, 4)


@pytest.mark.parametrize("tail", [b"@1 9", b"\0" * 4096], ids=["torn-header", "zeros"])
async def test_a_tail_without_a_whole_frame_is_cut_off(
    spool: SpoolLog, spools: Callable[..., SpoolLog], tmp_path: Path, tail: bytes
) -> None:
    await spool.create("races/tail")
    await spool.append("races/tail", line(0), 1)
    await spool.close()
    (segment,) = segments(tmp_path, "races/tail")
    whole = segment.read_bytes()
    segment.write_bytes(whole + tail)
    again = spools()
    await again.open()
    assert (await again.append("races/tail", line(1), 1)).first == 1
    assert segment.read_bytes().startswith(whole)
    assert records_of(await read_all(again, "races/tail")) == lines(0, 2)


async def test_a_failed_write_refuses_its_whole_group_and_the_next_append_works(
    spool: SpoolLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.create("ingest/full")
    await spool.append("ingest/full", line(0), 1)
    (segment,) = segments(tmp_path, "ingest/full")
    before = segment.read_bytes()
    original = spool._write

    def full(log: spool_state.Log, buffers: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(segment))

    monkeypatch.setattr(spool, "_write", full)
    results = await asyncio.gather(
        *(spool.append("ingest/full", line(i), 1) for i in range(1, 6)), return_exceptions=True
    )
    assert all(isinstance(r, LogError) for r in results)
    assert "No space left on device" in str(results[0])
    assert str(tmp_path) not in str(results[0])  # no paths in errors clients may see
    assert segment.read_bytes() == before
    assert (await spool.head("ingest/full")).total == 1

    monkeypatch.setattr(spool, "_write", original)
    assert (await spool.append("ingest/full", line(9), 1)).first == 1
    assert records_of(await read_all(spool, "ingest/full")) == line(0) + line(9)


async def test_a_write_failing_half_way_leaves_no_torn_bytes_behind(
    spool: SpoolLog, spools: Callable[..., SpoolLog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.create("ingest/half")
    await spool.append("ingest/half", line(0), 1)
    (segment,) = segments(tmp_path, "ingest/half")
    before = segment.read_bytes()
    real_writev = os.writev
    calls: list[int] = []

    def short_then_full(fd: int, buffers: list[bytes]) -> int:
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        data = b"".join(buffers)
        return real_writev(fd, [data[: len(data) // 2]])  # the disk fills up half-way through

    monkeypatch.setattr(os, "writev", short_then_full)
    with pytest.raises(LogError, match="No space left"):
        await spool.append("ingest/half", lines(1, 50), 50)
    monkeypatch.setattr(os, "writev", real_writev)
    assert len(calls) == 2
    assert segment.read_bytes() == before
    assert (await spool.append("ingest/half", line(2), 1)).first == 1
    again = await restart(spool, spools)
    assert records_of(await read_all(again, "ingest/half")) == line(0) + line(2)


async def test_short_writes_are_carried_on_where_they_stopped(
    spool: SpoolLog, spools: Callable[..., SpoolLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.create("ingest/short")
    real_writev = os.writev

    def seven_bytes_at_a_time(fd: int, buffers: list[bytes]) -> int:
        return real_writev(fd, [b"".join(bytes(b) for b in buffers)[:7]])

    monkeypatch.setattr(os, "writev", seven_bytes_at_a_time)
    appended = await asyncio.gather(
        *(spool.append("ingest/short", lines(3 * n, 3), 3, meta=b"%d" % (n % 3)) for n in range(10))
    )
    monkeypatch.setattr(os, "writev", real_writev)
    assert sorted(a.first for a in appended) == list(range(0, 30, 3))
    again = await restart(spool, spools)
    assert records_of(await read_all(again, "ingest/short")) == lines(0, 30)


async def test_a_failed_mark_puts_the_state_back_and_refuses_what_counted_on_it(
    spool: SpoolLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.create("races/mark")
    await spool.set_state("races/mark", LogState.PAUSED)
    original = spool._write
    release = threading.Event()
    writes: list[bytes] = []

    def failing(log: spool_state.Log, buffers: list[bytes]) -> None:
        writes.append(b"".join(buffers))
        release.wait(10)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool, "_write", failing)
    reopen = asyncio.ensure_future(spool.set_state("races/mark", LogState.OPEN))
    await until(lambda: len(writes) == 1, "the mark's write")
    accepted = asyncio.ensure_future(spool.append("races/mark", line(0), 1))  # the reopened log takes it
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(LogError, match="Input/output error"):
        await reopen
    with pytest.raises(LogError, match="Input/output error"):
        await accepted
    assert len(writes) == 1  # the append behind the mark was never written
    assert (await spool.head("races/mark")).state == LogState.PAUSED
    monkeypatch.setattr(spool, "_write", original)
    with pytest.raises(LogClosed):
        await spool.append("races/mark", line(1), 1)
    await spool.set_state("races/mark", LogState.OPEN)
    assert (await spool.append("races/mark", line(1), 1)).first == 0


async def test_set_state_refuses_appends_at_once_and_lands_after_those_queued(spool: SpoolLog) -> None:
    await spool.create("races/order")
    queued = [asyncio.ensure_future(spool.append("races/order", line(i), 1)) for i in range(10)]
    await asyncio.sleep(0)
    sealing = asyncio.ensure_future(spool.set_state("races/order", LogState.SEALED))
    await asyncio.sleep(0)
    with pytest.raises(LogClosed):  # called after set_state, before it returned
        await spool.append("races/order", line(10), 1)
    sealed = await sealing
    assert sealed.total == 10
    assert sorted(a.first for a in await asyncio.gather(*queued)) == list(range(10))
    entries = await read_all(spool, "races/order")
    assert entries[-1].mark == LogState.SEALED
    assert entries[-1].first == 10


# -- one process -----------------------------------------------------------------------------------


async def test_a_second_spool_on_the_folder_is_refused_naming_the_setting(
    spool: SpoolLog, spools: Callable[..., SpoolLog]
) -> None:
    other = spools()
    with pytest.raises(ConfigurationError) as refused:
        await other.open()
    message = str(refused.value)
    assert "one process" in message
    assert "SLUICEGATE_LOG_URL=redis://" in message
    assert "nats://" in message
    await spool.close()
    await other.open()  # once released, the folder can be taken
    await other.check()


async def test_a_second_process_is_refused(spool: SpoolLog, tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from sluicegate.clock import SystemClock\n"
        "from sluicegate.engines.log.spool import SpoolLog\n"
        "from sluicegate.errors import ConfigurationError\n"
        "try:\n"
        "    asyncio.run(SpoolLog(Path(sys.argv[1]), fsync=False, clock=SystemClock()).open())\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(tmp_path / "log")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "belongs to one process" in done.stdout


async def test_files_are_private(spool: SpoolLog, tmp_path: Path) -> None:
    await spool.create("ingest/private")
    await spool.append("ingest/private", line(0), 1)
    entries = await read_all(spool, "ingest/private")
    await spool.trim("ingest/private", entries[0].position)
    await spool.append("ingest/private", line(1), 1)
    paths = list((tmp_path / "log").rglob("*"))
    assert {p.name for p in paths} >= {"id", "lock", "trim"}
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))
    assert (await spool.head("ingest/private")).total == 2


async def test_the_identity_is_made_once_and_kept(spool: SpoolLog, spools: Callable[..., SpoolLog]) -> None:
    identity = spool.identity
    assert identity.startswith("spool:") and len(identity) > len("spool:") + 16
    assert not spool.shared
    again = await restart(spool, spools)
    assert again.identity == identity


# -- restarts, trims, segments ---------------------------------------------------------------------


@pytest.mark.parametrize("roll_trimmed", [1 << 20, 1], ids=["kept-until-full", "rolled"])
async def test_counters_and_state_survive_a_restart_after_everything_was_trimmed(
    spools: Callable[..., SpoolLog], clock: ManualClock, tmp_path: Path, roll_trimmed: int
) -> None:
    spool = spools(roll_trimmed=roll_trimmed)
    await spool.open()
    await spool.create("races/gone")
    await spool.append("races/gone", lines(0, 4), 4)
    await clock.advance(1.5)
    await spool.append("races/gone", lines(4, 2), 2)
    stamp = clock.now().timestamp()
    await clock.advance(60)
    await spool.set_state("races/gone", LogState.PAUSED)
    entries = await read_all(spool, "races/gone")
    await spool.trim("races/gone", entries[-1].position)
    kept = b"".join(p.read_bytes() for p in segments(tmp_path, "races/gone"))
    if roll_trimmed == 1:  # a segment full enough is replaced: nothing kept on disk
        assert kept == b""
    else:  # a small one stays until it fills (no new file and no fsync for each trim), unread
        assert lines(4, 2) in kept

    again = await restart(spool, spools)
    head = await again.head("races/gone")
    assert (head.total, head.bytes, head.state) == (6, len(lines(0, 6)), LogState.PAUSED)
    assert head.appended_at == pytest.approx(stamp, abs=0.002)
    assert await read_all(again, "races/gone") == []
    with pytest.raises(LogClosed):
        await again.append("races/gone", line(6), 1)
    await again.set_state("races/gone", LogState.OPEN)
    assert (await again.append("races/gone", line(6), 1)).first == 6


async def test_a_trim_inside_a_segment_rewrites_nothing_and_survives_a_restart(
    spool: SpoolLog, spools: Callable[..., SpoolLog], tmp_path: Path
) -> None:
    await spool.create("ingest/part")
    for n in range(0, 9, 3):
        await spool.append("ingest/part", lines(n, 3), 3, meta=b"%d" % n)
    (segment,) = segments(tmp_path, "ingest/part")
    content, inode = segment.read_bytes(), segment.stat().st_ino
    entries = await read_all(spool, "ingest/part")
    await spool.trim("ingest/part", entries[1].position)
    assert (segment.read_bytes(), segment.stat().st_ino) == (content, inode)
    assert [e.first for e in await read_all(spool, "ingest/part")] == [6]

    again = await restart(spool, spools)
    assert [(e.first, e.meta) for e in await read_all(again, "ingest/part")] == [(6, b"6")]
    assert (await again.append("ingest/part", line(9), 1)).first == 9
    assert [e.first for e in await read_all(again, "ingest/part", start=7)] == [6, 9]


async def test_segments_rotate_and_trims_delete_them_whole(spools: Callable[..., SpoolLog], tmp_path: Path) -> None:
    spool = spools(segment_bytes=200)
    await spool.open()
    await spool.create("races/rot")
    for n in range(0, 60, 5):
        await spool.append("races/rot", lines(n, 5), 5)
    assert len(segments(tmp_path, "races/rot")) > 3
    entries = await read_all(spool, "races/rot")
    assert records_of(entries) == lines(0, 60)
    assert next(e.first for e in await read_all(spool, "races/rot", start=42)) == 40
    middle = next(e for e in entries if e.first == 30)
    kept_before = len(segments(tmp_path, "races/rot"))
    await spool.trim("races/rot", middle.position)
    assert len(segments(tmp_path, "races/rot")) < kept_before
    assert records_of(await read_all(spool, "races/rot")) == lines(35, 25)

    again = await restart(spool, spools)
    assert records_of(await read_all(again, "races/rot")) == lines(35, 25)
    assert (await again.head("races/rot")).total == 60
    assert (await again.append("races/rot", line(60), 1)).first == 60


async def test_unrelated_files_in_a_log_folder_are_ignored(
    spool: SpoolLog, spools: Callable[..., SpoolLog], tmp_path: Path
) -> None:
    await spool.create("ingest/notes")
    await spool.append("ingest/notes", line(0), 1)
    (folder(tmp_path, "ingest/notes") / "notes.txt").write_bytes(b"x\n")
    (folder(tmp_path, "ingest/notes") / "1_0_0_none_open.seg").write_bytes(b"not a segment name")
    again = await restart(spool, spools)
    assert records_of(await read_all(again, "ingest/notes")) == line(0)


async def test_the_seal_mark_is_never_trimmed(spool: SpoolLog, spools: Callable[..., SpoolLog]) -> None:
    await spool.create("races/sealed")
    await spool.append("races/sealed", lines(0, 3), 3)
    await spool.set_state("races/sealed", LogState.SEALED)
    entries = await read_all(spool, "races/sealed")
    await spool.trim("races/sealed", entries[-1].position)

    async def only_the_seal_is_left(log: SpoolLog) -> None:
        (kept,) = await read_all(log, "races/sealed")
        assert (kept.mark, kept.first) == (LogState.SEALED, 3)
        async with asyncio.timeout(10):
            followed = [e async for entries in log.follow("races/sealed", reader="r") for e in entries]
        assert followed == [kept]  # and the follower ended
        assert (await log.head("races/sealed")).total == 3

    await only_the_seal_is_left(spool)
    await only_the_seal_is_left(await restart(spool, spools))


async def test_fsync_can_be_decided_by_the_start_of_a_log_name(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SpoolLog(tmp_path / "log", fsync={"races/": False, "races/slow/": True}, clock=clock)
    await spool.open()
    try:
        for name in ("races/fast", "races/slow/x", "ingest/y"):
            await spool.create(name)
        synced: list[int] = []
        real = os.fdatasync

        def counted(fd: int) -> None:
            synced.append(fd)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", counted)
        await spool.append("races/fast", line(0), 1)
        assert synced == []
        await spool.append("races/slow/x", line(0), 1)
        assert len(synced) == 1  # the longest prefix decides
        await spool.append("ingest/y", line(0), 1)
        assert len(synced) == 2  # a log no prefix names is forced
    finally:
        await spool.close()


# -- names and folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a//b", "/a", "a/", "a/../b", "..", "a/./b", "a b", "a+log", "é", "x" * 121])
async def test_names_that_are_not_plain_paths_are_refused(spool: SpoolLog, name: str) -> None:
    with pytest.raises(ValueError, match="not a log name"):
        await spool.create(name)
    with pytest.raises(ValueError, match="not a log name"):
        await spool.delete(name)


async def test_nested_names_are_separate_logs(spool: SpoolLog, tmp_path: Path) -> None:
    await spool.create("races/a")
    await spool.create("races/a/b")
    await spool.append("races/a", line(0), 1)
    await spool.append("races/a/b", line(1), 1)
    await spool.delete("races/a")
    assert not folder(tmp_path, "races/a").exists()
    assert records_of(await read_all(spool, "races/a/b")) == line(1)
    with pytest.raises(LogNotFound):
        await spool.head("races/a")


async def test_deleting_removes_the_folder_and_ends_its_followers(spool: SpoolLog, tmp_path: Path) -> None:
    await spool.create("ingest/del")
    await spool.append("ingest/del", line(0), 1)
    seen: list[LogEntry] = []

    async def follow() -> None:
        async for entries in spool.follow("ingest/del", reader="r"):
            seen.extend(entries)

    follower = asyncio.ensure_future(follow())
    await until(lambda: len(seen) == 1, "the first entry")
    await spool.delete("ingest/del")
    with pytest.raises(LogNotFound):
        await follower
    assert not folder(tmp_path, "ingest/del").exists()
    assert list((tmp_path / "log" / "trash").iterdir()) == []
    with pytest.raises(LogNotFound):
        await spool.append("ingest/del", line(1), 1)


# -- followers and files ----------------------------------------------------------------------------


async def test_a_follower_gets_new_entries_from_memory(spool: SpoolLog, monkeypatch: pytest.MonkeyPatch) -> None:
    await spool.create("races/mem")
    await spool.append("races/mem", line(0), 1)
    reads: list[int] = []
    original = files.read_chunk

    def counted(*args: int | None) -> tuple[list[LogEntry], int, int, bool]:
        reads.append(1)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "read_chunk", counted)
    seen: list[LogEntry] = []

    async def follow() -> None:
        async for entries in spool.follow("races/mem", reader="r"):
            seen.extend(entries)

    follower = asyncio.ensure_future(follow())
    await until(lambda: len(seen) == 1, "what was there")
    caught_up = len(reads)
    for i in range(1, 20):
        await spool.append("races/mem", line(i), 1)
    await spool.set_state("races/mem", LogState.SEALED)
    async with asyncio.timeout(10):
        await follower
    assert len(reads) == caught_up  # nothing read back from the files
    assert records_of(seen) == lines(0, 20)
    assert [e.position for e in seen] == [e.position for e in await read_all(spool, "races/mem")]


async def test_a_follower_too_far_behind_reads_the_files_again(
    spool: SpoolLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_state, "FOLLOWER_BACKLOG", 100)
    await spool.create("ingest/slow")
    follower = spool.follow("ingest/slow", reader="r")
    seen: list[LogEntry] = []
    try:
        first = asyncio.ensure_future(anext(follower))
        await asyncio.sleep(0)
        await spool.append("ingest/slow", line(0), 1)
        seen.extend(await first)
        for n in range(1, 40, 3):  # no one reads meanwhile: far more than 100 bytes wait
            await spool.append("ingest/slow", lines(n, 3), 3, meta=b"%d" % n)
        await spool.set_state("ingest/slow", LogState.SEALED)
        async with asyncio.timeout(10):
            async for entries in follower:
                seen.extend(entries)
    finally:
        await follower.aclose()
    assert records_of(seen) == lines(0, 40)
    assert seen[-1].mark == LogState.SEALED


async def test_a_closed_follower_is_forgotten(spool: SpoolLog) -> None:
    await spool.create("races/leave")
    await spool.append("races/leave", line(0), 1)
    follower = spool.follow("races/leave", reader="r")
    assert records_of(await anext(follower)) == line(0)
    assert len(spool._logs["races/leave"].followers) == 1
    await follower.aclose()
    assert spool._logs["races/leave"].followers == set()
    await spool.append("races/leave", line(1), 1)


async def test_an_append_larger_than_the_spool_takes_is_refused(
    spool: SpoolLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "MAX_APPEND", 20)
    await spool.create("ingest/large")
    with pytest.raises(LogEntryTooLarge):
        await spool.append("ingest/large", lines(0, 3), 3)
    assert (await spool.head("ingest/large")).total == 0


async def test_closing_the_spool_ends_followers(spool: SpoolLog) -> None:
    await spool.create("races/closing")
    started = asyncio.Event()

    async def follow() -> None:
        started.set()
        async for _ in spool.follow("races/closing", reader="r"):
            pass

    follower = asyncio.ensure_future(follow())
    await started.wait()
    await until(lambda: bool(spool._logs["races/closing"].followers), "the follower")
    await spool.close()
    with pytest.raises(LogUnavailable):
        await follower
    with pytest.raises(LogUnavailable):
        await spool.head("races/closing")


async def test_idle_logs_give_their_files_back(spool: SpoolLog) -> None:
    spool._files.limit = 4
    for n in range(12):
        await spool.create(f"races/s{n}")
        await spool.append(f"races/s{n}", line(n), 1)
    assert sum(log.fd is not None for log in spool._logs.values()) <= 5
    for n in range(12):  # a closed file opens again on the next write
        assert (await spool.append(f"races/s{n}", line(n), 1)).first == 1


async def test_check_needs_the_folder(spool: SpoolLog, tmp_path: Path) -> None:
    await spool.check()
    os.rename(tmp_path / "log" / "logs", tmp_path / "elsewhere")
    with pytest.raises(LogError, match="not writable"):
        await spool.check()
    os.rename(tmp_path / "elsewhere", tmp_path / "log" / "logs")


async def test_a_spool_that_is_not_open_refuses_work(spools: Callable[..., SpoolLog]) -> None:
    spool = spools()
    with pytest.raises(LogUnavailable):
        await spool.create("races/x")
    with pytest.raises(LogUnavailable):
        await spool.check()
    await spool.close()
