"""Text embeddings behind one small interface.

- :mod:`~sluicegate.providers.embeddings.base`: the :class:`Embedder` protocol;
- :mod:`~sluicegate.providers.embeddings.minilm`: all-MiniLM-L6-v2 as int8 ONNX on
  onnxruntime, on this machine, offline (the default).

Vectors are float32, L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.providers.embeddings.base import Embedder, EmbeddingError
from sluicegate.providers.embeddings.minilm import MiniLMEmbedder

if TYPE_CHECKING:
    from sluicegate.settings import Settings

__all__ = ["Embedder", "EmbeddingError", "MiniLMEmbedder", "embedder_from_settings"]


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedding model the settings name (today: the packaged MiniLM)."""
    return MiniLMEmbedder(
        model_path=settings.embeddings_model_path,
        threads=settings.embeddings_threads,
        batch_size=settings.embeddings_batch_size,
    )
