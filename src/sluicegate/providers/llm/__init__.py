"""Language-model providers behind one interface, and the model map that picks one.

- :mod:`~sluicegate.providers.llm.local`: llama-cpp-python in a worker thread (the default);
- :mod:`~sluicegate.providers.llm.remote`: OpenAI-compatible servers and Google's Gemini.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.providers.llm.base import (
    Generation,
    GenerationOptions,
    GenerationRequest,
    LLMProvider,
    PromptRejectedError,
    ProviderBusyError,
    ProviderError,
    Usage,
)
from sluicegate.providers.llm.local import LocalProvider
from sluicegate.providers.llm.registry import ModelRegistry, ModelRoute, UnknownModelError
from sluicegate.providers.llm.remote import GeminiProvider, OpenAICompatibleProvider

if TYPE_CHECKING:
    from sluicegate.settings import Settings

__all__ = [
    "GeminiProvider",
    "Generation",
    "GenerationOptions",
    "GenerationRequest",
    "LLMProvider",
    "LocalProvider",
    "ModelRegistry",
    "ModelRoute",
    "OpenAICompatibleProvider",
    "PromptRejectedError",
    "ProviderBusyError",
    "ProviderError",
    "UnknownModelError",
    "Usage",
    "registry_from_settings",
]

_OPENAI_URL = "https://api.openai.com/v1"


def registry_from_settings(settings: Settings) -> ModelRegistry:
    """The three providers and the model map, as the settings describe them."""
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    gemini_key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None
    providers: dict[str, LLMProvider] = {
        "local": LocalProvider(
            settings.llm_model_path,
            models_dir=settings.data_dir / "models",
            chat_format=settings.llm_chat_format,
            context_tokens=settings.llm_context_tokens,
            threads=settings.llm_threads,
            queue_size=settings.llm_queue_size,
            preload=settings.llm_preload,
        ),
        "openai": OpenAICompatibleProvider(
            settings.openai_base_url or (_OPENAI_URL if openai_key else None),
            openai_key,
            timeout=settings.llm_timeout_seconds,
        ),
        "gemini": GeminiProvider(gemini_key, settings.gemini_base_url, timeout=settings.llm_timeout_seconds),
    }
    return ModelRegistry(providers, settings.llm_models, settings.default_model)
