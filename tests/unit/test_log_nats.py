"""What only the NATS log has: entries split over messages, chained publishes across nodes,
idempotent retries, the stream's configuration and the consumers it leaves (none), on the
machine's NATS server, in a stream of each test's own."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import nats
import nats.errors
import pytest
from nats.js import api
from nats.js.errors import NotFoundError

from sluicegate.clock import ManualClock
from sluicegate.engines import nats_connect
from sluicegate.engines.broker.jetstream import EXPECTED_LAST
from sluicegate.engines.log import LogState, log_from_url, nats_writer
from sluicegate.engines.log import nats as module
from sluicegate.engines.log.frames import entry_header
from sluicegate.engines.log.nats import NatsLog
from sluicegate.engines.log.nats_messages import TOTAL, Head, Kind, headers, stored
from sluicegate.engines.log.nats_writer import MSG_ID, publish
from sluicegate.errors import ConfigurationError
from tests.brokers import NATS
from tests.logs import drop_log, fresh_log_url
from tests.unit.test_log_contract import WAIT, numbers, read_all, records
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from pathlib import Path

    from nats.js import JetStreamContext

    from sluicegate.engines.log import LogEntry
    from sluicegate.engines.log.nats_messages import Stored

#: About 3 MB: more than one NATS message takes.
BIG_COUNT = 20_000


def big_records(first: int = 0) -> bytes:
    return records(first, BIG_COUNT, width=150)


def stream_of(log: NatsLog) -> str:
    return log.identity.removeprefix("nats:")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    built = fresh_log_url("nats")
    yield built
    await drop_log(built)


@pytest.fixture
async def js() -> AsyncIterator[JetStreamContext]:
    """A plain client, to look at the server the way an operator would."""
    connection = await nats.connect(NATS)
    yield connection.jetstream()
    await connection.close()


@pytest.fixture
async def nodes(url: str, clock: ManualClock) -> AsyncIterator[Callable[[], NatsLog]]:
    """``nodes()`` makes a node's log on the test's stream (opened by the caller)."""
    made: list[NatsLog] = []

    def make() -> NatsLog:
        log = NatsLog(url, clock=clock)
        made.append(log)
        return log

    yield make
    for log in made:
        await log.close()


@pytest.fixture
async def log(nodes: Callable[[], NatsLog]) -> NatsLog:
    made = nodes()
    await made.open()
    return made


async def messages_in(js: JetStreamContext, log: NatsLog, name: str) -> int:
    subject = log.subject(name)
    info = await js.stream_info(stream_of(log), subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def consumers(js: JetStreamContext, log: NatsLog) -> int:
    return (await js.stream_info(stream_of(log))).state.consumer_count


async def publish_part(js: JetStreamContext, log: NatsLog, name: str, data: bytes, part: tuple[str, int, int]) -> None:
    """Publish a part the way a writer does, after the log's last message (as a node about
    to die, or about to be interrupted, would)."""
    raw = await js.get_last_msg(stream_of(log), log.subject(name))
    last = stored(raw.seq or 0, raw.headers)
    sent = headers(Kind.PART, last.head.total, last.head, part=part)  # a part leaves the head as it was
    sent |= {MSG_ID: f"by-hand-{part[0]}-{part[1]}-{raw.seq}", EXPECTED_LAST: str(last.seq)}
    await js.publish(log.subject(name), data, headers=sent)


# -- entries over several messages ---------------------------------------------------------


async def test_an_append_of_three_megabytes_is_several_messages_and_reads_back_as_one_entry(
    log: NatsLog, js: JetStreamContext
) -> None:
    await log.create("ingest/big")
    appended = await log.append("ingest/big", big_records(), BIG_COUNT, meta=b"m")
    assert (appended.first, appended.total) == (0, BIG_COUNT)
    assert await messages_in(js, log, "ingest/big") >= 1 + 3  # the begin message, then parts of 1 MB at most
    entries = [e for e in await read_all(log, "ingest/big") if e.mark is None]
    assert [(e.first, e.count, e.meta) for e in entries] == [(0, BIG_COUNT, b"m")]
    assert entries[0].data == big_records()
    head = await log.head("ingest/big")
    assert (head.total, head.bytes) == (BIG_COUNT, len(big_records()))


async def test_parts_interrupted_by_another_node_are_neither_read_nor_counted(
    log: NatsLog, nodes: Callable[[], NatsLog], js: JetStreamContext
) -> None:
    await log.create("ingest/cut")
    frame = entry_header(100, len(records(0, 100)), 0, b"") + records(0, 100)  # parts of any size read alike
    await publish_part(js, log, "ingest/cut", frame[: len(frame) // 2], ("dead", 1, 2))  # then the node died
    other = nodes()
    await other.open()
    assert (await other.head("ingest/cut")).total == 0  # a part alone counts nothing
    first = await other.append("ingest/cut", records(0, 2), 2)
    await publish_part(js, log, "ingest/cut", frame[len(frame) // 2 :], ("dead", 2, 2))  # too late: not consecutive
    await publish_part(js, log, "ingest/cut", frame[: len(frame) // 2], ("left", 1, 2))  # incomplete at the end
    second = await log.append("ingest/cut", records(2, 1), 1)  # this node last saw the begin message
    assert (first.first, first.total, second.first, second.total) == (0, 2, 2, 3)
    for node in (log, other):
        entries = await read_all(node, "ingest/cut")
        assert numbers(entries) == [0, 1, 2]
        head = await node.head("ingest/cut")
        assert (head.total, head.bytes) == (3, len(records(0, 3)))


async def test_a_writer_interrupted_between_parts_publishes_the_whole_entry_again(
    log: NatsLog, nodes: Callable[[], NatsLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = nodes()
    await other.open()
    await log.create("ingest/again")
    interrupted: list[Stored] = []

    async def interrupting(
        js: JetStreamContext, stream: str, subject: str, payload: bytes, sent: Mapping[str, str]
    ) -> Stored:
        landed = await publish(js, stream, subject, payload, sent)
        if landed.kind is Kind.PART and not interrupted:
            interrupted.append(landed)
            assert (await other.append("ingest/again", records(0, 1), 1)).first == 0  # the parts count nothing yet
        return landed

    monkeypatch.setattr(nats_writer, "publish", interrupting)
    appended = await log.append("ingest/again", big_records(1), BIG_COUNT)
    assert interrupted
    assert (appended.first, appended.total) == (1, 1 + BIG_COUNT)
    entries = await read_all(other, "ingest/again")
    assert [(e.first, e.count) for e in entries] == [(0, 1), (1, BIG_COUNT)]
    assert b"".join(e.data for e in entries) == records(0, 1) + big_records(1)
    head = await other.head("ingest/again")
    assert (head.total, head.bytes) == (1 + BIG_COUNT, len(records(0, 1)) + len(big_records(1)))


# -- idempotent publishes ----------------------------------------------------------------------


async def test_a_publish_sent_twice_with_one_msg_id_is_stored_once(log: NatsLog, js: JetStreamContext) -> None:
    await log.create("races/dup")
    subject, stream = log.subject("races/dup"), stream_of(log)
    begin = await js.get_last_msg(stream, subject)
    one = records(0, 1)
    frame = entry_header(1, len(one), 0, b"") + one
    sent = headers(Kind.DATA, 0, Head().appended(1, len(one), 0)) | {MSG_ID: "one-id", EXPECTED_LAST: str(begin.seq)}
    landed = await publish(js, stream, subject, frame, sent)
    again = await publish(js, stream, subject, frame, sent | {TOTAL: "99"})  # the same id, after it landed
    assert again.seq == landed.seq
    assert again.head.total == 1  # what is stored under the id, read back, not what the retry says
    assert await messages_in(js, log, "races/dup") == 2  # the begin message and one data message
    assert (await log.head("races/dup")).total == 1


async def test_a_lost_acknowledgement_is_retried_and_the_records_are_stored_once(
    log: NatsLog, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.create("races/lost")
    real = log.js.publish
    lost: list[str] = []

    async def losing(subject: str, payload: bytes = b"", **options: object) -> api.PubAck:
        ack = await real(subject, payload, **options)  # type: ignore[arg-type]
        if not lost:
            lost.append(str(ack.seq))
            raise nats.errors.TimeoutError  # it landed, but the acknowledgement never came
        return ack

    monkeypatch.setattr(log.js, "publish", losing)
    appended = await log.append("races/lost", records(0, 2), 2)
    assert lost
    assert (appended.first, appended.total) == (0, 2)
    assert await messages_in(js, log, "races/lost") == 2
    assert (await log.append("races/lost", records(2, 1), 1)).first == 2
    assert numbers(await read_all(log, "races/lost")) == [0, 1, 2]


# -- trimming inside a message -------------------------------------------------------------------


async def test_trimming_an_entry_inside_a_message_keeps_the_rest_across_restarts(
    log: NatsLog, nodes: Callable[[], NatsLog], js: JetStreamContext
) -> None:
    await log.create("races/part")
    await asyncio.gather(*(log.append("races/part", records(2 * n, 2), 2, meta=b"%d" % n) for n in range(3)))
    entries = await read_all(log, "races/part")
    assert len({e.position.split(".")[0] for e in entries}) == 1  # one group commit, one message
    await log.trim("races/part", entries[0].position)
    again = nodes()
    await again.open()
    for node in (log, again):
        assert numbers(await read_all(node, "races/part")) == [2, 3, 4, 5]
        assert (await node.head("races/part")).total == 6
    await again.trim("races/part", entries[1].position)
    followed: list[LogEntry] = []
    async with asyncio.timeout(WAIT), contextlib.aclosing(log.follow("races/part", reader="t")) as follower:
        async for found in follower:
            followed.extend(found)
            break
    assert numbers(followed) == [4, 5]
    data_seq = int(entries[2].position.split(".")[0])
    assert (await js.get_msg(stream_of(log), data_seq)).seq == data_seq  # partly trimmed: still there
    await log.trim("races/part", entries[2].position)  # the last of its message: the message goes
    with pytest.raises(NotFoundError):
        await js.get_msg(stream_of(log), data_seq)
    assert await read_all(log, "races/part") == []
    assert (await again.head("races/part")).total == 6


async def test_a_follow_of_a_sealed_log_whose_seal_was_trimmed_ends(log: NatsLog) -> None:
    await log.create("races/done")
    await log.append("races/done", records(0, 2), 2)
    await log.set_state("races/done", LogState.SEALED)
    await log.trim("races/done", (await read_all(log, "races/done"))[-1].position)
    found: list[LogEntry] = []
    async with asyncio.timeout(WAIT), contextlib.aclosing(log.follow("races/done", reader="late")) as follower:
        async for entries in follower:
            found.extend(entries)
    assert found == []
    assert (await log.head("races/done")).state is LogState.SEALED


# -- the stream and its consumers -----------------------------------------------------------------


async def test_the_stream_is_configured_as_the_url_says(
    url: str, clock: ManualClock, js: JetStreamContext, tmp_path: Path
) -> None:
    stream = url.partition("stream=")[2]
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.log.>"], max_age=3600, max_msgs_per_subject=10)
    log = log_from_url(f"{url}&replicas=1", data_dir=tmp_path, fsync=True, clock=clock)
    assert isinstance(log, NatsLog)
    assert (log.identity, log.shared) == (f"nats:{stream}", True)
    await log.open()  # an earlier configuration is brought up to date
    try:
        config = (await js.stream_info(stream)).config
    finally:
        await log.close()
    assert config.subjects == [f"{stream.lower()}.log.>"]
    assert (config.storage, config.num_replicas, config.retention) == (api.StorageType.FILE, 1, "limits")
    assert (config.max_age, config.max_msgs, config.max_bytes, config.max_msgs_per_subject) == (0, -1, -1, -1)
    assert config.duplicate_window == 120


@pytest.mark.parametrize(
    "query",
    ["stream=a.b", "stream=", "stream=a%20b", "replicas=0", "replicas=6", "replicas=x", "other=1", "stream=X&mode=1"],
)
def test_bad_urls_are_refused_naming_the_setting(query: str, clock: ManualClock) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_LOG_URL"):
        NatsLog(f"{NATS}?{query}", clock=clock)


async def test_a_log_that_cannot_be_set_up_fails_at_start_up_naming_the_setting(
    url: str, clock: ManualClock, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_connect, "OPEN_TIMEOUT_SECONDS", 0.5)
    with pytest.raises(ConfigurationError, match="SLUICEGATE_LOG_URL: cannot reach NATS"):
        await NatsLog("nats://127.0.0.1:1", clock=clock).open()
    stream = url.partition("stream=")[2]
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.other"])  # a stream of someone else's
    with pytest.raises(ConfigurationError, match=f"SLUICEGATE_LOG_URL: stream {stream} holds other subjects"):
        await NatsLog(url, clock=clock).open()


async def test_a_follow_that_is_closed_or_cancelled_removes_its_consumer(log: NatsLog, js: JetStreamContext) -> None:
    await log.create("ingest/f")
    await log.append("ingest/f", records(0, 1), 1)
    follower = log.follow("ingest/f", reader="lease 7/a")
    assert numbers(await anext(follower)) == [0]
    assert await consumers(js, log) == 1
    await follower.aclose()
    assert await consumers(js, log) == 0

    found: list[LogEntry] = []

    async def follow() -> None:
        async for entries in log.follow("ingest/f", reader="lease 8"):
            found.extend(entries)

    task = asyncio.ensure_future(follow())
    await until(lambda: bool(found), "the follower's first entries")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await consumers(js, log) == 0
    async with contextlib.aclosing(log.read("ingest/f")) as reader:
        async for _ in reader:
            break  # a read left early
    assert await consumers(js, log) == 0


async def test_a_follower_whose_consumer_the_server_dropped_carries_on(
    log: NatsLog, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "FOLLOW_WAIT_SECONDS", 0.3)
    await log.create("races/lost")
    await log.append("races/lost", records(0, 1), 1)
    found: list[LogEntry] = []

    async def follow() -> None:
        async for entries in log.follow("races/lost", reader="r"):
            found.extend(entries)

    task = asyncio.ensure_future(follow())
    await until(lambda: bool(found), "the first entry")
    (consumer,) = [info.name async for info in _consumer_infos(js, log)]
    await js.delete_consumer(stream_of(log), consumer)  # as the server does to a consumer it finds idle
    await log.append("races/lost", records(1, 1), 1)
    await log.set_state("races/lost", LogState.SEALED)
    async with asyncio.timeout(WAIT):
        await task
    assert numbers(found) == [0, 1]  # each once
    assert found[-1].mark is LogState.SEALED


async def _consumer_infos(js: JetStreamContext, log: NatsLog) -> AsyncIterator[api.ConsumerInfo]:
    for info in await js.consumers_info(stream_of(log)):
        yield info
