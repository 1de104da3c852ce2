"""SKELETON (being written): Chatbot context: uploaded documents, chunked and embedded (``/api/context/*``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.providers.embeddings import Embedder

__all__ = ["ContextService"]


class ContextService:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        clock: Clock,
        max_file_bytes: int,
        chunk_tokens: int = 200,
        chunk_overlap: int = 40,
    ) -> None:
        pass
