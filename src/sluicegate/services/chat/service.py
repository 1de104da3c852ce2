"""Chat over a chatbot's context, with speech (``POST /api/chat/query/stream``).

A query is answered in four steps, each visible in the stream:

1. ``progress`` ``retrieval``: the chatbot's chunks nearest the question
   (``ContextService.retrieve``, per tenant, ``SLUICEGATE_CHAT_CONTEXT_CHUNKS`` of them);
2. the grounded prompt (:func:`~sluicegate.services.chat.prompt.build_prompt`: numbered
   chunks with their file names, the session's earlier turns, the question), within the
   model's context less the answer's tokens; ``progress`` ``generation``;
3. ``text`` and, with ``enableTTS``, ``audio`` events from the shared
   :class:`~sluicegate.services.chat.answer.AnswerStreamer`;
4. the turn remembered (:class:`~sluicegate.services.chat.memory.ChatMemory`), then
   ``suggestions`` (:func:`~sluicegate.services.chat.prompt.suggest_followups`) and
   ``complete`` ``{"fullText", "sources", "usage", "sessionId", "historyTurns",
   "audioChunks", "warnings"?}``. ``historyTurns`` is how many earlier turns of the
   session went into the prompt: what a user can check memory by.

The sales agent (``services/troika``) reuses steps 3 and 4 with its own prompt:
``service.answers.run(prompt, ...)``, ``service.memory.history(...)`` and
``service.memory.remember(...)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from sluicegate.errors import APIError
from sluicegate.providers.tokencounts import TokenCountError, parse_token_counts, usage_counts
from sluicegate.providers.tts import AUDIO_FORMATS
from sluicegate.services.chat.answer import AnswerStreamer
from sluicegate.services.chat.memory import ChatMemory
from sluicegate.services.chat.prompt import build_prompt, source_dicts, suggest_followups

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence

    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.providers.llm import ModelRegistry
    from sluicegate.providers.tts import AudioFormat, SpeechSynthesizer
    from sluicegate.services.chat.prompt import SourceChunk
    from sluicegate.streaming.events import NamedEvent

__all__ = ["ChatRequest", "ChatService", "Retriever", "parse_chat_request"]

MAX_QUERY_CHARS = 4000
MAX_ID_CHARS = 100
#: Tokens kept free for the chat template's own markup around the prompt.
TEMPLATE_TOKENS = 64


class Retriever(Protocol):
    """What chat needs of :class:`~sluicegate.services.context.ContextService`."""

    async def retrieve(self, tenant: int, chatbot_id: str, query: str, k: int) -> Sequence[SourceChunk]: ...


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated ``POST /api/chat/query/stream`` body."""

    query: str
    chatbot_id: str
    session_id: str | None = None
    enable_tts: bool = False
    audio_format: AudioFormat = "mp3"
    #: Encodings ``usage.tokenCounts`` is counted in (``tokenCounts``).
    token_counts: tuple[str, ...] = ()


