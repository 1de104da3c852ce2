"""SKELETON (being written): Chat over a chatbot's context, with speech (``/api/chat/query/stream``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.providers.llm import ModelRegistry
    from sluicegate.providers.tts import SpeechSynthesizer
    from sluicegate.services.context import ContextService

__all__ = ["ChatService"]


class ChatService:
    def __init__(
        self,
        store: Store,
        llm: ModelRegistry,
        embedder: Embedder,
        context: ContextService,
        synthesizer: SpeechSynthesizer,
        *,
        clock: Clock,
        memory_turns: int = 20,
        context_chunks: int = 4,
        max_output_tokens: int = 256,
        model: str | None = None,
    ) -> None:
        pass
