"""The dead-letter queue: batches that failed every retry, listed and retried from any node.

A batch dies in its processor (:mod:`.processor`) after ``maxRetries`` failed attempts;
its row says so (``dead``, with its attempts, last error and time) and its records stay
in the session's log. Any node lists the tenant's dead batches from the rows, and any
node retries one: the row goes back to ``queued`` and the session, if it had failed for
it, back to ``completing``; the session's processor (here or on the node that holds it)
stores the batch again. Batches of cancelled sessions are not listed: a cancel drops
what was not stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from sluicegate.errors import APIError
from sluicegate.services.ingest.archiver import SessionRef
from sluicegate.services.ingest.models import BatchRow, BatchState, IngestSessionRow, SessionState

if TYPE_CHECKING:
    from sluicegate.security.identity import Identity
    from sluicegate.services.ingest.service import IngestService

__all__ = ["dead_letters", "retry_dead"]


async def dead_letters(service: IngestService, identity: Identity) -> list[dict[str, Any]]:
    """The tenant's batches in the dead-letter queue, by batch id."""
    async with service.store.session() as db:
        rows = await db.scalars(
            select(BatchRow)
            .join(IngestSessionRow, IngestSessionRow.id == BatchRow.session_id)
            .where(
                BatchRow.tenant == identity.tenant,
                BatchRow.state == BatchState.DEAD.value,
                IngestSessionRow.state != SessionState.CANCELLED.value,
                IngestSessionRow.retired.is_(False),
            )
            .order_by(BatchRow.batch_id)
        )
        return [
            {
                "batchId": row.batch_id,
                "sessionId": row.session_id,
                "recordCount": row.record_count,
                "attempts": row.attempts,
                "lastError": row.last_error,
                "failedAt": service.iso(row.finished_at) if row.finished_at else None,
            }
            for row in rows
        ]


async def retry_dead(service: IngestService, identity: Identity, batch: str) -> dict[str, Any]:
    """Put a dead batch back in the queue.

    Raises:
        APIError: 404 when no batch of the tenant's DLQ has this id.
    """
    async with service.store.session() as db:
        row = await db.scalar(
            select(BatchRow)
            .join(IngestSessionRow, IngestSessionRow.id == BatchRow.session_id)
            .where(
                BatchRow.batch_id == batch,
                BatchRow.tenant == identity.tenant,
                BatchRow.state == BatchState.DEAD.value,
                IngestSessionRow.state != SessionState.CANCELLED.value,
                IngestSessionRow.retired.is_(False),
            )
        )
        if row is None:
            raise APIError.not_found("Batch not found in the dead-letter queue", batchId=batch)
        session = await db.get(IngestSessionRow, row.session_id)
        if session is not None:
            service.own(session)
        session_id = row.session_id
        await db.execute(
            update(BatchRow)
            .where(BatchRow.id == row.id, BatchRow.state == BatchState.DEAD.value)
            .values(state=BatchState.QUEUED.value, attempts=0)
        )
    await service.transition(session_id, SessionState.FAILED, SessionState.COMPLETING, error=None, finished_at=None)
    await service.emit(SessionRef(session_id, identity.tenant), "batch-requeued", batchId=batch)
    local = service.processing.get(session_id)
    if local is not None:
        local.poke()
    else:
        await service.processors.ensure(session_id)
    return {"batchId": batch, "sessionId": session_id, "status": "queued"}
