"""SKELETON (being written): speech synthesis behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sluicegate.settings import Settings

__all__ = ["SpeechSynthesizer", "synthesizer_from_settings"]


class SpeechSynthesizer(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    async def close(self) -> None: ...


class _Skeleton:
    name = "skeleton"

    def unavailable_reason(self) -> str | None:
        return "not built yet"

    async def close(self) -> None:
        pass


def synthesizer_from_settings(settings: Settings) -> SpeechSynthesizer:
    return _Skeleton()
