"""Frame extraction on real video made here with PyAV: three coloured scenes with hard cuts, a known GOP.

The clip is 72 frames of 320x180 at 24 fps (3 s): red, green and blue scenes cut at frames
20 and 45, a white bar moving across each (motion inside a scene), one key frame every 12
frames (x264 with its own scene-cut key frames off, so the cuts are not key frames), and
B-frames where the encoder makes them, so presentation order differs from decode order.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import pytest

from sluicegate.services.media import MediaDecodeError
from sluicegate.services.media.config import Resolution, VideoConfig
from sluicegate.services.media.video import ExtractedFrame, extract_frames, extract_from_jpegs, scene_score
from tests.media import CountingReader

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

FPS = 24
FRAMES = 72
WIDTH, HEIGHT = 320, 180
GOP = 12
CUTS = (20, 45)
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
FRAME_MS = 1000 / FPS


def picture(number: int, *, noise: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
    scene = sum(number >= cut for cut in CUTS)
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = COLOURS[scene]
    left = (number * 4) % (WIDTH - 20)
    image[:, left : left + 20] = 255
    if noise is not None:
        image ^= noise
    return image


def encode_video(
    target: Path | io.BytesIO, *, fmt: str = "mp4", frames: int = FRAMES, noisy: bool = False, **options: str
) -> int:
    """Write the clip; returns how many key frames the encoder made."""
    rng = np.random.default_rng(7)
    keys = 0
    with av.open(target, "w", format=fmt, options=options) as out:
        stream = out.add_stream(CODEC, rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = GOP
        if CODEC == "libx264":
            stream.codec_context.options = {"sc_threshold": "0", "preset": "veryfast", "bf": "2"}
        for number in range(frames):
            noise = rng.integers(0, 64, (HEIGHT, WIDTH, 3), dtype=np.uint8) if noisy else None
            frame = av.VideoFrame.from_ndarray(picture(number, noise=noise), format="rgb24")
            for packet in stream.encode(frame):
                keys += packet.is_keyframe
                out.mux(packet)
        for packet in stream.encode():
            keys += packet.is_keyframe
            out.mux(packet)
    return keys


@pytest.fixture(scope="module")
def clip() -> tuple[bytes, int]:
    """The clip as MP4 bytes, and the encoder's key-frame count."""
    buffer = io.BytesIO()
    keys = encode_video(buffer)
    return buffer.getvalue(), keys


def extract(data: bytes, **fields: Any) -> list[ExtractedFrame]:
    return list(extract_frames(io.BytesIO(data), VideoConfig(**fields)))


def decode_jpeg(data: bytes) -> npt.NDArray[np.uint8]:
    with av.open(io.BytesIO(data), "r", format="mjpeg") as container:
        (frame,) = list(container.decode(video=0))
        pixels = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    return pixels


def test_keyframes_mode_yields_exactly_the_encoders_key_frames(clip: tuple[bytes, int]) -> None:
    data, encoder_keys = clip
    frames = extract(data, mode="keyframes")
    assert encoder_keys == FRAMES // GOP
    assert len(frames) == encoder_keys
    assert [f.frame_number for f in frames] == list(range(0, FRAMES, GOP))
    assert [f.index for f in frames] == list(range(encoder_keys))
    assert all(f.keyframe and f.scene_score is None for f in frames)
    assert [f.timestamp_ms for f in frames] == [round(n * FRAME_MS) for n in range(0, FRAMES, GOP)]


def test_all_frames_mode_yields_every_frame_in_presentation_order(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    frames = extract(data, mode="all-frames")
    assert [f.frame_number for f in frames] == list(range(FRAMES))
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.timestamp_ms for f in frames] == [round(n * FRAME_MS) for n in range(FRAMES)]
    # The decoder's key-frame flags and the keyframes mode agree on which frames they are.
    assert [f.frame_number for f in frames if f.keyframe] == [f.frame_number for f in extract(data, mode="keyframes")]


