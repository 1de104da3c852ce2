"""Generation streams: the fifth seed's events over any provider, with the seed's metrics.

A :class:`GenerationRun` turns a provider's text pieces into the seed's events::

    {"chunk": "...", "index": 1}                       one per piece, index from 1
    {"complete": true, "totalChunks": N, "fullText": "...", "usage": {...}}
    {"error": "...", "recoverable": false}             a failure after the stream started

and accounts for it whatever the ending: completed, failed, or cancelled (the client
went away, or sent ``cancel`` on the WebSocket). A cancelled run stops its provider
before the accounting, so the usage it logs is what the model really spent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from sluicegate.errors import APIError, ErrCode
from sluicegate.providers.llm.base import (
    GenerationRequest,
    PromptRejectedError,
    ProviderBusyError,
    ProviderError,
)
from sluicegate.providers.llm.registry import UnknownModelError
from sluicegate.services.generate.models import GenerateRequest, parse_generate_request

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from sluicegate.clock import Clock
    from sluicegate.observability.metrics import Metrics
    from sluicegate.providers.llm.base import Generation
    from sluicegate.providers.llm.registry import ModelRegistry

__all__ = ["GenerateService", "GenerationRun"]

log = logging.getLogger("sluicegate.generate")

Outcome = Literal["completed", "failed", "cancelled"]

#: The ``agent`` label of requests beyond the cap on distinct agents.
OTHER_AGENT = "other"


class GenerateService:
    """Starts generations on the provider the model map names, and accounts for them.

    Args:
        registry: the model map and providers.
        metrics: where the seed's series go.
        clock: times the runs.
        max_prompt_chars: longest prompt accepted.
        max_output_tokens: default and ceiling of ``maxOutputTokens``.
        max_agents: distinct ``agent`` label values kept; later ones count as ``other``,
            so clients cannot grow the metrics without bound.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        clock: Clock,
        *,
        max_prompt_chars: int,
        max_output_tokens: int,
        max_agents: int = 100,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.max_prompt_chars = max_prompt_chars
        self.max_output_tokens = max_output_tokens
        self.max_agents = max_agents
        self._agents: set[str] = set()

    def parse(self, body: bytes | dict[str, Any]) -> GenerateRequest:
        """Validate a request body (see :func:`parse_generate_request`)."""
        return parse_generate_request(
            body, max_prompt_chars=self.max_prompt_chars, max_output_tokens=self.max_output_tokens
        )

    def agent_label(self, agent: str | None) -> str:
        """The metrics label of ``agent``: itself, ``""`` when absent, ``other`` past the cap."""
        if not agent:
            return ""
        if agent in self._agents:
            return agent
        if len(self._agents) >= self.max_agents:
            return OTHER_AGENT
        self._agents.add(agent)
        return agent

    async def start(self, request: GenerateRequest) -> GenerationRun:
        """Start generating.

        Raises:
            APIError: 400 for an unknown model or a prompt the model cannot take, 503
                when the provider's queue is full, 500 ``Failed to start stream`` when
                the provider cannot start.
        """
        try:
            route = self.registry.resolve(request.model)
        except UnknownModelError:
            raise APIError.invalid_argument(
                f"Unknown model: {request.model}", models=self.registry.model_names
            ) from None
        agent = self.agent_label(request.agent)
        provider_request = GenerationRequest(
            prompt=request.prompt, model=route.upstream, options=request.options.to_options(self.max_output_tokens)
        )
        started = self.clock.monotonic()
        try:
            generation = await route.provider.start(provider_request)
        except PromptRejectedError as exc:
            raise APIError.invalid_argument(str(exc)) from None
        except ProviderBusyError as exc:
            raise APIError(
                ErrCode.UNAVAILABLE,
                "Service Unavailable",
                details={"message": str(exc)},
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        except ProviderError as exc:
            self.metrics.sessions_failed.labels(agent).inc()
            log.warning(
                "generation failed to start: %s",
                exc,
                extra={"model": route.model, "provider": route.provider.name, "agent": agent or None},
            )
            raise APIError(ErrCode.INTERNAL, "Failed to start stream", details={"message": str(exc)}) from None
        return GenerationRun(
            self, generation, model=route.model, provider=route.provider.name, agent=agent, started=started
        )


class GenerationRun:
    """One started generation, as the seed's events (see the module docstring)."""

    def __init__(
        self,
        service: GenerateService,
        generation: Generation,
        *,
        model: str,
        provider: str,
        agent: str,
        started: float,
    ) -> None:
        self.generation = generation
        self.model = model
        self.provider = provider
        self.agent = agent
        self.outcome: Outcome | None = None
        self.chunks = 0
        self.pieces: list[str] = []
        self._service = service
        self._started = started
        self._active = service.metrics.active_streams.labels(agent)
        self._active.inc()

    @property
    def text(self) -> str:
        """The text generated so far."""
        return "".join(self.pieces)

    @property
    def usage(self) -> dict[str, Any]:
        """The usage so far (final once the run has ended)."""
        return self.generation.usage.as_dict()

    async def events(self) -> AsyncGenerator[dict[str, Any]]:
        """The seed's events. Closing this early (a disconnect) cancels the generation."""
        outcome: Outcome = "cancelled"
        error: str | None = None
        pieces = self.pieces
        chunks_sent = self._service.metrics.chunks_sent.labels(self.agent)
        index = 0
        try:
            async for piece in self.generation:
                index += 1
                self.chunks = index
                pieces.append(piece)
                chunks_sent.inc()
                yield {"chunk": piece, "index": index}
            outcome = "completed"
            yield {"complete": True, "totalChunks": index, "fullText": "".join(pieces), "usage": self.usage}
        except ProviderError as exc:
            outcome, error = "failed", str(exc)
            yield {"error": error, "recoverable": False}
        finally:
            if outcome != "completed":
                await self.generation.cancel()
            self._account(outcome, error)

    async def abort(self) -> None:
        """Cancel and account for a run whose events were never read to the end (no-op otherwise)."""
        if self.outcome is None:
            await self.generation.cancel()
            self._account("cancelled", None)

    def _account(self, outcome: Outcome, error: str | None) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        metrics = self._service.metrics
        duration = self._service.clock.monotonic() - self._started
        self._active.dec()
        counter = {
            "completed": metrics.sessions_completed,
            "failed": metrics.sessions_failed,
            "cancelled": metrics.sessions_cancelled,
        }[outcome]
        counter.labels(self.agent).inc()
        metrics.stream_duration.labels(self.agent).observe(duration)
        usage = self.generation.usage
        metrics.stream_tokens.labels(self.agent, "prompt").inc(usage.prompt_tokens)
        metrics.stream_tokens.labels(self.agent, "completion").inc(usage.completion_tokens)
        extra = {
            "model": self.model,
            "provider": self.provider,
            "agent": self.agent or None,
            "chunks": self.chunks,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "usage_estimated": usage.estimated,
            "duration_ms": round(duration * 1000, 1),
        }
        if self.generation.model_first_token_ms is not None:
            extra["model_first_token_ms"] = round(self.generation.model_first_token_ms, 2)
        if outcome == "failed":
            log.warning("generation failed: %s", error, extra=extra)
        else:
            log.info("generation %s", outcome, extra=extra)
