"""The second seed's media fields at session start, parsed and range-checked.

A session start body carries the video or audio configuration as top-level fields (the
seed's "Video Frame Extraction" and "Audio Segmentation" sections). This module turns them
into frozen dataclasses and refuses unknown modes and out-of-range values with an
``invalid_argument`` :class:`~sluicegate.errors.APIError` (a 400) whose message and
``field`` name the offending field. A field that is absent or ``null`` takes its default.

Defaults are the seed's example values where it gives one (``keyframes``, quality 85;
``silence``, -40 dBFS, 1,000 ms and 30,000 ms); the rest are ours and documented on the
dataclasses and in ``docs/media.md``. Deliberate divergence: the seed's example also sets
``resolution`` to 1920x1080; our default is ``None`` (keep the source's size), so a session
that names no resolution never upscales.

Pure: no PyAV import here, so validating a session start costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from sluicegate.errors import APIError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "AUDIO_FIELDS",
    "MAX_HEIGHT",
    "MAX_PIXELS",
    "MAX_SEGMENT_MS",
    "MAX_WIDTH",
    "VIDEO_FIELDS",
    "AudioConfig",
    "FrameExtractionMode",
    "Resolution",
    "SegmentationMode",
    "VideoConfig",
    "parse_audio_config",
    "parse_video_config",
]

FrameExtractionMode = Literal["all-frames", "keyframes", "interval", "scene-changes"]
SegmentationMode = Literal["fixed-duration", "silence", "energy", "speech-detection"]

#: The largest frame side accepted (8K UHD's width; portrait frames may be as tall).
MAX_WIDTH = 7680
MAX_HEIGHT = 7680
#: The largest frame area accepted: 7680x4320 (8K UHD).
MAX_PIXELS = 7680 * 4320
#: The longest segment accepted, 10 minutes: a segment is held whole in memory (38 MB of float32 at 16 kHz).
MAX_SEGMENT_MS = 600_000
#: The largest ``frameInterval`` and ``frameRateFps`` accepted.
MAX_FRAME_INTERVAL = 1_000_000
MAX_FRAME_RATE = 1_000.0
#: The quietest threshold accepted, in dBFS (below any 24-bit noise floor).
MIN_SILENCE_DB = -120.0

#: The top-level body fields each parser reads.
VIDEO_FIELDS = (
    "frameExtractionMode",
    "frameInterval",
    "frameRateFps",
    "resolution",
    "compressionQuality",
    "sceneThreshold",
)
AUDIO_FIELDS = ("segmentationMode", "silenceThresholdDb", "minSegmentDurationMs", "maxSegmentDurationMs")


@dataclass(frozen=True, slots=True)
class Resolution:
    """The size extracted frames are scaled to, exactly (aspect ratio not preserved)."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """How frames are chosen from a video and encoded.

    Attributes:
        mode: ``all-frames``, ``keyframes`` (the stream's own I-frames), ``interval``
            (every ``frame_interval``-th frame) or ``scene-changes``.
        frame_interval: N for ``interval``: frames 0, N, 2N, ... are kept (1 to 1,000,000).
        frame_rate_fps: a cap on the rate of extracted frames, applied after the mode
            (``None``: no cap); at most one frame per ``1/fps`` seconds on a fixed grid.
        resolution: the output size; ``None`` keeps the source's size.
        compression_quality: JPEG quality, 1 (smallest) to 100 (best).
        scene_threshold: ``scene-changes`` starts a new scene when the difference score
            between a frame and the one before it is at least this (0 to 1).
    """

    mode: FrameExtractionMode = "keyframes"
    frame_interval: int = 30
    frame_rate_fps: float | None = None
    resolution: Resolution | None = None
    compression_quality: int = 85
    scene_threshold: float = 0.3

    def as_fields(self) -> dict[str, Any]:
        """The configuration under the seed's field names (what :func:`parse_video_config` reads)."""
        size = self.resolution
        return {
            "frameExtractionMode": self.mode,
            "frameInterval": self.frame_interval,
            "frameRateFps": self.frame_rate_fps,
            "resolution": None if size is None else {"width": size.width, "height": size.height},
            "compressionQuality": self.compression_quality,
            "sceneThreshold": self.scene_threshold,
        }


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """How audio is cut into segments.

    Attributes:
        mode: ``fixed-duration``, ``silence``, ``energy`` or ``speech-detection``.
        silence_threshold_db: for ``silence``: a 20 ms window quieter than this (RMS,
            dBFS, -120 to 0) is silence.
        min_segment_ms: stretches of sound shorter than this are dropped (not used by
            ``fixed-duration``).
        max_segment_ms: longer stretches are split at this length; in ``fixed-duration``
            it is the length of every piece but the last (at most 600,000).
    """

    mode: SegmentationMode = "silence"
    silence_threshold_db: float = -40.0
    min_segment_ms: int = 1_000
    max_segment_ms: int = 30_000

    def as_fields(self) -> dict[str, Any]:
        """The configuration under the seed's field names (what :func:`parse_audio_config` reads)."""
        return {
            "segmentationMode": self.mode,
            "silenceThresholdDb": self.silence_threshold_db,
            "minSegmentDurationMs": self.min_segment_ms,
            "maxSegmentDurationMs": self.max_segment_ms,
        }


def parse_video_config(body: Mapping[str, Any]) -> VideoConfig:
    """The video configuration in a session start body (its top-level fields).

    Raises:
        APIError: ``invalid_argument``, naming the field, for an unknown mode or a value
            of the wrong type or out of range.
    """
    defaults = VideoConfig()
    mode = _mode(body, "frameExtractionMode", get_args(FrameExtractionMode), defaults.mode)
    return VideoConfig(
        mode=cast("FrameExtractionMode", mode),
        frame_interval=_integer(body, "frameInterval", defaults.frame_interval, low=1, high=MAX_FRAME_INTERVAL),
        frame_rate_fps=_optional_rate(body, "frameRateFps"),
        resolution=_resolution(body, "resolution"),
        compression_quality=_integer(body, "compressionQuality", defaults.compression_quality, low=1, high=100),
        scene_threshold=_number(body, "sceneThreshold", defaults.scene_threshold, low=0.0, high=1.0),
    )


def parse_audio_config(body: Mapping[str, Any]) -> AudioConfig:
    """The audio configuration in a session start body (its top-level fields).

    Raises:
        APIError: ``invalid_argument``, naming the field, for an unknown mode, a value of
            the wrong type or out of range, or ``minSegmentDurationMs`` above
            ``maxSegmentDurationMs``.
    """
    defaults = AudioConfig()
    mode = _mode(body, "segmentationMode", get_args(SegmentationMode), defaults.mode)
    threshold = _number(body, "silenceThresholdDb", defaults.silence_threshold_db, low=MIN_SILENCE_DB, high=0.0)
    shortest = _integer(body, "minSegmentDurationMs", defaults.min_segment_ms, low=1, high=MAX_SEGMENT_MS)
    longest = _integer(body, "maxSegmentDurationMs", defaults.max_segment_ms, low=1, high=MAX_SEGMENT_MS)
    if shortest > longest:
        # Name the field the client set: a lone small maximum is the likelier mistake.
        field = "maxSegmentDurationMs" if body.get("maxSegmentDurationMs") is not None else "minSegmentDurationMs"
        raise _invalid(field, f"minSegmentDurationMs ({shortest}) must not exceed maxSegmentDurationMs ({longest})")
    return AudioConfig(
        mode=cast("SegmentationMode", mode),
        silence_threshold_db=threshold,
        min_segment_ms=shortest,
        max_segment_ms=longest,
    )


def _invalid(field: str, message: str) -> APIError:
    return APIError.invalid_argument(message, field=field)


def _mode(body: Mapping[str, Any], field: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise _invalid(field, f"{field} must be one of {', '.join(allowed)}")
    return value


def _integer(body: Mapping[str, Any], key: str, default: int, *, low: int, high: int, field: str | None = None) -> int:
    """``body[key]`` as an int in ``[low, high]``; errors name ``field`` (default: ``key``)."""
    field = field or key
    value = body.get(key)
    if value is None:
        return default
    # bool is an int in Python, never in JSON; 10.0 is accepted as 10.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, f"{field} must be an integer")
    if not low <= value <= high:
        raise _invalid(field, f"{field} must be between {low} and {high}")
    return value


def _real(body: Mapping[str, Any], field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(field, f"{field} must be a number")
    return float(value)


def _number(body: Mapping[str, Any], field: str, default: float, *, low: float, high: float) -> float:
    value = _real(body, field)
    if value is None:
        return default
    if not low <= value <= high:
        raise _invalid(field, f"{field} must be between {low:g} and {high:g}")
    return value


def _optional_rate(body: Mapping[str, Any], field: str) -> float | None:
    value = _real(body, field)
    if value is not None and not 0.0 < value <= MAX_FRAME_RATE:
        raise _invalid(field, f"{field} must be above 0 and at most {MAX_FRAME_RATE:g}")
    return value


def _resolution(body: Mapping[str, Any], field: str) -> Resolution | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(field, f"{field} must be an object with width and height")
    for key in ("width", "height"):
        if value.get(key) is None:
            raise _invalid(f"{field}.{key}", f"{field}.{key} is required")
    width = _integer(value, "width", 0, low=1, high=MAX_WIDTH, field=f"{field}.width")
    height = _integer(value, "height", 0, low=1, high=MAX_HEIGHT, field=f"{field}.height")
    if width * height > MAX_PIXELS:
        raise _invalid(field, f"{field} must be at most {MAX_PIXELS:,} pixels (7680x4320)")
    return Resolution(width, height)
