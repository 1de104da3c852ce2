"""Retrieval over a chatbot's chunks: an in-memory :class:`VectorIndex` per (tenant, chatbot).

The database is the source of truth. Before each search the index reads the chatbot's
version (``read_version(..., "chatbot", chatbot_id)``); when it moved, the index loads the
chunk rows with ``seq`` above the one it had loaded, and drops the chunks of every document
that is no longer listed (a delete bumps the version but writes no chunk, so deletions are
found by comparing the chatbot's document ids, a small query). Any node therefore answers
with what every node committed, and an unchanged chatbot costs one ``SELECT`` per search.

At most ``max_indexes`` chatbots are held (least recently used dropped; it reloads on its
next search). Searches are exact cosines up to the vector index's exact limit.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from sluicegate.services.context.tables import ContextChunkRow, ContextDocumentRow
from sluicegate.services.retrieval.vectors import VectorIndex, decode_vectors
from sluicegate.services.retrieval.versions import read_version

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from sluicegate.engines.store import Store

__all__ = ["ChatbotIndexes", "RetrievedChunk"]


@dataclass(frozen=True)
class RetrievedChunk:
    """A chunk found for a query, with its cosine ``score`` (best first in a result)."""

    document_id: str
    file_name: str
    ordinal: int
    text: str
    page: int | None
    start_offset: int
    end_offset: int
    score: float


@dataclass(frozen=True, slots=True)
class _Meta:
    document_id: str
    file_name: str
    ordinal: int
    text: str
    page: int | None
    start_offset: int
    end_offset: int


@dataclass
class _Index:
    vectors: VectorIndex
    seq: int = 0
    meta: dict[int, _Meta] = field(default_factory=dict)
    by_document: dict[str, list[int]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ChatbotIndexes:
    """The vector indexes of the chatbots this node searched lately.

    Args:
        store: where the chunks are.
        dimensions: length of the embeddings.
        max_indexes: chatbots held at most.
    """

    def __init__(self, store: Store, dimensions: int, *, max_indexes: int = 256) -> None:
        self.store = store
        self.dimensions = dimensions
        self.max_indexes = max_indexes
        self._indexes: OrderedDict[tuple[int, str], _Index] = OrderedDict()

    def _index(self, tenant: int, chatbot_id: str) -> _Index:
        key = (tenant, chatbot_id)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = _Index(VectorIndex(self.dimensions))
            while len(self._indexes) > self.max_indexes:
                self._indexes.popitem(last=False)
        self._indexes.move_to_end(key)
        return index

    async def search(
        self, tenant: int, chatbot_id: str, vector: npt.NDArray[np.float32], k: int
    ) -> list[RetrievedChunk]:
        """The ``k`` chunks of the chatbot nearest to ``vector`` (a unit vector), best first.

        Raises:
            StoreUnavailable: the database failed.
        """
        index = self._index(tenant, chatbot_id)
        async with index.lock:
            await self._refresh(index, tenant, chatbot_id)
            if k <= 0 or not len(index.vectors):
                return []
            found = await asyncio.to_thread(index.vectors.search, vector, k)
        out = []
        for key, score in found:
            meta = index.meta[key]
            out.append(
                RetrievedChunk(
                    meta.document_id,
                    meta.file_name,
                    meta.ordinal,
                    meta.text,
                    meta.page,
                    meta.start_offset,
                    meta.end_offset,
                    score,
                )
            )
        return out

    async def _refresh(self, index: _Index, tenant: int, chatbot_id: str) -> None:
        async with self.store.session() as session:
            version = await read_version(session, tenant, "chatbot", chatbot_id)
            if version == index.seq:
                return
            rows = (
                await session.execute(
                    select(
                        ContextChunkRow.pk,
                        ContextChunkRow.document_id,
                        ContextDocumentRow.file_name,
                        ContextChunkRow.ordinal,
                        ContextChunkRow.text,
                        ContextChunkRow.page,
                        ContextChunkRow.start_offset,
                        ContextChunkRow.end_offset,
                        ContextChunkRow.embedding,
                    )
                    .join(ContextDocumentRow, ContextDocumentRow.id == ContextChunkRow.document_id)
                    .where(
                        ContextChunkRow.tenant == tenant,
                        ContextChunkRow.chatbot_id == chatbot_id,
                        ContextChunkRow.seq > index.seq,
                        ContextChunkRow.seq <= version,
                    )
                )
            ).all()
            live = set(
                (
                    await session.scalars(
                        select(ContextDocumentRow.id).where(
                            ContextDocumentRow.tenant == tenant, ContextDocumentRow.chatbot_id == chatbot_id
                        )
                    )
                ).all()
            )
        await asyncio.to_thread(self._apply, index, list(rows), live)
        index.seq = version

    def _apply(self, index: _Index, rows: list[Any], live: set[str]) -> None:
        for document_id in [d for d in index.by_document if d not in live]:
            keys = index.by_document.pop(document_id)
            index.vectors.remove(keys)
            for key in keys:
                index.meta.pop(key, None)
        rows = [row for row in rows if row.document_id in live]
        if not rows:
            return
        keys = [int(row.pk) for row in rows]
        matrix = decode_vectors([row.embedding for row in rows], self.dimensions)
        index.vectors.upsert(keys, matrix)
        for key, row in zip(keys, rows, strict=True):
            index.meta[key] = _Meta(
                row.document_id, row.file_name, row.ordinal, row.text, row.page, row.start_offset, row.end_offset
            )
            index.by_document.setdefault(row.document_id, []).append(key)
