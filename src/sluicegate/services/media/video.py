"""Frames out of a video, one at a time: chosen by mode, scaled, encoded as JPEG (PyAV).

:func:`extract_frames` reads a video file (a path or a binary file object) with PyAV's
bundled FFmpeg; :func:`extract_from_jpegs` applies the same modes to a sequence of JPEG
frames (the seed's JSON ``frames``). Both are generators: a frame is decoded, judged,
encoded and yielded before the next is read, so memory stays at a few frames whatever the
length of the video.

Modes (``VideoConfig.mode``):

- ``keyframes``: the stream's own key frames (I/IDR frames). Only key packets are sent to
  the decoder, which is also told to skip everything else (``skip_frame = "NONKEY"``), so
  the other frames are never decoded. For a JPEG sequence every frame is a key frame, so
  this mode keeps them all.
- ``interval``: frame numbers 0, N, 2N, ... (N = ``frame_interval``); every frame is
  decoded (inter-coded frames need their references), only the kept ones are scaled and encoded.
- ``all-frames``: every frame.
- ``scene-changes``: the first frame, and each frame whose *scene score* against the frame
  before it is at least ``scene_threshold``. The score is the total variation distance
  (half the L1 distance, 0 to 1) between the colour histograms of the two frames, each a
  64x36 RGB thumbnail counted into 4x4x4 = 64 bins: 0 for the same colours, 1 for
  disjoint ones. It ignores motion within a scene (the same colours moved) and catches hard
  cuts; a slow fade or dissolve changes little from one frame to the next and is not a cut.

After the mode, ``frame_rate_fps`` (when set) caps the rate: at most one frame per
``1/fps`` seconds, on a grid that starts at the first kept frame.

Numbers: ``frame_number`` counts frames in the order the decoder presents them (0-based);
in ``keyframes`` mode, where the others are not decoded, it is the packet's index in the
stream, which is the same number for the key frames of closed GOPs. ``timestamp_ms`` is the
frame's own ``pts x time_base`` (the packet's when the decoder gives none), rounded to the
millisecond. Frames are scaled to ``resolution`` exactly (aspect ratio not preserved;
``None`` keeps the source size) and encoded with FFmpeg's MJPEG encoder, quality 1-100
mapped linearly onto its ``qscale`` 31 (worst) to 2 (best).

Decode failures raise :class:`~sluicegate.services.media.MediaDecodeError` (``"Failed to
parse video frame N"``) after the frames already yielded; so does a file that ends before
the last frame its index lists (an MP4 cut short). A Matroska/WebM file cut at a packet
boundary has no such index and is, to FFmpeg, a shorter valid file: it decodes without an error.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, BinaryIO

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from sluicegate.services.media import MediaDecodeError, MediaError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import numpy.typing as npt
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

    from sluicegate.services.media.config import VideoConfig

__all__ = ["THUMBNAIL_SIZE", "ExtractedFrame", "extract_frames", "extract_from_jpegs", "scene_score"]

#: The thumbnail the scene score is computed on (width, height).
THUMBNAIL_SIZE = (64, 36)
#: Levels per colour channel in the scene histogram (4 -> 64 bins).
_LEVELS = 4
#: FFmpeg MJPEG qscale at quality 100 and at quality 1.
_QSCALE_BEST, _QSCALE_WORST = 2, 31
#: Slack when comparing a frame's time with the rate cap's grid (float ms).
_GRID_SLACK_MS = 0.5
#: FFmpeg's threading: frame threads where there are cores to spare; on two cores they
#: measured 0.8 times the default's decoding rate (H.264 at 640x360, docs/performance.md).
_THREAD_TYPE = "AUTO" if (os.cpu_count() or 1) > 2 else "SLICE"

Source = str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True, slots=True)
class ExtractedFrame:
    """One extracted frame, as a JPEG.

    Attributes:
        index: its position among the extracted frames (0-based).
        frame_number: its position in the stream's decoded order (0-based).
        timestamp_ms: its presentation time, in milliseconds.
        keyframe: whether the stream coded it as a key frame.
        scene_score: in ``scene-changes`` mode, its difference from the frame before (0 to
            1; ``None`` for the first frame); ``None`` in the other modes.
        width: the JPEG's width.
        height: the JPEG's height.
        jpeg: the encoded image.
    """

    index: int
    frame_number: int
    timestamp_ms: int
    keyframe: bool
    scene_score: float | None
    width: int
    height: int
    jpeg: bytes


def extract_frames(source: Source, config: VideoConfig) -> Iterator[ExtractedFrame]:
    """The frames of the first video stream of ``source`` that ``config`` selects, in order.

    Args:
        source: a file path, or a binary file object (read from its current position).
        config: the session's video configuration.

    Raises:
        MediaDecodeError: the container or a frame cannot be decoded, or there is no video
            stream; raised after the frames decoded before it were yielded.
    """
    picker = _Picker(config)
    decoded = _DecodeProgress()
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise MediaDecodeError(
                    "Failed to parse video frame 0", None, 0, details="The input has no video stream"
                )
            stream = container.streams.video[0]
            frames = (
                _key_frames(container, stream, decoded)
                if config.mode == "keyframes"
                else _all_frames(container, stream, decoded)
            )
            for frame, number, keyframe in frames:
                extracted = picker.offer(frame, number, _timestamp_ms(frame, number, stream), keyframe)
                if extracted is not None:
                    yield extracted
            if stream.frames and decoded.packets < stream.frames:
                # An MP4 cut short after its index: FFmpeg stops quietly where the data ends.
                raise MediaDecodeError(
                    f"Failed to parse video frame {decoded.next_number}",
                    decoded.last_number,
                    picker.count,
                    details=f"The file ends after {decoded.packets} of the {stream.frames} frames its index lists",
                )
    except av.FFmpegError as exc:
        if isinstance(exc, OSError):  # the file is missing or unreadable: not a media problem
            raise
        raise MediaDecodeError(
            f"Failed to parse video frame {decoded.next_number}",
            decoded.last_number,
            picker.count,
            details=_reason(exc),
        ) from exc


def extract_from_jpegs(jpegs: Iterable[tuple[bytes, float]], config: VideoConfig) -> Iterator[ExtractedFrame]:
    """The same modes over a sequence of JPEG frames (the seed's JSON ``frames``).

    Every frame of a JPEG sequence is a key frame, so ``keyframes`` keeps them all. Frames
    the mode drops before looking at their pixels (``interval``, the rate cap) are not
    decoded; ``scene-changes`` decodes every frame.

    Args:
        jpegs: ``(jpeg bytes, timestamp in ms)`` pairs, in order; ``frame_number`` is the
            position in this sequence.
        config: the session's video configuration.

    Raises:
        MediaDecodeError: a frame is not a decodable JPEG (``details="Invalid JPEG
            format"``), after the frames before it were yielded.
    """
    picker = _Picker(config)
    decoder = av.CodecContext.create("mjpeg", "r")
    decoder.thread_count = 1  # one packet in, its frame out: no frame-thread delay
    last_good: int | None = None
    for number, (data, timestamp_ms) in enumerate(jpegs):
        if not picker.wants(number, timestamp_ms):
            continue
        try:
            decoded = decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            decoded = []
            cause: Exception | None = exc
        else:
            cause = None
        if len(decoded) != 1:
            raise MediaDecodeError(
                f"Failed to parse video frame {number}", last_good, picker.count, details="Invalid JPEG format"
            ) from cause
        last_good = number
        frame = decoded[0]
        assert isinstance(frame, av.VideoFrame)  # noqa: S101 -- an mjpeg decoder only makes video frames
        extracted = picker.offer(frame, number, round(timestamp_ms), keyframe=True)
        if extracted is not None:
            yield extracted


def scene_score(before: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> float:
    """The total variation distance of two normalised histograms: 0 (equal) to 1 (disjoint)."""
    return float(0.5 * np.abs(before - after).sum())


class _DecodeProgress:
    """Which frame the decoder is at, for the error message of a failure."""

    __slots__ = ("last_number", "next_number", "packets")

    def __init__(self) -> None:
        self.next_number = 0
        self.last_number: int | None = None
        self.packets = 0  # demuxed, with data

    def decoded(self, number: int) -> None:
        self.last_number = number
        self.next_number = max(self.next_number, number + 1)


def _all_frames(
    container: av.container.InputContainer, stream: VideoStream, progress: _DecodeProgress
) -> Iterator[tuple[VideoFrame, int, bool]]:
    """Every frame, decoded, in presentation order, with its number and key-frame flag."""
    stream.thread_type = _THREAD_TYPE
    number = 0
    for packet in container.demux(stream):
        progress.packets += packet.size > 0
        for frame in packet.decode():
            progress.decoded(number)
            yield frame, number, bool(frame.key_frame)
            number += 1


def _key_frames(
    container: av.container.InputContainer, stream: VideoStream, progress: _DecodeProgress
) -> Iterator[tuple[VideoFrame, int, bool]]:
    """The key frames only: other packets are counted but never reach the decoder."""
    stream.codec_context.skip_frame = "NONKEY"
    stream.thread_type = _THREAD_TYPE
    waiting: deque[int] = deque()  # packet numbers of key packets sent, awaiting their frame
    number = 0
    for packet in container.demux(stream):
        flush = packet.size == 0
        if not flush:
            progress.next_number = number
            progress.packets += 1
            number += 1
            if not packet.is_keyframe:
                continue
            waiting.append(number - 1)
        for frame in packet.decode():
            # Key frames leave the decoder in the order they went in (no reordering between them).
            frame_number = waiting.popleft() if waiting else number
            progress.decoded(frame_number)
            yield frame, frame_number, True


def _timestamp_ms(frame: VideoFrame, number: int, stream: VideoStream) -> int:
    """The frame's presentation time; its number over the stream's rate when it has none."""
    if frame.pts is not None and frame.time_base is not None:
        return round(frame.pts * frame.time_base * 1000)
    rate = stream.average_rate or stream.guessed_rate
    return round(number * 1000 / rate) if rate else 0


def _reason(exc: av.FFmpegError) -> str:
    return str(exc.strerror or type(exc).__name__)


class _Picker:
    """Applies the mode and the rate cap to frames as they come, and encodes the kept ones."""

    def __init__(self, config: VideoConfig) -> None:
        self.config = config
        self.count = 0
        self._period_ms = 1000.0 / config.frame_rate_fps if config.frame_rate_fps else None
        self._next_due_ms: float | None = None
        self._previous: npt.NDArray[np.float64] | None = None
        # A reformatter keeps its scaler between calls; frame.reformat() builds one each time (5x slower).
        self._thumbnails = VideoReformatter()
        self._encoder = _JpegEncoder(config.compression_quality)

    def wants(self, number: int, timestamp_ms: float) -> bool:
        """Whether a frame might be kept, judged before decoding it (JPEG sequences)."""
        if self.config.mode == "interval":
            return number % self.config.frame_interval == 0
        if self.config.mode == "scene-changes":
            return True  # every frame is scored against the one before it
        return self._cap_allows(timestamp_ms)

    def offer(self, frame: VideoFrame, number: int, timestamp_ms: int, keyframe: bool) -> ExtractedFrame | None:
        """The extracted frame, or ``None`` when the mode or the cap drops it."""
        mode = self.config.mode
        score: float | None = None
        if mode == "interval" and number % self.config.frame_interval:
            return None
        if mode == "scene-changes":
            histogram = _histogram(self._thumbnails, frame)
            previous, self._previous = self._previous, histogram
            if previous is not None:
                score = scene_score(previous, histogram)
                if score < self.config.scene_threshold:
                    return None
        if not self._cap_allows(timestamp_ms):
            return None
        self._take(timestamp_ms)
        jpeg, width, height = self._encoder.encode(frame, self.config)
        extracted = ExtractedFrame(self.count, number, timestamp_ms, keyframe, score, width, height, jpeg)
        self.count += 1
        return extracted

    def _cap_allows(self, timestamp_ms: float) -> bool:
        due = self._next_due_ms
        return due is None or timestamp_ms + _GRID_SLACK_MS >= due

    def _take(self, timestamp_ms: float) -> None:
        """Move the rate cap's grid past a kept frame (restarting it after a gap)."""
        if self._period_ms is None:
            return
        due = (self._next_due_ms if self._next_due_ms is not None else timestamp_ms) + self._period_ms
        self._next_due_ms = due if due > timestamp_ms + _GRID_SLACK_MS else timestamp_ms + self._period_ms


def _histogram(reformatter: VideoReformatter, frame: VideoFrame) -> npt.NDArray[np.float64]:
    """The frame's normalised 4x4x4 RGB histogram, counted on a 64x36 thumbnail (area-averaged)."""
    width, height = THUMBNAIL_SIZE
    pixels = reformatter.reformat(frame, width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    levels = pixels.astype(np.intp) * _LEVELS // 256
    bins = (levels[..., 0] * _LEVELS + levels[..., 1]) * _LEVELS + levels[..., 2]
    counts = np.bincount(bins.ravel(), minlength=_LEVELS**3)
    histogram: npt.NDArray[np.float64] = counts / counts.sum()
    return histogram


class _JpegEncoder:
    """FFmpeg's MJPEG encoder at one quality, one encoder per output size."""

    def __init__(self, quality: int) -> None:
        span = _QSCALE_WORST - _QSCALE_BEST
        self.qscale = round(_QSCALE_WORST - (quality - 1) * span / 99)
        self._context: av.VideoCodecContext | None = None  # for one size at a time
        self._scaler = VideoReformatter()
        self._pts = 0

    def encode(self, frame: VideoFrame, config: VideoConfig) -> tuple[bytes, int, int]:
        """The frame scaled to the configured size and encoded: ``(jpeg, width, height)``."""
        size = config.resolution
        width, height = (size.width, size.height) if size is not None else (frame.width, frame.height)
        # yuvj420p: full-range 4:2:0, what JPEG (JFIF) stores.
        image = self._scaler.reformat(frame, width=width, height=height, format="yuvj420p")
        context = self._sized(width, height)
        # The encoder wants strictly increasing pts in its own time base (PyAV rescales
        # from the frame's): number the images 0, 1, 2, ... in that base.
        image.time_base = context.time_base
        image.pts = self._pts
        self._pts += 1
        packets = context.encode(image)
        if len(packets) != 1:  # MJPEG is intra-only with no delay: one frame in, one image out
            raise MediaError(f"The MJPEG encoder gave {len(packets)} images for one frame")
        return bytes(packets[0]), width, height

    def _sized(self, width: int, height: int) -> av.VideoCodecContext:
        """The encoder for this size (a new one when the source's size changes mid-stream)."""
        context = self._context
        if context is None or (context.width, context.height) != (width, height):
            created = av.CodecContext.create("mjpeg", "w")
            assert isinstance(created, av.VideoCodecContext)  # noqa: S101 -- mjpeg is a video codec
            created.width, created.height = width, height
            created.pix_fmt = "yuvj420p"
            created.time_base = Fraction(1, 25)  # required by the encoder; JPEGs carry no time
            created.qmin = created.qmax = self.qscale
            self._context = context = created
        return context
