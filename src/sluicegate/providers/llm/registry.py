"""Which provider serves which model: the model map from settings, and ``GET /api/models``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluicegate.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sluicegate.providers.llm.base import LLMProvider

__all__ = ["ModelRegistry", "ModelRoute", "UnknownModelError"]


class UnknownModelError(KeyError):
    """No provider serves this model."""


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A model name resolved: the provider and the name the provider knows it by."""

    model: str
    provider: LLMProvider
    upstream: str


class ModelRegistry:
    """The model map, resolved against the configured providers.

    Args:
        providers: by name (``local``, ``openai``, ``gemini``).
        models: model name to ``provider`` or ``provider:upstream-model``.
        default_model: the model of requests that name none; must be in ``models``.

    Raises:
        ConfigurationError: a model maps to a provider that does not exist, or the
            default model is not in the map.
    """

    name = "llm"

    def __init__(self, providers: Mapping[str, LLMProvider], models: Mapping[str, str], default_model: str) -> None:
        self.providers = dict(providers)
        self._routes: dict[str, ModelRoute] = {}
        for model, target in models.items():
            provider_name, _, upstream = target.partition(":")
            provider = self.providers.get(provider_name)
            if provider is None:
                raise ConfigurationError(f"SLUICEGATE_LLM_MODELS: model {model!r} maps to unknown {provider_name!r}")
            self._routes[model] = ModelRoute(model, provider, upstream or model)
        if default_model not in self._routes:
            raise ConfigurationError(
                f"SLUICEGATE_LLM_DEFAULT_MODEL: {default_model!r} is not in the model map ({', '.join(self._routes)})"
            )
        self.default_model = default_model

    def resolve(self, model: str | None) -> ModelRoute:
        """The route of ``model`` (the default model when ``None``).

        Raises:
            UnknownModelError: no provider serves ``model``.
        """
        route = self._routes.get(model or self.default_model)
        if route is None:
            raise UnknownModelError(model)
        return route

    @property
    def model_names(self) -> list[str]:
        """Every model name in the map."""
        return list(self._routes)

    def describe(self) -> list[dict[str, Any]]:
        """The ``GET /api/models`` entries: each model, its provider, and whether it can be used now."""
        entries = []
        for route in self._routes.values():
            reason = route.provider.unavailable_reason()
            entry: dict[str, Any] = {
                "id": route.model,
                "provider": route.provider.name,
                "available": reason is None,
                "default": route.model == self.default_model,
            }
            if route.upstream != route.model:
                entry["upstreamModel"] = route.upstream
            if reason is not None:
                entry["reason"] = reason
            entries.append(entry)
        return entries

    async def open(self) -> None:
        for provider in self.providers.values():
            await provider.open()

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()

    async def check(self) -> None:
        """Raise when the default model's provider cannot serve (a local model that failed to load)."""
        reason = self.resolve(None).provider.unavailable_reason()
        if reason is not None:
            raise ConnectionError(reason)
