"""Chatbot context: uploaded documents, chunked and embedded (``/api/context/*``).

An upload is an async generator of the seed's events (:meth:`ContextService.upload`):
``validation`` (SHA-256, type sniffed from the bytes), ``extraction``, ``chunking``,
``embedding`` (one event per batch of chunks) and ``storing`` progress, then ``complete``.
The work that blocks (hashing, sniffing, parsing, tokenizing) runs in a thread; inference
runs in the embedder's own. The document row and all its chunks are written in one
transaction after every chunk is embedded, so a failed or abandoned upload stores nothing.

The same bytes uploaded again for the same chatbot are found by their SHA-256 before any
work, and if two uploads race, by the unique index on ``(tenant, chatbot_id,
content_hash)``: either way ``complete`` names the existing document with
``duplicate: true``. ``progress.percent`` is the upload's overall progress (0-100).

Retrieval for the chat routes: :meth:`ContextService.retrieve` (cosine over the
chatbot's chunk embeddings, :mod:`sluicegate.services.context.index`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select

from sluicegate.engines.store import StoreConflict
from sluicegate.errors import APIError
from sluicegate.providers.tokencounts import TokenCountError, count_tokens, parse_token_counts
from sluicegate.services.context.chunking import Chunk, chunk_text
from sluicegate.services.context.extract import Extracted, extract
from sluicegate.services.context.index import ChatbotIndexes, RetrievedChunk
from sluicegate.services.context.sniff import Sniffed, sniff
from sluicegate.services.context.tables import ContextChunkRow, ContextDocumentRow
from sluicegate.services.retrieval.vectors import encode_vector
from sluicegate.services.retrieval.versions import bump_version
from sluicegate.streaming.events import progress

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import numpy as np
    import numpy.typing as npt

    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.streaming.events import NamedEvent

__all__ = ["ContextService", "RetrievedChunk", "UploadRequest"]

_CHATBOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
#: The smallest ``chunkSize`` accepted (tokens).
MIN_CHUNK_TOKENS = 16
#: Chunks per ``embedding`` progress event (one inference call each).
EMBED_BATCH = 32
# Overall ``percent`` reached at the end of each step.
_PERCENT = {"validation": 5, "extraction": 15, "chunking": 25, "embedding": 90, "storing": 95}


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """A checked upload: the file's bytes and the form's fields."""

    tenant: int
    chatbot_id: str
    file_name: str
    data: bytes
    chunk_tokens: int
    chunk_overlap: int
    #: Encodings to count the document's text in besides the model's (``tokenCounts``).
    token_counts: tuple[str, ...] = ()


def _document(row: ContextDocumentRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "chatbotId": row.chatbot_id,
        "fileName": row.file_name,
        "contentType": row.content_type,
        "size": row.size_bytes,
        "chunks": row.chunks,
        "tokens": row.tokens,
        "characters": row.characters,
        "pages": row.pages,
        "createdAt": row.created_at.isoformat().replace("+00:00", "Z"),
    }


class ContextService:
    """Documents of chatbots, per tenant, and retrieval over their chunks.

    Args:
        store: the database.
        embedder: embeds chunks and queries; counts their tokens.
        clock: timestamps documents.
        max_file_bytes: the largest file accepted (a 413 above).
        chunk_tokens: default ``chunkSize``.
        chunk_overlap: default ``chunkOverlap``.
        max_indexes: chatbots whose vector index a node keeps in memory.
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        clock: Clock,
        max_file_bytes: int,
        chunk_tokens: int = 200,
        chunk_overlap: int = 40,
        max_indexes: int = 256,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.clock = clock
        self.max_file_bytes = max_file_bytes
        self.chunk_tokens = min(chunk_tokens, embedder.max_tokens)
        self.chunk_overlap = min(chunk_overlap, self.chunk_tokens - 1)
        self.indexes = ChatbotIndexes(store, embedder.dimensions, max_indexes=max_indexes)

    # -- checking a request ------------------------------------------------------------

    def check_upload(
        self,
        tenant: int,
        *,
        chatbot_id: str | None,
        file_name: str | None,
        data: bytes | None,
        chunk_size: str | None = None,
        chunk_overlap: str | None = None,
        token_counts: str | None = None,
    ) -> UploadRequest:
        """The upload the form fields describe.

        Raises:
            APIError: 400 for a missing file or ``chatbotId`` or bad chunk numbers, 413 for a
                file over the limit.
        """
        if data is None:
            raise APIError.invalid_argument("The form has no file: send it as the multipart field 'file'")
        if len(data) > self.max_file_bytes:
            raise APIError.payload_too_large(
                f"The file is over the limit of {self.max_file_bytes} bytes", limit=self.max_file_bytes
            )
        chatbot = (chatbot_id or "").strip()
        if not chatbot:
            raise APIError.invalid_argument("The form has no chatbotId", field="chatbotId")
        if not _CHATBOT_ID.match(chatbot):
            raise APIError.invalid_argument(
                "chatbotId must be 1-100 letters, digits or . _ : - (starting with a letter or digit)",
                field="chatbotId",
            )
        size = self._tokens_field("chunkSize", chunk_size, self.chunk_tokens)
        if not MIN_CHUNK_TOKENS <= size <= self.embedder.max_tokens:
            raise APIError.invalid_argument(
                f"chunkSize must be between {MIN_CHUNK_TOKENS} and {self.embedder.max_tokens} tokens "
                "(the embedding model reads at most that many)",
                field="chunkSize",
            )
        default_overlap = min(self.chunk_overlap, size - 1)
        overlap = self._tokens_field("chunkOverlap", chunk_overlap, default_overlap)
        if not 0 <= overlap < size:
            raise APIError.invalid_argument(
                "chunkOverlap must be at least 0 and less than chunkSize", field="chunkOverlap"
            )
        name = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()[:255] or "upload"
        encodings = parse_token_counts(token_counts)
        return UploadRequest(tenant, chatbot, name, data, size, overlap, encodings)

    @staticmethod
    def _tokens_field(name: str, value: str | None, default: int) -> int:
        if value is None or not value.strip():
            return default
        try:
            return int(value.strip())
        except ValueError:
            raise APIError.invalid_argument(f"{name} must be an integer (tokens)", field=name) from None

    # -- uploading ---------------------------------------------------------------------

    async def upload(self, request: UploadRequest) -> AsyncIterator[NamedEvent]:
        """The events of one upload (see the module docs).

        Raises:
            ContextFileError: the file is of no supported type, cannot be read or is empty.
            EmbeddingError: the embedding model is unavailable.
            StoreUnavailable: the database failed.
        """
        digest, sniffed = await asyncio.to_thread(_hash_and_sniff, request.data)
        yield progress(
            "validation",
            f"Validated {request.file_name}: {sniffed.kind.value}, {len(request.data)} bytes",
            fileName=request.file_name,
            contentType=sniffed.kind.value,
            size=len(request.data),
            percent=_PERCENT["validation"],
        )
        existing = await self._by_hash(request, digest)
        if existing is not None and not request.token_counts:
            yield "complete", self._complete(existing, duplicate=True)
            return
        extracted = await asyncio.to_thread(extract, request.data, sniffed.kind, sniffed.text)
        counts = await self._token_counts(request, extracted.text)
        if existing is not None:  # the same bytes again: counted (they were asked for), not stored twice
            yield "complete", self._complete(existing, duplicate=True, counts=counts)
            return
        pages = f" from {extracted.pages} pages" if extracted.pages is not None else ""
        yield progress(
            "extraction",
            f"Extracted {len(extracted.text)} characters{pages}",
            count=len(extracted.text),
            characters=len(extracted.text),
            pages=extracted.pages,
            percent=_PERCENT["extraction"],
        )
        chunks, tokens = await asyncio.to_thread(self._chunk, extracted, request)
        yield progress(
            "chunking",
            f"Split into {len(chunks)} chunks ({tokens} tokens)",
            count=len(chunks),
            tokens=tokens,
            percent=_PERCENT["chunking"],
        )
        vectors: list[npt.NDArray[np.float32]] = []
        done = 0
        for start in range(0, len(chunks), EMBED_BATCH):
            batch = chunks[start : start + EMBED_BATCH]
            vectors.extend(await self.embedder.embed([chunk.text for chunk in batch]))
            done += len(batch)
            span = _PERCENT["embedding"] - _PERCENT["chunking"]
            yield progress(
                "embedding",
                f"Embedded {done} of {len(chunks)} chunks",
                count=done,
                total=len(chunks),
                percent=_PERCENT["chunking"] + span * done // len(chunks),
            )
        yield progress("storing", f"Storing {len(chunks)} chunks", count=len(chunks), percent=_PERCENT["storing"])
        row = ContextDocumentRow(
            id=f"doc_{secrets.token_hex(12)}",
            tenant=request.tenant,
            chatbot_id=request.chatbot_id,
            file_name=request.file_name,
            content_type=sniffed.kind.value,
            content_hash=digest,
            size_bytes=len(request.data),
            chunks=len(chunks),
            tokens=tokens,
            characters=len(extracted.text),
            pages=extracted.pages,
            created_at=self.clock.now(),
        )
        try:
            await self._store(row, chunks, vectors)
        except StoreConflict:
            existing = await self._by_hash(request, digest)  # another upload of the same bytes won the race
            if existing is None:
                raise
            yield "complete", self._complete(existing, duplicate=True, counts=counts)
            return
        yield "complete", self._complete(row, duplicate=False, counts=counts)

    @staticmethod
    async def _token_counts(request: UploadRequest, text: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in request.token_counts:
            try:
                counts[name] = (await count_tokens(name, [text]))[0]
            except TokenCountError as exc:
                raise APIError.unavailable(f"{name} token counts are unavailable: {exc}") from None
        return counts

    def _chunk(self, extracted: Extracted, request: UploadRequest) -> tuple[list[Chunk], int]:
        chunks = chunk_text(
            extracted.text,
            self.embedder.count_tokens_batch,
            chunk_tokens=request.chunk_tokens,
            overlap=request.chunk_overlap,
            page_starts=extracted.page_starts,
            line_mode=extracted.line_mode,
        )
        return chunks, self.embedder.count_tokens(extracted.text)

    @staticmethod
    def _complete(row: ContextDocumentRow, *, duplicate: bool, counts: dict[str, int] | None = None) -> dict[str, Any]:
        complete = {
            "documentId": row.id,
            "chatbotId": row.chatbot_id,
            "fileName": row.file_name,
            "contentType": row.content_type,
            "chunks": row.chunks,
            "tokens": row.tokens,
            "characters": row.characters,
            "pages": row.pages,
            "duplicate": duplicate,
        }
        if counts:
            complete["tokenCounts"] = counts
        return complete

    async def _by_hash(self, request: UploadRequest, digest: str) -> ContextDocumentRow | None:
        async with self.store.session() as session:
            found: ContextDocumentRow | None = await session.scalar(
                select(ContextDocumentRow).where(
                    ContextDocumentRow.tenant == request.tenant,
                    ContextDocumentRow.chatbot_id == request.chatbot_id,
                    ContextDocumentRow.content_hash == digest,
                )
            )
            return found

    async def _store(
        self, row: ContextDocumentRow, chunks: list[Chunk], vectors: list[npt.NDArray[np.float32]]
    ) -> None:
        blobs = [encode_vector(vector) for vector in vectors]
        async with self.store.session() as session:
            row.seq = await bump_version(session, row.tenant, "chatbot", row.chatbot_id)
            session.add(row)
            await session.flush()
            await session.execute(
                insert(ContextChunkRow),
                [
                    {
                        "document_id": row.id,
                        "tenant": row.tenant,
                        "chatbot_id": row.chatbot_id,
                        "seq": row.seq,
                        "ordinal": chunk.ordinal,
                        "text": chunk.text,
                        "page": chunk.page,
                        "start_offset": chunk.start,
                        "end_offset": chunk.end,
                        "tokens": chunk.tokens,
                        "embedding": blob,
                    }
                    for chunk, blob in zip(chunks, blobs, strict=True)
                ],
            )

    # -- documents ---------------------------------------------------------------------

    async def documents(self, tenant: int, chatbot_id: str | None = None) -> list[dict[str, Any]]:
        """The tenant's documents (of one chatbot, when given), newest first."""
        query = select(ContextDocumentRow).where(ContextDocumentRow.tenant == tenant)
        if chatbot_id is not None:
            query = query.where(ContextDocumentRow.chatbot_id == chatbot_id)
        async with self.store.session() as session:
            rows = (
                await session.scalars(query.order_by(ContextDocumentRow.created_at.desc(), ContextDocumentRow.id))
            ).all()
        return [_document(row) for row in rows]

    async def delete(self, tenant: int, document_id: str) -> dict[str, Any]:
        """Delete a document and its chunks; bumps the chatbot's version so every node drops them.

        Raises:
            APIError: 404 when the tenant has no such document.
        """
        async with self.store.session() as session:
            row: ContextDocumentRow | None = await session.scalar(
                select(ContextDocumentRow).where(
                    ContextDocumentRow.id == document_id, ContextDocumentRow.tenant == tenant
                )
            )
            if row is None:
                raise APIError.not_found(f"No document {document_id!r}", documentId=document_id)
            await session.execute(delete(ContextChunkRow).where(ContextChunkRow.document_id == row.id))
            await session.execute(delete(ContextDocumentRow).where(ContextDocumentRow.id == row.id))
            await bump_version(session, tenant, "chatbot", row.chatbot_id)
        return {"deleted": True, "documentId": row.id, "chatbotId": row.chatbot_id, "chunks": row.chunks}

    # -- retrieval ---------------------------------------------------------------------

    async def retrieve(self, tenant: int, chatbot_id: str, query: str, k: int) -> list[RetrievedChunk]:
        """The ``k`` chunks of the chatbot's documents nearest to ``query`` (cosine), best first.

        Raises:
            EmbeddingError: the embedding model is unavailable.
            StoreUnavailable: the database failed.
        """
        vectors = await self.embedder.embed([query])
        return await self.retrieve_vector(tenant, chatbot_id, vectors[0], k)

    async def retrieve_vector(
        self, tenant: int, chatbot_id: str, vector: npt.NDArray[np.float32], k: int
    ) -> list[RetrievedChunk]:
        """:meth:`retrieve` for a query already embedded (a unit vector of this embedder)."""
        return await self.indexes.search(tenant, chatbot_id, vector, k)


def _hash_and_sniff(data: bytes) -> tuple[str, Sniffed]:
    return hashlib.sha256(data).hexdigest(), sniff(data)
