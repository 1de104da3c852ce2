"""The interface every embedding model implements.

.. code-block:: python

    await embedder.open()                      # loads the model (or checks the remote)
    vectors = await embedder.embed(["a", "b"])  # (2, embedder.dimensions) float32, unit length
    embedder.count_tokens("a")                  # the model's own token count

``embed`` never blocks the event loop: inference runs in the provider's own thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sluicegate.errors import SluicegateError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import numpy.typing as npt

__all__ = ["Embedder", "EmbeddingError"]


class EmbeddingError(SluicegateError):
    """The embedding model is unavailable or failed; the message is for clients."""


class Embedder(Protocol):
    """A source of text embeddings."""

    #: The model's id, recorded beside every stored vector.
    name: str
    #: Length of each vector.
    dimensions: int
    #: Longest input in tokens; longer texts are truncated (chunk them first).
    max_tokens: int

    def unavailable_reason(self) -> str | None:
        """Why this embedder cannot serve (a package not installed), or ``None`` when it can."""
        ...

    async def open(self) -> None:
        """Load the model. Raises :class:`EmbeddingError` when it cannot be used."""
        ...

    async def close(self) -> None:
        """Release the model."""
        ...

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit-length vectors, one row per text, in order.

        Raises:
            EmbeddingError: the model is unavailable or failed.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """The number of tokens the model's tokenizer makes of ``text`` (no special tokens)."""
        ...

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        """:meth:`count_tokens` of many texts at once."""
        ...
