"""SKELETON (being written): product catalogs and the two product searches."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.providers.embeddings import Embedder

__all__ = ["SearchService"]


class SearchService:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        clock: Clock,
        max_limit: int = 100,
        exact_vectors: int = 20_000,
        aza_min_score: float = 0.3,
    ) -> None:
        pass
