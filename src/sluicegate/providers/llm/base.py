"""The one small interface every language-model provider implements.

A provider turns a :class:`GenerationRequest` into a running :class:`Generation`:

.. code-block:: python

    generation = await provider.start(request)  # ProviderError: could not start
    try:
        async for piece in generation:           # text pieces, as the model makes them
            ...
    finally:
        await generation.cancel()                # stops the model; a no-op once finished
    generation.usage                             # final once iteration ends, partial if cut

``start`` does everything that can fail before the first piece (a missing key, a model
that did not load, an upstream that answered with an error status), so the gateway can
still answer with a plain HTTP error. ``cancel`` stops the model within one token: the
local worker checks a flag between tokens, remote providers close their upstream request.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

__all__ = [
    "Generation",
    "GenerationOptions",
    "GenerationRequest",
    "LLMProvider",
    "PromptRejectedError",
    "ProviderBusyError",
    "ProviderError",
    "Usage",
]


class ProviderError(Exception):
    """The provider could not start a generation, or failed during one. The message is for clients."""


class ProviderBusyError(ProviderError):
    """The provider's queue is full; the client should retry later."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PromptRejectedError(ProviderError):
    """The request cannot be served as given (a prompt longer than the model's context): a 400."""


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Sampling options, the fifth seed's names in Python spelling; ``None`` is the provider's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None

    def named(self, temperature: str, top_p: str, top_k: str, max_output_tokens: str) -> dict[str, float | int]:
        """The options that are set, under a provider's own names (``None`` ones left out)."""
        values = {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_output_tokens: self.max_output_tokens,
        }
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A prompt for one model."""

    prompt: str
    model: str
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass(slots=True)
class Usage:
    """Token counts of one generation.

    ``estimated`` is true when the provider did not report the counts itself (a remote
    stream cut before its usage frame): the completion count is then the number of
    pieces received and the prompt count what was last reported, or 0.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """The seed's ``usage`` object, with ``estimated: true`` added when the counts are not the provider's."""
        usage: dict[str, Any] = {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "totalTokens": self.total_tokens,
        }
        if self.estimated:
            usage["estimated"] = True
        return usage


class Generation(abc.ABC):
    """One running generation: an async iterator of text pieces, cancellable.

    :attr:`usage` is current at any moment and final once iteration has ended.
    """

    def __init__(self, usage: Usage | None = None) -> None:
        self.usage = usage or Usage()
        #: How long the model itself took to its first token, where the provider can tell
        #: (the local worker times it; remote providers cannot see inside the upstream).
        self.model_first_token_ms: float | None = None
        self._iterator: AsyncGenerator[str] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is None:
            self._iterator = self.pieces()
        return self._iterator

    @abc.abstractmethod
    def pieces(self) -> AsyncGenerator[str]:
        """The text pieces. Raises :class:`ProviderError` when the provider fails midway."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the model or close the upstream request (called by :meth:`cancel`)."""

    async def cancel(self) -> None:
        """Stop generating and release the model or the upstream request. Idempotent, and
        a no-op once the pieces have all been read."""
        await self.stop()
        if self._iterator is not None:
            with contextlib.suppress(RuntimeError):  # still running in another task: it ends by itself
                await self._iterator.aclose()


class LLMProvider(Protocol):
    """A source of generations (``local``, ``openai``, ``gemini``)."""

    #: The provider's name in the model map (``local``, ``openai``, ``gemini``).
    name: str

    def unavailable_reason(self) -> str | None:
        """Why this provider cannot serve requests (a key not set), or ``None`` when it can."""
        ...

    async def open(self) -> None:
        """Acquire resources (start the worker, open the HTTP client)."""
        ...

    async def close(self) -> None:
        """Stop every generation and release resources."""
        ...

    async def start(self, request: GenerationRequest) -> Generation:
        """Begin generating.

        Raises:
            ProviderBusyError: the provider's queue is full.
            ProviderError: the provider cannot start (no key, model not loaded, upstream error).
        """
        ...
