"""The NATS log's writes: one chained publish in flight per log, the rest queued behind it.

Chain: every publish sends ``Nats-Expected-Last-Subject-Sequence``, the sequence of the
log's last message as this node knows it (kept per log in a bounded cache, so the
common case is one round trip). When another node published on the log meanwhile,
JetStream refuses it (error 10071): the writer reads the subject's last message,
recomputes its message's headers from that head and publishes again. A refusal
(:class:`~sluicegate.engines.log.LogClosed`) is decided on the stream's last message,
never on the cache alone. Marks, trims and creations are published on the same chain,
so a state change is atomic with the appends of every node.

Idempotent retries: each publish has a ``Nats-Msg-Id`` of its own (the node's random id
and a counter). One not acknowledged in time is sent again with the same id; a
``duplicate`` acknowledgement means an earlier try had landed, and the message stored
under the id is read back for its real headers (JetStream checks duplicates before the
expected sequence, within the stream's two-minute duplicate window).

Group commit: while a log's publish is in flight, its next appends queue; the next
round takes them all, packed (:func:`~sluicegate.engines.log.nats_messages.pack`) in as
few messages as fit under the server's ``max_payload``. An append larger than a message
goes out as consecutive parts; when one of its parts is refused because another node
appended in between, the whole entry is published again, from part 1, after that
node's message (readers discard parts that are not consecutive).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import nats.errors
import nats.js.errors

from sluicegate.engines.broker.jetstream import EXPECTED_LAST, WRONG_LAST_SEQUENCE
from sluicegate.engines.log import (
    Appended,
    LogClosed,
    LogEntryTooLarge,
    LogError,
    LogHead,
    LogNotFound,
    LogState,
    LogUnavailable,
)
from sluicegate.engines.log.frames import mark_frame
from sluicegate.engines.log.nats_messages import Head, Kind, Message, Split, Stored, headers, pack, stored

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from nats.js import JetStreamContext

    from sluicegate.clock import Clock

__all__ = ["MSG_ID", "Writer", "WrongLast", "publish", "translated"]

T = TypeVar("T")

_log = logging.getLogger("sluicegate.log")

MSG_ID = "Nats-Msg-Id"
#: JetStream's error code for "no message found" (as opposed to a missing stream).
NO_MESSAGE_FOUND = 10037
#: Times one publish is sent (with the same Nats-Msg-Id) when it is not acknowledged in time.
PUBLISH_TRIES = 3
#: Times a write is recomputed because other nodes keep appending to the same log.
CHAIN_ATTEMPTS = 50
#: Seconds of the random wait after the k-th refusal in a row (times k, up to 8): the
#: writers of two nodes on one log otherwise refuse each other in turn.
CONFLICT_BACKOFF_SECONDS = 0.001
#: Logs whose last message (sequence and head) a node remembers.
CACHE_SIZE = 10_000


def translate(exc: BaseException) -> BaseException:
    """The engine error for a NATS failure (other exceptions are returned as they are)."""
    if isinstance(exc, LogError):
        return exc
    if isinstance(exc, nats.errors.MaxPayloadError):
        return LogEntryTooLarge("the append is larger than the NATS server takes")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError | nats.js.errors.NoStreamResponseError):
        return LogUnavailable("JetStream is not available")
    if isinstance(exc, nats.js.errors.APIError):
        return LogError(f"JetStream refused the request (error {exc.err_code or exc.code})")
    if isinstance(exc, nats.errors.Error | OSError):
        return LogUnavailable(f"the log's NATS server did not answer ({type(exc).__name__})")
    return exc


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn NATS failures into engine errors, once, at the engine boundary."""
    try:
        yield
    except (nats.errors.Error, OSError) as exc:
        raise translate(exc) from exc


class WrongLast(Exception):
    """Another message was published on the subject after the sequence the publish expected."""


async def publish(js: JetStreamContext, stream: str, subject: str, payload: bytes, sent: Mapping[str, str]) -> Stored:
    """Publish one message (its headers carry its Nats-Msg-Id and expected last sequence)
    and return what the stream stores under that id.

    A publish not acknowledged in time is sent again with the same id; an acknowledgement
    that says ``duplicate`` means an earlier try had landed, and the message stored then
    is read back: its headers are what the log holds.

    Raises:
        WrongLast: another message was published on the subject first (JetStream error 10071).
        nats.errors.Error: the server refused or did not answer.
    """
    for attempt in range(1, PUBLISH_TRIES + 1):
        try:
            ack = await js.publish(subject, payload, headers=dict(sent), stream=stream)
        except nats.errors.TimeoutError:
            if attempt == PUBLISH_TRIES:
                raise
            continue
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise WrongLast from None
            raise
        if ack.duplicate:
            raw = await js.get_msg(stream, seq=ack.seq)
            return stored(ack.seq, raw.headers)
        return stored(ack.seq, sent)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(slots=True)
