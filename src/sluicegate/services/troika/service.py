"""SKELETON (being written): The sales agent: intents, market intelligence, grounded answers (``/api/troika/*``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.services.chat import ChatService
    from sluicegate.services.search import SearchService

__all__ = ["TroikaService"]


class TroikaService:
    def __init__(self, chat: ChatService, search: SearchService, embedder: Embedder, *, clock: Clock) -> None:
        pass
