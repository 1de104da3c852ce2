"""Reading stored records back: the segments that overlap a time range, merged in time order.

Each batch's row holds its time range, so only the segments that can hold a record of
the range are fetched; their records (each segment sorted by time as it is read) are
merged with a heap and streamed as NDJSON, ``limit`` at most. Only stored batches are
read: records still waiting in the log are not yet records of the session's store.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import TYPE_CHECKING

import orjson
import zstandard
from sqlalchemy import select

from sluicegate.services.ingest.models import BatchRow, BatchState
from sluicegate.services.ingest.validation import timestamp_us

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.engines.objects import ObjectStore
    from sluicegate.engines.store import Store

__all__ = ["records"]


async def records(
    store: Store, objects: ObjectStore, session_id: str, *, start: int | None, end: int | None, limit: int
) -> AsyncIterator[bytes]:
    """Stored records with ``start <= timestamp <= end`` (µs), in timestamp order, as NDJSON lines."""
    query = select(BatchRow).where(BatchRow.session_id == session_id, BatchRow.state == BatchState.PROCESSED.value)
    if start is not None:
        query = query.where(BatchRow.max_ts >= start)
    if end is not None:
        query = query.where(BatchRow.min_ts <= end)
    async with store.session() as db:
        rows = list((await db.scalars(query.order_by(BatchRow.min_ts, BatchRow.seq))).all())
    return _merge(objects, rows, start, end, limit)


async def _merge(
    objects: ObjectStore, rows: list[BatchRow], start: int | None, end: int | None, limit: int
) -> AsyncIterator[bytes]:
    """k-way merge of the segments overlapping the range."""
    heap: list[tuple[int, int, int, bytes]] = []
    sent = 0
    counter = 0
    for i, row in enumerate([*rows, None]):
        bound = row.min_ts if row is not None else None
        while heap and (bound is None or heap[0][0] <= bound) and sent < limit:
            _, _, _, line = heapq.heappop(heap)
            yield line + b"\n"
            sent += 1
        if sent >= limit or row is None:
            return
        assert row.segment_key is not None  # noqa: S101 -- set for every processed batch
        data = await objects.get(row.segment_key)
        text = await asyncio.to_thread(zstandard.ZstdDecompressor().decompressobj().decompress, data)
        for line in text.splitlines():
            stamp = _line_time(line)
            if (start is None or stamp >= start) and (end is None or stamp <= end):
                counter += 1
                heapq.heappush(heap, (stamp, i, counter, line))


def _line_time(line: bytes) -> int:
    try:
        return timestamp_us(orjson.loads(line).get("timestamp")) or 0
    except (orjson.JSONDecodeError, AttributeError):
        return 0
