"""Media benchmark: frames per second per extraction mode, audio segmentation as a multiple of real time.

Makes its own media with PyAV (nothing is downloaded): an H.264 MP4 at 640x360 and at
1280x720, 30 fps, ``--seconds`` long, a key frame every 60 frames (2 s, as encoders
commonly place them), a moving bar over coloured scenes that change every 3 s, with some
noise so the encoder has real work; and a 16-bit 44.1 kHz stereo WAV of tones separated by
silences, ``--audio-seconds`` long.

Video, per mode of :func:`~sluicegate.services.media.video.extract_frames` (frames scaled
to the source's size, JPEG quality 85): ``frames_per_s`` is the video's frames covered per
second of wall time (input frames / seconds), ``extracted`` the frames it yielded. The
baseline, measured in the same run, is ``decode_only``: PyAV decoding every frame and doing
nothing with it (the floor of every mode that decodes all frames). Beside the seed's
figures (video 300 frames/s at batch 10, 2,000 at batch 100): ``vs_seed_300`` and
``vs_seed_2000`` are ``frames_per_s`` over each.

Audio, per mode of :func:`~sluicegate.services.media.audio.segment_audio`: ``realtime_x``
is seconds of audio per second of wall time; the baseline is ``decode_only`` (decoding and
resampling to 16 kHz mono, which every mode does). The seed's audio figure is 500 buffers/s.

Each case runs ``--repeats`` times, interleaved (every case once, then again), and the
median is reported. Prints one JSON line.

    .venv/bin/python bench/media.py
    .venv/bin/python bench/media.py --seconds 20 --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import av  # noqa: E402
import numpy as np  # noqa: E402

from sluicegate.services.media.audio import segment_audio  # noqa: E402
from sluicegate.services.media.config import AudioConfig, SegmentationMode, VideoConfig  # noqa: E402
from sluicegate.services.media.video import _THREAD_TYPE, extract_frames  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

FPS = 30
GOP = 60
SCENE_SECONDS = 3
SEED_VIDEO = (300, 2000)
SIZES = ((640, 360), (1280, 720))
VIDEO_MODES: dict[str, dict[str, Any]] = {
    "keyframes": {"mode": "keyframes"},
    "interval_30": {"mode": "interval", "frame_interval": 30},
    "scene-changes": {"mode": "scene-changes"},
    "all-frames": {"mode": "all-frames"},
}
AUDIO_MODES: tuple[SegmentationMode, ...] = ("fixed-duration", "silence", "energy", "speech-detection")


def make_video(width: int, height: int, seconds: int) -> bytes:
    """An H.264 MP4: coloured scenes, a moving bar, light noise; a key frame every GOP frames."""
    rng = np.random.default_rng(13)
    noise = rng.integers(0, 24, (8, height, width, 3), dtype=np.uint8)
    colours = rng.integers(30, 225, (64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.options = {"sc_threshold": "0", "preset": "veryfast"}
        for number in range(seconds * FPS):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = colours[(number // (SCENE_SECONDS * FPS)) % len(colours)]
            left = (number * 6) % (width - 40)
            image[:, left : left + 40] = 255
            image ^= noise[number % len(noise)]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def make_audio(seconds: int, rate: int = 44_100) -> bytes:
    """A stereo 16-bit WAV: 1.5 s tones at changing pitch and level, 1 s silences between them."""
    t = np.arange(int(rate * 1.5)) / rate
    parts = []
    for n in range(int(seconds / 2.5) + 1):
        tone = (0.2 + 0.1 * (n % 3)) * np.sin(2 * np.pi * (220 + 40 * (n % 7)) * t)
        parts += [tone, np.zeros(rate)]
    mono = np.concatenate(parts)[: seconds * rate]
    samples = (np.stack([mono, mono * 0.8], axis=0) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1, order="F"), format="s16", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def decode_video(data: bytes) -> int:
    with av.open(io.BytesIO(data), "r") as container:
        container.streams.video[0].thread_type = _THREAD_TYPE  # as the service decodes
        return sum(1 for _ in container.decode(video=0))


def decode_audio(data: bytes) -> int:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    samples = 0
    with av.open(io.BytesIO(data), "r") as container:
        for frame in container.decode(audio=0):
            samples += sum(out.samples for out in resampler.resample(frame))
    return samples


def timed(work: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    produced = work()
    return time.perf_counter() - started, produced


def median_runs(cases: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[float, int]]:
    runs: dict[str, list[float]] = {name: [] for name in cases}
    produced: dict[str, int] = {}
    for _ in range(repeats):
        for name, work in cases.items():
            seconds, count = timed(work)
            runs[name].append(seconds)
            produced[name] = count
    return {name: (statistics.median(values), produced[name]) for name, values in runs.items()}


def video_cases(data: bytes) -> dict[str, Callable[[], int]]:
    cases: dict[str, Callable[[], int]] = {"decode_only": lambda: decode_video(data)}
    for name, fields in VIDEO_MODES.items():
        cases[name] = functools.partial(count_frames, data, VideoConfig(**fields))
    return cases


def count_frames(data: bytes, config: VideoConfig) -> int:
    return sum(1 for _ in extract_frames(io.BytesIO(data), config))


def count_segments(data: bytes, config: AudioConfig) -> int:
    return sum(1 for _ in segment_audio(io.BytesIO(data), config))


def audio_cases(data: bytes) -> dict[str, Callable[[], int]]:
    cases: dict[str, Callable[[], int]] = {"decode_only": lambda: decode_audio(data)}
    for mode in AUDIO_MODES:
        config = AudioConfig(mode=mode, min_segment_ms=200, max_segment_ms=10_000)
        cases[mode] = functools.partial(count_segments, data, config)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="video length")
    parser.add_argument("--audio-seconds", type=int, default=60, help="audio length")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, interleaved")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "bench": "media",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "pyav": av.__version__,
        "video_seconds": args.seconds,
        "fps": FPS,
        "gop": GOP,
        "video": {},
    }
    frames = args.seconds * FPS
    for width, height in SIZES:
        data = make_video(width, height, args.seconds)
        results = {}
        for name, (seconds, extracted) in median_runs(video_cases(data), args.repeats).items():
            rate = frames / seconds
            results[name] = {
                "frames_per_s": round(rate, 1),
                "extracted": extracted,
                "vs_decode_only": None,
                "vs_seed_300": round(rate / SEED_VIDEO[0], 1),
                "vs_seed_2000": round(rate / SEED_VIDEO[1], 2),
            }
        floor = results["decode_only"]["frames_per_s"]
        for values in results.values():
            values["vs_decode_only"] = round(values["frames_per_s"] / floor, 2)
        report["video"][f"{width}x{height}"] = {"bytes": len(data), **results}
    audio = make_audio(args.audio_seconds)
    report["audio_seconds"] = args.audio_seconds
    report["audio"] = {
        name: {"realtime_x": round(args.audio_seconds / seconds, 1), "segments": produced}
        for name, (seconds, produced) in median_runs(audio_cases(audio), args.repeats).items()
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