def _text_field(body: dict[str, Any], name: str, *, required: bool, limit: int) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise APIError.invalid_argument(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise APIError.invalid_argument(f"{name} must be a string")
    if len(value) > limit:
        raise APIError.invalid_argument(f"{name} is too long: at most {limit} characters", limit=limit)
    return value.strip()


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a body.

    Raises:
        APIError: 400 naming the field: ``query is required``, ``chatbotId must be a
            string``, ``audioFormat must be one of mp3, wav, opus``...
    """
    try:
        value = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        raise APIError.invalid_argument("Request body must be a JSON object") from None
    if not isinstance(value, dict):
        raise APIError.invalid_argument("Request body must be a JSON object")
    query = _text_field(value, "query", required=True, limit=MAX_QUERY_CHARS)
    chatbot_id = _text_field(value, "chatbotId", required=True, limit=MAX_ID_CHARS)
    session_id = _text_field(value, "sessionId", required=False, limit=MAX_ID_CHARS)
    enable_tts = value.get("enableTTS", False)
    if enable_tts is None:
        enable_tts = False
    if not isinstance(enable_tts, bool):
        raise APIError.invalid_argument("enableTTS must be true or false")
    audio_format = value.get("audioFormat") or "mp3"
    if audio_format not in AUDIO_FORMATS:
        raise APIError.invalid_argument(f"audioFormat must be one of {', '.join(AUDIO_FORMATS)}")
    assert query is not None and chatbot_id is not None  # noqa: S101 -- required above
    encodings = parse_token_counts(value.get("tokenCounts"))
    return ChatRequest(query, chatbot_id, session_id, enable_tts, cast("AudioFormat", audio_format), encodings)


async def with_token_counts(
    usage: dict[str, Any], encodings: tuple[str, ...], prompt: str, completion: str
) -> dict[str, Any]:
    """``usage`` with ``tokenCounts`` in the asked encodings (of the prompt as built, without
    the model's chat template, and of the answer); ``usage`` itself when none was asked.

    Raises:
        APIError: 503 when an encoding cannot be loaded.
    """
    if not encodings:
        return usage
    try:
        return {**usage, "tokenCounts": await usage_counts(encodings, prompt, completion)}
    except TokenCountError as exc:
        raise APIError.unavailable(f"Token counts are unavailable: {exc}") from None


class ChatService:
    """Grounded answers over a chatbot's documents (see the module docstring).

    Args:
        store: where session turns live.
        llm: the model map (the chat model is ``model``, else the default).
        embedder: counts prompt tokens (its tokenizer errs on the long side of the chat
            model's: WordPiece makes more tokens of English than Gemma's SentencePiece).
        context: retrieves the chatbot's chunks.
        synthesizer: the voice of ``enableTTS``.
        clock: times the streams.
        memory_turns: turns of a ``sessionId`` remembered (``0``: none).
        context_chunks: chunks retrieved per query.
        max_output_tokens: tokens an answer may have.
        model: the model of chat answers (``None``: the generation default).
        context_tokens: the chat model's context window (prompt and answer).

    Raises:
        ConfigurationError: ``model`` is not in the model map.
    """

    def __init__(
        self,
        store: Store,
        llm: ModelRegistry,
        embedder: Embedder,
        context: Retriever,
        synthesizer: SpeechSynthesizer,
        *,
        clock: Clock,
        memory_turns: int = 20,
        context_chunks: int = 4,
        max_output_tokens: int = 256,
        model: str | None = None,
        context_tokens: int = 4096,
    ) -> None:
        self.embedder = embedder
        self.context = context
        self.clock = clock
        self.context_chunks = context_chunks
        self.memory = ChatMemory(store, clock=clock, turns=memory_turns)
        self.answers = AnswerStreamer(llm, synthesizer, clock=clock, max_output_tokens=max_output_tokens, model=model)
        #: Tokens the prompt may take.
        self.prompt_budget = max(64, context_tokens - max_output_tokens - TEMPLATE_TOKENS)

    def count_tokens(self, text: str) -> int:
        """Prompt tokens, as :meth:`build_prompt` budgets them."""
        return self.embedder.count_tokens(text)

    async def stream(self, tenant: int, request: ChatRequest) -> AsyncGenerator[NamedEvent]:
        """The events of one query, ``progress`` to ``complete`` (the route adds ``connected`` and ``close``)."""
        history = await self.memory.history(tenant, request.session_id)
        chunks = await self.context.retrieve(tenant, request.chatbot_id, request.query, self.context_chunks)
        yield (
            "progress",
            {"step": "retrieval", "message": f"Found {len(chunks)} relevant context chunks", "count": len(chunks)},
        )
        prompt = build_prompt(request.query, chunks, history, budget=self.prompt_budget, count_tokens=self.count_tokens)
        yield "progress", {"step": "generation", "message": "Generating the answer"}
        run = self.answers.run(
            prompt.text, enable_tts=request.enable_tts, audio_format=request.audio_format, route="chat"
        )
        async with contextlib.aclosing(run.events()) as events:
            async for event in events:
                yield event
        await self.memory.remember(tenant, request.session_id, "chat", request.query, run.text)
        yield "suggestions", {"suggestions": suggest_followups(request.query, prompt.chunks)}
        complete: dict[str, Any] = {
            "fullText": run.text,
            "sources": source_dicts(prompt.chunks),
            "usage": await with_token_counts(run.usage, request.token_counts, prompt.text, run.text),
            "sessionId": request.session_id,
            "historyTurns": len(prompt.turns),
            "audioChunks": run.audio_chunks,
        }
        if run.warnings:
            complete["warnings"] = run.warnings
        yield "complete", complete
