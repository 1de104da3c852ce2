"""The answer pipeline both chat routes share: a prompt in, ``text`` and ``audio`` events out.

.. code-block:: python

    streamer = AnswerStreamer(llm, synthesizer, clock=clock, max_output_tokens=256)
    run = streamer.run(prompt, enable_tts=True, audio_format="mp3", route="troika")
    async with contextlib.aclosing(run.events()) as events:
        async for event in events:      # ("text", {...}), ("audio", {...}), ("progress", {...})
            yield event
    run.text, run.usage                 # the answer and the provider's Usage.as_dict()
    run.warnings                        # e.g. why there is no audio

:meth:`AnswerRun.events` starts the model on the provider layer (``ModelRegistry``), and
yields ``text`` ``{"token", "fullText"}`` for each piece. With ``enable_tts``, a
:class:`~sluicegate.services.chat.sentences.SentenceSplitter` cuts the text into
sentences as it streams (the first at a clause when it runs long), and a speech task
synthesises them one after another while generation goes on, each as one ``audio``
event ``{"chunk": base64, "format", "index" (from 0), "sentence", "sampleRate",
"durationMs"}``, in order; the voice starts loading when the run starts, alongside the
model's prompt processing. The events end once the text has ended and every sentence
has been spoken.

Speech that cannot happen (piper-tts not installed, a voice that fails) never fails the
answer: one ``progress`` event ``{"step": "speech", "message": <why>}`` says so, the
text goes on, and the reason is in :attr:`AnswerRun.warnings` (chat puts it in
``complete.warnings``).

Leaving early (the client disconnects: the generator is closed or cancelled) cancels the
speech task and the provider's generation, which stops the model within one token; the
run logs ``generation completed|cancelled|failed`` with its token counts either way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Literal

from sluicegate.errors import ConfigurationError
from sluicegate.providers.llm.base import GenerationOptions, GenerationRequest, ProviderError, Usage
from sluicegate.providers.llm.registry import UnknownModelError
from sluicegate.providers.tts import SpeechError, encode_audio
from sluicegate.providers.tts.encode import encoded_sample_rate
from sluicegate.services.chat.sentences import SentenceSplitter, speakable

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from sluicegate.clock import Clock
    from sluicegate.providers.llm.base import Generation
    from sluicegate.providers.llm.registry import ModelRegistry, ModelRoute
    from sluicegate.providers.tts import AudioFormat, SpeechSynthesizer
    from sluicegate.streaming.events import NamedEvent

__all__ = ["AnswerRun", "AnswerStreamer"]

log = logging.getLogger("sluicegate.chat")

Outcome = Literal["completed", "failed", "cancelled"]

#: Sentences waiting for the voice at most; generation waits beyond that (it never has, at 256 tokens).
SPEECH_QUEUE = 64
#: Events waiting for the client at most.
EVENT_QUEUE = 256


class _Done:
    """End of one producer's events (text or speech)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class AnswerStreamer:
    """Answers prompts with the chat model, with speech on request.

    Args:
        llm: the model map and providers.
        synthesizer: the voice.
        clock: times the runs.
        max_output_tokens: tokens an answer may have.
        model: the model of answers (``None``: the generation default).

    Raises:
        ConfigurationError: ``model`` is not in the model map.
    """

    def __init__(
        self,
        llm: ModelRegistry,
        synthesizer: SpeechSynthesizer,
        *,
        clock: Clock,
        max_output_tokens: int,
        model: str | None = None,
    ) -> None:
        try:
            self.route: ModelRoute = llm.resolve(model)
        except UnknownModelError:
            raise ConfigurationError(
                f"SLUICEGATE_CHAT_MODEL: {model!r} is not in the model map ({', '.join(llm.model_names)})"
            ) from None
        self.synthesizer = synthesizer
        self.clock = clock
        self.max_output_tokens = max_output_tokens

    def run(
        self, prompt: str, *, enable_tts: bool = False, audio_format: AudioFormat = "mp3", route: str = "chat"
    ) -> AnswerRun:
        """One answer to ``prompt`` (nothing starts until its :meth:`~AnswerRun.events` are read)."""
        return AnswerRun(self, prompt, enable_tts=enable_tts, audio_format=audio_format, route=route)