class _Append:
    records: bytes
    count: int
    meta: bytes
    done: asyncio.Future[Appended]


@dataclass(slots=True)
class _Control:
    work: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any]


@dataclass(slots=True)
class _Queue:
    """The writes waiting for one log, and the task publishing them one after the other."""

    ops: list[_Append | _Control]
    task: asyncio.Task[None] | None = None


def _settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return  # the caller went away
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Writer:
    """This node's writes to the logs of one stream.

    Args:
        stream: the stream's name.
        subject: the subject of a log.
        clock: the time appends and marks are stamped with.
    """

    def __init__(self, stream: str, subject: Callable[[str], str], clock: Clock) -> None:
        self._stream = stream
        self._subject = subject
        self._clock = clock
        self._js: JetStreamContext | None = None
        self._limit = 0  # payload bytes one message may carry
        self._node = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._known: OrderedDict[str, Stored] = OrderedDict()  # log -> its last message, as this node saw it
        self._queues: dict[str, _Queue] = {}

    def attach(self, js: JetStreamContext | None, limit: int = 0) -> None:
        """Write through ``js``, in messages of at most ``limit`` payload bytes (``None``: closed)."""
        self._js, self._limit = js, limit

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context written through.

        Raises:
            LogUnavailable: the log is not open.
        """
        if self._js is None:
            raise LogUnavailable("the log is not open")
        return self._js

    async def drain(self) -> None:
        """Wait until every write queued so far is done."""
        while self._queues:
            await asyncio.gather(*(q.task for q in list(self._queues.values()) if q.task), return_exceptions=True)

    def _now_ms(self) -> int:
        return int(self._clock.now().timestamp() * 1000)

    # -- the chain -------------------------------------------------------------------------------

    def _remember(self, log: str, message: Stored) -> None:
        self._known.pop(log, None)
        self._known[log] = message
        if len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)

    async def load(self, log: str) -> Stored:
        """The log's last message, read from the stream.

        Raises:
            LogNotFound: the subject holds no message.
        """
        try:
            raw = await self.js.get_last_msg(self._stream, self._subject(log))
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != NO_MESSAGE_FOUND:
                raise
            self._known.pop(log, None)
            raise LogNotFound(f"no log named {log}") from None
        message = stored(raw.seq or 0, raw.headers)
        self._remember(log, message)
        return message

    async def _put(self, log: str, payload: bytes, built: dict[str, str], expected: int) -> Stored:
        """Publish one message of ``log`` after sequence ``expected``, and remember it."""
        built[MSG_ID] = f"sg-{self._node}-{next(self._ids)}"
        built[EXPECTED_LAST] = str(expected)
        try:
            landed = await publish(self.js, self._stream, self._subject(log), payload, built)
        except WrongLast:
            raise
        except BaseException:
            self._known.pop(log, None)  # it may have landed: read the log's end before the next write
            raise
        self._remember(log, landed)
        return landed

    async def _chain(self, log: str, step: Callable[[Stored], Awaitable[T]], *, fresh: bool = False) -> T:
        """Run ``step`` after the log's last message, and again after the new last one each
        time another node's message landed first."""
        last = None if fresh else self._known.get(log)
        if last is None:
            last, fresh = await self.load(log), True
        else:
            self._known.move_to_end(log)
        for attempt in range(CHAIN_ATTEMPTS):
            try:
                return await step(last)
            except WrongLast:
                if attempt:  # nodes taking turns: let the other's publish land before trying again
                    await asyncio.sleep(random.uniform(0, CONFLICT_BACKOFF_SECONDS * min(attempt, 8)))  # noqa: S311
            except LogClosed:
                if fresh:
                    raise
            last, fresh = await self.load(log), True  # refuse only on what the stream says
        _log.warning("gave up appending to the log %s after %d tries: other nodes kept appending", log, CHAIN_ATTEMPTS)
        raise LogUnavailable(f"too many nodes are writing to the log {log} at once; try again")

    # -- the queue ---------------------------------------------------------------------------------

    def _queue(self, log: str, op: _Append | _Control) -> None:
        self.js  # noqa: B018 (refuse before queueing when the log is not open)
        queue = self._queues.get(log)
        if queue is None:
            queue = self._queues[log] = _Queue([op])
            queue.task = asyncio.create_task(self._commit(log, queue))
        else:
            queue.ops.append(op)

    async def _submit(self, log: str, work: Callable[[], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(log, _Control(work, future))
        return await future

    async def _commit(self, log: str, queue: _Queue) -> None:
        ops: list[_Append | _Control] = []
        try:
            while queue.ops:
                ops, queue.ops = queue.ops, []
                appends: list[_Append] = []
                for op in ops:
                    if isinstance(op, _Append):
                        appends.append(op)
                        continue
                    if appends:
                        await self._write(log, appends)
                        appends = []
                    try:
                        _settle(op.done, await op.work())
                    except Exception as exc:
                        _settle(op.done, error=translate(exc))
                if appends:
                    await self._write(log, appends)
        finally:
            del self._queues[log]
            for op in ops + queue.ops:  # anything left, if this task was cancelled
                _settle(op.done, error=LogUnavailable("the log was closed"))

    async def _write(self, log: str, appends: list[_Append]) -> None:
        """Publish queued appends in as few messages as they fit, in order."""
        at_ms = self._now_ms()
        for unit in pack([(a.records, a.count, a.meta) for a in appends], self._limit, at_ms):
            if isinstance(unit, Message):
                members = [(appends[i], offset) for i, offset in unit.members]
            else:
                members = [(appends[unit.index], 0)]
            try:
                first, total = await self._chain(log, functools.partial(self._publish, log, unit, at_ms))
            except Exception as exc:
                error = translate(exc)
                for append, _ in members:
                    _settle(append.done, error=error)
                continue
            for append, offset in members:
                _settle(append.done, Appended(first + offset, total))

    async def _publish(self, log: str, unit: Message | Split, at_ms: int, last: Stored) -> tuple[int, int]:
        """Publish a data message, or every part of a split entry, after ``last``."""
        head = last.head
        if head.state is not LogState.OPEN:
            raise LogClosed(log, head.state)
        after = head.appended(unit.count, unit.size, at_ms)
        if isinstance(unit, Message):
            landed = await self._put(log, unit.payload, headers(Kind.DATA, head.total, after), last.seq)
            return landed.first, landed.head.total
        entry, n = f"{self._node}-{next(self._ids)}", len(unit.chunks)
        for i, chunk in enumerate(unit.chunks, 1):  # a refused part starts the entry again after the new last message
            part = headers(Kind.PART, head.total, after if i == n else head, part=(entry, i, n))
            last = await self._put(log, chunk, part, last.seq)
        return last.first, last.head.total

    # -- the writes ----------------------------------------------------------------------------------

    async def create(self, log: str) -> None:
        """Publish the log's ``begin`` message, unless the subject holds messages already."""

        async def begin() -> None:
            with contextlib.suppress(WrongLast):  # the subject has messages: the log exists
                await self._put(log, b"", headers(Kind.BEGIN, 0, Head()), 0)

        await self._submit(log, begin)

    async def append(self, log: str, records: bytes, count: int, meta: bytes) -> Appended:
        """Queue an append; returns once JetStream acknowledged the message holding it."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue(log, _Append(records, count, meta, future))
        return await future

    async def set_state(self, log: str, state: LogState) -> LogHead:
        """Publish a mark, unless the log is in ``state`` already."""

        async def mark(last: Stored) -> LogHead:
            head = last.head
            if head.state is state:
                return head.public()
            if head.state is LogState.SEALED:
                raise LogClosed(log, head.state)
            frame = mark_frame(state, self._now_ms())
            landed = await self._put(log, frame, headers(Kind.MARK, head.total, replace(head, state=state)), last.seq)
            return landed.head.public()

        return await self._submit(log, lambda: self._chain(log, mark, fresh=True))

    async def trim(self, log: str, point: tuple[int, int]) -> None:
        """Publish the trim point ``point`` (unless trimmed that far), then purge before it.

        Raises:
            LogError: a point past the log's end.
        """

        async def step(last: Stored) -> bool:
            if point <= last.head.trim:
                return False
            if point[0] > last.seq + 1:
                raise LogError("invalid log position: past the log's end")
            await self._put(log, b"", headers(Kind.TRIM, last.head.total, replace(last.head, trim=point)), last.seq)
            return True

        async def work() -> None:
            # The trim message stays after what is purged: the subject keeps a last message.
            if await self._chain(log, step, fresh=True) and point[0] > 1:
                await self.js.purge_stream(self._stream, subject=self._subject(log), seq=point[0])

        await self._submit(log, work)

    async def delete(self, log: str) -> None:
        """Purge the log's subject."""

        async def work() -> None:
            await self.js.purge_stream(self._stream, subject=self._subject(log))
            self._known.pop(log, None)

        await self._submit(log, work)
