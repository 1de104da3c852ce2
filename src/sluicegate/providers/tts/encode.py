"""PCM to the audio formats of chat's ``audio`` events: ``mp3``, ``wav`` and ``opus``.

Each sentence is encoded as a whole file of its own, so a client can decode (or play)
every ``audio`` event on its own as it arrives:

- ``mp3``: MPEG-1/2 Layer III by ``lameenc`` (LGPL-3.0), mono, 64 kbit/s, at the
  voice's own rate (22,050 Hz for the packaged voice: an MPEG-2 rate).
- ``wav``: RIFF WAVE, 16-bit PCM, by ``soundfile`` (libsndfile).
- ``opus``: Opus in Ogg by ``soundfile``. Opus only takes 8, 12, 16, 24 or 48 kHz, so
  other rates are first resampled to the next rate up (the 22,050 Hz voice to
  24,000 Hz) by linear interpolation. Going up needs no anti-alias filter (nothing
  in the signal is above the old Nyquist frequency); linear interpolation's slight
  treble loss is inaudible in speech, and it keeps the code free of scipy.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["AUDIO_FORMATS", "OPUS_RATES", "AudioFormat", "encode_audio", "encoded_sample_rate", "resample_linear"]

AudioFormat = Literal["mp3", "wav", "opus"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)
#: The sample rates Opus encodes.
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
MP3_KBPS = 64


def resample_linear(pcm: npt.NDArray[np.int16], source: int, target: int) -> npt.NDArray[np.int16]:
    """``pcm`` at ``source`` Hz resampled to ``target`` Hz by linear interpolation."""
    if source == target or pcm.size == 0:
        return pcm
    count = max(1, round(pcm.size * target / source))
    positions = np.arange(count, dtype=np.float64) * (source / target)
    samples = np.interp(positions, np.arange(pcm.size, dtype=np.float64), pcm.astype(np.float64))
    out: npt.NDArray[np.int16] = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
    return out


def _opus_rate(rate: int) -> int:
    return next((r for r in OPUS_RATES if r >= rate), OPUS_RATES[-1])


def encoded_sample_rate(sample_rate: int, fmt: AudioFormat) -> int:
    """The sample rate of :func:`encode_audio`'s output for ``sample_rate`` input."""
    return _opus_rate(sample_rate) if fmt == "opus" else sample_rate


def encode_audio(pcm: npt.NDArray[np.int16], sample_rate: int, fmt: AudioFormat) -> bytes:
    """One encoded file of ``pcm`` (int16 mono samples at ``sample_rate``).

    Raises:
        ValueError: ``fmt`` is not one of :data:`AUDIO_FORMATS`.
    """
    samples = np.ascontiguousarray(pcm, dtype=np.int16)
    if fmt == "mp3":
        import lameenc

        encoder = lameenc.Encoder()
        encoder.set_bit_rate(MP3_KBPS)
        encoder.set_in_sample_rate(sample_rate)
        encoder.set_channels(1)
        encoder.set_quality(7)  # fast; speech does not need lame's slow psychoacoustics
        return bytes(encoder.encode(samples.tobytes()) + encoder.flush())
    if fmt not in ("wav", "opus"):
        raise ValueError(f"unknown audio format {fmt!r}: one of {', '.join(AUDIO_FORMATS)}")
    import soundfile

    out = io.BytesIO()
    if fmt == "wav":
        soundfile.write(out, samples, sample_rate, format="WAV", subtype="PCM_16")
    else:
        rate = _opus_rate(sample_rate)
        soundfile.write(out, resample_linear(samples, sample_rate, rate), rate, format="OGG", subtype="OPUS")
    return out.getvalue()