class AnswerRun:
    """One answer: its events, then its text, usage and warnings (see the module docstring)."""

    def __init__(
        self, streamer: AnswerStreamer, prompt: str, *, enable_tts: bool, audio_format: AudioFormat, route: str
    ) -> None:
        self.streamer = streamer
        self.prompt = prompt
        self.enable_tts = enable_tts
        self.audio_format = audio_format
        self.route = route
        self.pieces: list[str] = []
        self.audio_chunks = 0
        self.warnings: list[str] = []
        self.outcome: Outcome | None = None
        self._generation: Generation | None = None
        self._events: asyncio.Queue[NamedEvent | _Done] = asyncio.Queue(EVENT_QUEUE)
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue(SPEECH_QUEUE)
        self._speech_failed = False

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self.pieces)

    @property
    def usage(self) -> dict[str, Any]:
        """The provider's usage (final once the events have ended)."""
        return (self._generation.usage if self._generation is not None else Usage()).as_dict()

    async def events(self) -> AsyncGenerator[NamedEvent]:
        """``text``, ``audio`` and ``progress`` events; closing early stops the model and the voice.

        Raises:
            ProviderError: the model could not start, or failed midway.
        """
        streamer = self.streamer
        started = streamer.clock.monotonic()
        speech: asyncio.Task[None] | None = None
        text: asyncio.Task[None] | None = None
        outcome: Outcome = "cancelled"
        error: str | None = None
        try:
            if self.enable_tts:
                reason = streamer.synthesizer.unavailable_reason()
                if reason is not None:
                    self.enable_tts = False
                    yield self._no_speech(reason)
                else:
                    speech = asyncio.create_task(self._speak())
            request = GenerationRequest(
                prompt=self.prompt,
                model=streamer.route.upstream,
                options=GenerationOptions(max_output_tokens=streamer.max_output_tokens),
            )
            self._generation = await streamer.route.provider.start(request)
            text = asyncio.create_task(self._read(self._generation))
            producers = 2 if speech is not None else 1
            while producers:
                item = await self._events.get()
                if isinstance(item, _Done):
                    producers -= 1
                    if item.error is not None:
                        raise item.error
                    continue
                yield item
            outcome = "completed"
        except ProviderError as exc:
            outcome, error = "failed", str(exc)
            raise
        finally:
            for task in (text, speech):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(*(task for task in (text, speech) if task is not None), return_exceptions=True)
            if self._generation is not None and outcome != "completed":
                await self._generation.cancel()
            self._account(outcome, error, started)

    def _no_speech(self, reason: str) -> NamedEvent:
        self.warnings.append(reason)
        return "progress", {"step": "speech", "message": reason}

    async def _read(self, generation: Generation) -> None:
        """The text producer: pieces to ``text`` events and to the speech queue."""
        splitter = SentenceSplitter()
        error: Exception | None = None
        try:
            async for piece in generation:
                self.pieces.append(piece)
                await self._events.put(("text", {"token": piece, "fullText": self.text}))
                if self.enable_tts:
                    for sentence in splitter.feed(piece):
                        await self._sentences.put(sentence)
            if self.enable_tts:
                for sentence in splitter.flush():
                    await self._sentences.put(sentence)
        except Exception as exc:  # a provider failure, or a bug: either way the run must end, not hang
            error = exc
        if self.enable_tts:
            await self._sentences.put(None)
        await self._events.put(_Done(error))

    async def _speak(self) -> None:
        """The speech producer: sentences to ``audio`` events, one after another."""
        synthesizer = self.streamer.synthesizer
        opening = asyncio.create_task(synthesizer.open())  # the voice loads while the model starts
        error: Exception | None = None
        try:
            while (sentence := await self._sentences.get()) is not None:
                if not self._speech_failed:
                    await self._say(sentence, opening)
        except Exception as exc:  # a bug: end the run with it rather than hang
            error = exc
        finally:
            if not opening.done():
                opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, SpeechError):
                await opening
        await self._events.put(_Done(error))

    async def _say(self, sentence: str, opening: asyncio.Task[None]) -> None:
        synthesizer = self.streamer.synthesizer
        try:
            await asyncio.shield(opening)
            pcm = await synthesizer.synthesize(speakable(sentence))
            if not pcm.size:
                return
            rate = synthesizer.sample_rate
            chunk = await asyncio.to_thread(encode_audio, pcm, rate, self.audio_format)
        except SpeechError as exc:
            self._speech_failed = True
            await self._events.put(self._no_speech(str(exc)))
            return
        await self._events.put(
            (
                "audio",
                {
                    "chunk": base64.b64encode(chunk).decode("ascii"),
                    "format": self.audio_format,
                    "index": self.audio_chunks,
                    "sentence": sentence,
                    "sampleRate": encoded_sample_rate(rate, self.audio_format),
                    "durationMs": round(pcm.size * 1000 / rate),
                },
            )
        )
        self.audio_chunks += 1

    def _account(self, outcome: Outcome, error: str | None, started: float) -> None:
        self.outcome = outcome
        if self._generation is None:
            return
        usage = self._generation.usage
        extra = {
            "route": self.route,
            "model": self.streamer.route.model,
            "provider": self.streamer.route.provider.name,
            "chunks": len(self.pieces),
            "audio_chunks": self.audio_chunks,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "duration_ms": round((self.streamer.clock.monotonic() - started) * 1000, 1),
        }
        if outcome == "failed":
            log.warning("generation failed: %s", error, extra=extra)
        else:
            log.info("generation %s", outcome, extra=extra)