def test_interval_mode_yields_every_nth_frame(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    frames = extract(data, mode="interval", frame_interval=10)
    assert [f.frame_number for f in frames] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert [f.timestamp_ms for f in frames] == [round(n * FRAME_MS) for n in range(0, FRAMES, 10)]
    assert len(extract(data, mode="interval", frame_interval=1)) == FRAMES
    assert [f.frame_number for f in extract(data, mode="interval", frame_interval=100)] == [0]


def test_scene_changes_yield_the_first_frame_and_the_first_frame_after_each_cut(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    frames = extract(data, mode="scene-changes")
    assert len(frames) == 1 + len(CUTS)
    assert frames[0].frame_number == 0
    assert frames[0].scene_score is None
    for frame, cut in zip(frames[1:], CUTS, strict=True):
        assert abs(frame.timestamp_ms - cut * FRAME_MS) <= FRAME_MS
        assert frame.scene_score is not None
        assert frame.scene_score >= VideoConfig().scene_threshold
    # The cuts fall between key frames: the scenes are found in the pixels, not the GOP.
    assert not any(frame.keyframe for frame in frames[1:])


def test_a_threshold_above_every_cut_keeps_only_the_first_frame(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    scores = [f.scene_score for f in extract(data, mode="scene-changes", scene_threshold=0.0)]
    assert len(scores) == FRAMES  # threshold 0: every frame starts a scene, and each is scored
    cut_scores = [scores[cut] for cut in CUTS]
    within = [s for n, s in enumerate(scores) if n and n not in CUTS]
    assert all(s is not None for s in within)
    assert max(s for s in within if s is not None) < 0.1  # the moving bar changes little
    highest = max(s for s in cut_scores if s is not None)
    assert [f.frame_number for f in extract(data, mode="scene-changes", scene_threshold=min(1.0, highest + 0.01))] == [
        0
    ]


def test_scene_score_is_the_total_variation_distance_of_histograms() -> None:
    same = np.full(64, 1 / 64)
    disjoint_a = np.zeros(64)
    disjoint_a[0] = 1.0
    disjoint_b = np.zeros(64)
    disjoint_b[63] = 1.0
    assert scene_score(same, same) == 0.0
    assert scene_score(disjoint_a, disjoint_b) == 1.0
    half = np.zeros(64)
    half[[0, 63]] = 0.5
    assert scene_score(disjoint_a, half) == pytest.approx(0.5)


def test_frames_are_scaled_to_the_resolution_and_decode_as_jpeg(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    frames = extract(data, mode="keyframes", resolution=Resolution(160, 90))
    assert {(f.width, f.height) for f in frames} == {(160, 90)}
    for frame in frames:
        assert frame.jpeg[:2] == b"\xff\xd8"
        pixels = decode_jpeg(frame.jpeg)
        assert pixels.shape == (90, 160, 3)
    # The first key frame is red with a white bar at the left edge: the colour survives.
    right = decode_jpeg(frames[0].jpeg)[:, 40:].reshape(-1, 3).mean(axis=0)
    assert np.abs(right - np.array(COLOURS[0])).max() < 12
    native = extract(data, mode="keyframes")
    assert {(f.width, f.height) for f in native} == {(WIDTH, HEIGHT)}
    assert decode_jpeg(native[0].jpeg).shape == (HEIGHT, WIDTH, 3)


def test_a_lower_quality_makes_smaller_jpegs(clip: tuple[bytes, int]) -> None:
    buffer = io.BytesIO()
    encode_video(buffer, frames=GOP, noisy=True)  # detail, so quality shows in the size
    sizes = {q: len(extract(buffer.getvalue(), mode="keyframes", compression_quality=q)[0].jpeg) for q in (10, 50, 95)}
    assert sizes[10] < sizes[50] < sizes[95]


def test_the_frame_rate_cap_keeps_at_most_that_many_frames_per_second(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    frames = extract(data, mode="all-frames", frame_rate_fps=6.0)
    assert [f.frame_number for f in frames] == list(range(0, FRAMES, 4))
    assert [f.index for f in frames] == list(range(len(frames)))
    # 10 fps from 24 is not a whole step: the grid keeps 10 a second, never two within 100 ms.
    capped = extract(data, mode="all-frames", frame_rate_fps=10.0)
    assert len(capped) == 30
    gaps = np.diff([f.timestamp_ms for f in capped])
    assert gaps.min() >= 100 - FRAME_MS
    # A cap above the source's rate changes nothing.
    assert len(extract(data, mode="all-frames", frame_rate_fps=60.0)) == FRAMES


def test_a_path_and_a_file_object_give_the_same_frames(clip: tuple[bytes, int], tmp_path: Path) -> None:
    data, _ = clip
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    from_path = list(extract_frames(path, VideoConfig(mode="interval", frame_interval=12)))
    from_file = extract(data, mode="interval", frame_interval=12)
    assert [(f.frame_number, f.timestamp_ms, f.jpeg) for f in from_path] == [
        (f.frame_number, f.timestamp_ms, f.jpeg) for f in from_file
    ]


def test_frames_are_yielded_while_the_file_is_still_being_read(tmp_path: Path) -> None:
    path = tmp_path / "noisy.mkv"
    encode_video(path, fmt="matroska", frames=48, noisy=True)
    data = path.read_bytes()
    reader = CountingReader(data)
    frames = extract_frames(reader, VideoConfig(mode="all-frames"))
    first = next(frames)
    assert first.frame_number == 0
    assert reader.furthest < len(data) // 2
    assert sum(1 for _ in frames) == 47
    assert reader.furthest == len(data)


def test_garbage_and_a_truncated_mp4_fail_at_frame_zero(clip: tuple[bytes, int]) -> None:
    data, _ = clip
    for broken in (b"\x00\x01 not a video " * 64, data[: len(data) // 2], b""):
        with pytest.raises(MediaDecodeError) as caught:
            extract(broken, mode="all-frames")
        error = caught.value
        assert str(error) == "Failed to parse video frame 0"
        assert error.last_successful_frame is None
        assert error.partial_count == 0
        assert error.details


def test_a_file_cut_short_fails_after_yielding_what_it_decoded(tmp_path: Path) -> None:
    path = tmp_path / "faststart.mp4"
    encode_video(path, movflags="faststart")  # the index first: the samples after the cut are missing
    data = path.read_bytes()
    got: list[ExtractedFrame] = []
    with pytest.raises(MediaDecodeError) as caught:
        for frame in extract_frames(io.BytesIO(data[: len(data) * 2 // 3]), VideoConfig(mode="all-frames")):
            got.append(frame)
    error = caught.value
    assert 0 < len(got) < FRAMES
    assert error.partial_count == len(got)
    assert error.last_successful_frame is not None
    assert error.last_successful_frame >= got[-1].frame_number
    assert str(error) == f"Failed to parse video frame {error.last_successful_frame + 1}"


def test_a_file_without_video_says_so(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(path, "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(MediaDecodeError) as caught:
        list(extract_frames(path, VideoConfig()))
    assert caught.value.details == "The input has no video stream"


@pytest.fixture(scope="module")
def jpeg_sequence(clip: tuple[bytes, int]) -> list[tuple[bytes, float]]:
    """The clip's frames as a sequence of JPEGs with their timestamps (the seed's JSON frames)."""
    data, _ = clip
    return [(f.jpeg, f.timestamp_ms) for f in extract(data, mode="all-frames", compression_quality=90)]


def from_jpegs(sequence: list[tuple[bytes, float]], **fields: Any) -> list[ExtractedFrame]:
    return list(extract_from_jpegs(sequence, VideoConfig(**fields)))


def test_jpeg_sequences_take_the_same_modes(jpeg_sequence: list[tuple[bytes, float]]) -> None:
    every = from_jpegs(jpeg_sequence, mode="all-frames")
    assert [f.frame_number for f in every] == list(range(FRAMES))
    assert [f.timestamp_ms for f in every] == [round(t) for _, t in jpeg_sequence]
    # Every frame of a JPEG sequence is a key frame.
    keys = from_jpegs(jpeg_sequence, mode="keyframes")
    assert len(keys) == FRAMES
    assert all(f.keyframe for f in keys)
    assert [f.frame_number for f in from_jpegs(jpeg_sequence, mode="interval", frame_interval=10)] == list(
        range(0, FRAMES, 10)
    )
    scenes = from_jpegs(jpeg_sequence, mode="scene-changes")
    assert [f.frame_number for f in scenes] == [0, *CUTS]
    assert [f.frame_number for f in from_jpegs(jpeg_sequence, mode="keyframes", frame_rate_fps=6.0)] == list(
        range(0, FRAMES, 4)
    )
    scaled = from_jpegs(jpeg_sequence[:3], mode="all-frames", resolution=Resolution(64, 48))
    assert [decode_jpeg(f.jpeg).shape for f in scaled] == [(48, 64, 3)] * 3


def test_an_invalid_jpeg_fails_with_the_seeds_message(jpeg_sequence: list[tuple[bytes, float]]) -> None:
    broken = list(jpeg_sequence)
    broken[30] = (b"this is not a JPEG image at all", broken[30][1])
    got: list[ExtractedFrame] = []
    with pytest.raises(MediaDecodeError) as caught:
        for frame in extract_from_jpegs(broken, VideoConfig(mode="all-frames")):
            got.append(frame)
    error = caught.value
    assert str(error) == "Failed to parse video frame 30"
    assert error.details == "Invalid JPEG format"
    assert error.last_successful_frame == 29
    assert error.partial_count == len(got) == 30


def test_frames_the_interval_skips_are_never_decoded(jpeg_sequence: list[tuple[bytes, float]]) -> None:
    broken = list(jpeg_sequence)
    broken[31] = (b"garbage", broken[31][1])
    kept = from_jpegs(broken, mode="interval", frame_interval=10)
    assert [f.frame_number for f in kept] == list(range(0, FRAMES, 10))
    with pytest.raises(MediaDecodeError, match="Failed to parse video frame 31"):
        from_jpegs(broken, mode="all-frames")
