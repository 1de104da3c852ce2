"""The upload path: an upload's body made into canonical records and appended to the session's log.

Large bodies are prepared in worker processes (``SLUICEGATE_INGEST_WORKERS``) while the
event loop keeps serving. The queue bound (``SLUICEGATE_INGEST_MAX_QUEUED_RECORDS``) is
checked against this node's view of the session: the log's count from its last append
here, and the stored count, read from the database at most once a second when the bound
is near, so it is approximate across nodes (by what they appended within that second).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from sluicegate.engines.log import LogClosed, LogError, LogNotFound, LogUnavailable
from sluicegate.errors import APIError
from sluicegate.services.ingest.archiver import batch_id
from sluicegate.services.ingest.errors import refusal, state_conflict
from sluicegate.services.ingest.models import FINAL_STATES, BatchRow, BatchState, SessionState
from sluicegate.services.ingest.prepare import prepare
from sluicegate.services.ingest.processor import log_name, meta_of

if TYPE_CHECKING:
    from sluicegate.services.ingest.service import IngestService, SessionInfo

__all__ = ["Uploads"]

log = logging.getLogger("sluicegate.ingest")

_INLINE_BELOW = 64 * 1024  # smaller bodies are prepared on the event loop: no trip to a worker
#: How long a node trusts its count of a session's stored records (the queue bound).
QUEUED_REFRESH_SECONDS = 1.0
#: Sessions whose counts a node remembers.
SEEN_SIZE = 10_000


class Uploads:
    """Takes uploads for the sessions of ``service``."""

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self._pool: ProcessPoolExecutor | None = None
        self._seen: dict[str, tuple[int, int, float]] = {}  # session -> (received, stored, when counted)

    def open(self) -> None:
        if self.service.config.workers > 0:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.service.config.workers, mp_context=context)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def forget(self, session_id: str) -> None:
        self._seen.pop(session_id, None)

    async def accept(self, info: SessionInfo, body: bytes, started: float) -> dict[str, Any]:
        """Take one upload; returns the seed's upload response once it is durable.

        Raises:
            APIError: the seed's 413 and 400 bodies; 409 when the session does not take
                data; 503 when the log cannot be reached or too much is queued; 500 when
                the records cannot be made durable.
        """
        if info.log != self.service.log.identity:
            row = await self.service.row(info.id)
            if row is not None:
                self.service.own(row)  # explains why
            raise await self._not_taking(info)
        kind = info.session_type.value
        if self._pool is not None and len(body) >= _INLINE_BELOW:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                self._pool, prepare, kind, body, self.service.config.max_batch_size, info.schema
            )
        else:
            prepared = prepare(kind, body, self.service.config.max_batch_size, info.schema)
        if not prepared.ok:
            raise refusal(prepared, batch_id(info.id, 1), self.service.config.max_batch_size)
        await self._check_queue(info, prepared.count)
        try:
            appended = await self.service.log.append(
                log_name(info.id), prepared.lines, prepared.count, meta=meta_of(prepared.min_ts, prepared.max_ts)
            )
        except (LogClosed, LogNotFound):
            raise await self._not_taking(info) from None
        except LogUnavailable:
            raise APIError.unavailable("The session log is unavailable; retry shortly") from None
        except LogError as exc:
            log.error("ingestion session %s: %s", info.id, exc)
            raise APIError.internal("Failed to store the upload") from None
        self._saw(info.id, appended.total)
        return {
            "sessionId": info.id,
            "recordsReceived": prepared.count,
            "recordsProcessed": 0,  # batches are processed after the answer
            "recordsQueued": prepared.count,
            # The batch its first record falls in when batches are cut at full size (one cut
            # early by maxBatchDelayMs moves the numbers on; the events name the real ones).
            "batchId": batch_id(info.id, appended.first // info.batch_size + 1),
            "processingTimeMs": round((self.service.clock.monotonic() - started) * 1000, 3),
            "status": SessionState.ACTIVE.value,
        }

    async def _not_taking(self, info: SessionInfo) -> APIError:
        """Why a session's log refused an upload, as the seed says it."""
        row = await self.service.row(info.id)
        state = SessionState(row.state) if row is not None else SessionState.CANCELLED
        if state in FINAL_STATES:
            return state_conflict(info.id, state, "The session is finished")
        hint = "Resume the session to upload data" if state == SessionState.PAUSED else "Start a new session"
        return state_conflict(info.id, state, "Session is not accepting data", hint)

    async def _check_queue(self, info: SessionInfo, count: int) -> None:
        """Refuse an upload when the session already has too many records waiting: the
        node's count of stored records is at most a second old, so the bound is approximate."""
        received, stored, counted = self._seen.get(info.id, (0, 0, 0.0))
        if received - stored + count <= self.service.config.max_queued_records:
            return
        if self.service.clock.monotonic() - counted > QUEUED_REFRESH_SECONDS:
            async with self.service.store.session() as db:
                stored = int(
                    await db.scalar(
                        select(func.coalesce(func.sum(BatchRow.record_count), 0)).where(
                            BatchRow.session_id == info.id, BatchRow.state == BatchState.PROCESSED.value
                        )
                    )
                    or 0
                )
            self._seen[info.id] = (received, stored, self.service.clock.monotonic())
            if received - stored + count <= self.service.config.max_queued_records:
                return
        raise APIError.unavailable("Too many records are waiting to be processed; retry shortly")

    def _saw(self, session_id: str, total: int) -> None:
        received, stored, counted = self._seen.get(session_id, (0, 0, 0.0))
        if len(self._seen) >= SEEN_SIZE and session_id not in self._seen:
            self._seen.clear()
        self._seen[session_id] = (max(received, total), stored, counted)
