"""Chat's parts in isolation: the sentence splitter, prompts, follow-up questions, the request
body, session memory on SQLite and PostgreSQL, and the answer pipeline (text and real speech)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import soundfile
from sqlalchemy import func, select

from sluicegate.clock import ManualClock
from sluicegate.engines.store import Store
from sluicegate.errors import APIError, ConfigurationError
from sluicegate.providers.llm import ModelRegistry
from sluicegate.providers.llm.base import Generation, GenerationRequest, ProviderError
from sluicegate.providers.tts import PiperSynthesizer
from sluicegate.services.chat.answer import AnswerStreamer
from sluicegate.services.chat.memory import ChatMemory
from sluicegate.services.chat.prompt import (
    INSTRUCTIONS,
    NO_CONTEXT,
    PromptTurn,
    build_prompt,
    source_dicts,
    suggest_followups,
)
from sluicegate.services.chat.sentences import SentenceSplitter, speakable
from sluicegate.services.chat.service import parse_chat_request
from sluicegate.services.chat.tables import ChatTurnRow
from sluicegate.services.context import RetrievedChunk

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterator
    from pathlib import Path


def words(text: str) -> int:
    """A stand-in token count: one token per word."""
    return len(text.split())


def chunk(text: str, *, name: str = "guide.md", ordinal: int = 0, score: float = 0.8, page: int | None = None) -> Any:
    return RetrievedChunk(
        document_id=f"doc-{name}",
        file_name=name,
        ordinal=ordinal,
        text=text,
        page=page,
        start_offset=0,
        end_offset=len(text),
        score=score,
    )


def split_stream(text: str, **options: int) -> list[tuple[int, str]]:
    """Feed ``text`` a few characters at a time: (characters fed when a segment came out, segment)."""
    splitter = SentenceSplitter(**options)
    out = []
    for at in range(0, len(text), 3):
        out += [(at + 3, s) for s in splitter.feed(text[at : at + 3])]
    out += [(len(text), s) for s in splitter.flush()]
    return out


# -- sentences ----------------------------------------------------------------------------


def test_sentences_come_out_as_soon_as_the_next_word_starts() -> None:
    text = "Hello there. How are you? I am fine!"
    got = split_stream(text)
    assert [s for _, s in got] == ["Hello there.", "How are you?", "I am fine!"]
    # "Hello there." is complete once the space after it has arrived, not at the end.
    assert got[0][0] <= len("Hello there. ") + 2
    assert got[1][0] <= len("Hello there. How are you? ") + 2


def test_the_first_sentence_is_out_with_its_mark_and_later_ones_wait_for_the_next_word() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Yes") == [] and splitter.feed(" it does") == []
    assert splitter.feed(".") == ["Yes it does."]  # the model's next token is not waited for
    assert splitter.feed(" It boils") == [] and splitter.feed(" fast.") == []  # later sentences wait ...
    assert splitter.feed(" Then") == ["It boils fast."]  # ... for the space of the next word
    for unfinished in ("It costs 3.", "Ask Dr.", "See e.g.", "Plan B."):
        first = SentenceSplitter(first_words=0)
        assert first.feed(unfinished) == [], unfinished  # a number, or an abbreviation, may go on
    assert SentenceSplitter().feed('Really?!"') == ['Really?!"']


def test_numbers_and_abbreviations_do_not_end_a_sentence() -> None:
    text = "Fine. It costs 3.50 dollars e.g. with Dr. Smith's discount. Next one."
    assert [s for _, s in split_stream(text)] == [
        "Fine.",
        "It costs 3.50 dollars e.g. with Dr. Smith's discount.",
        "Next one.",
    ]


def test_a_long_first_sentence_is_cut_early_and_later_ones_are_not() -> None:
    text = (
        "Yes, the warranty covers every part, for two full years. "
        "After that, repairs are charged at cost, with a fixed fee for each visit by our engineers."
    )
    segments = [s for _, s in split_stream(text)]
    assert segments[0] == "Yes, the warranty covers"  # four words, before any clause mark past 12 characters
    assert segments[1] == "every part, for two full years."
    assert segments[2].startswith("After that, repairs")  # whole: only the first is cut early
    by_clause = [s for _, s in split_stream(text, first_words=6)]
    assert by_clause[:2] == ["Yes, the warranty covers every part,", "for two full years."]  # a clause, once 24 long
    # Without a clause mark, the first segment ends after four words.
    unpunctuated = [s for _, s in split_stream("The Zephyr kettle boils one litre of water in ninety seconds. Done.")]
    assert unpunctuated == ["The Zephyr kettle boils", "one litre of water in ninety seconds.", "Done."]
    assert [s for _, s in split_stream("Short, then more words follow here.", first_words=0)] == [
        "Short, then more words follow here."  # "Short," is under 12 characters: no cut
    ]


def test_lines_end_segments_and_text_without_punctuation_is_cut_at_a_space() -> None:
    assert [s for _, s in split_stream("- red\n- blue\n\n**")] == ["- red", "- blue"]
    long = " ".join(["word"] * 100)
    segments = [s for _, s in split_stream(long, max_chars=50)]
    assert all(len(s) <= 50 for s in segments)
    assert " ".join(segments) == long


def test_speakable_drops_markup_and_citations() -> None:
    assert speakable("**Yes** [1], the `price` is [2, 3] # low.") == "Yes , the price is low."


# -- prompts ------------------------------------------------------------------------------


def test_prompt_numbers_the_sources_with_their_files_then_history_then_question() -> None:
    chunks = [chunk("Returns are free for 30 days.", name="policy.pdf", page=2), chunk("Ships in 2 days.")]
    history = [PromptTurn("Do you ship abroad?", "Yes, to 40 countries.")]
    built = build_prompt("Can I return it?", chunks, history, budget=500, count_tokens=words)
    text = built.text
    assert text.startswith(INSTRUCTIONS)
    assert "[1] policy.pdf, page 2\nReturns are free for 30 days." in text
    assert "[2] guide.md\nShips in 2 days." in text
    assert "User: Do you ship abroad?\nAssistant: Yes, to 40 countries." in text
    assert text.endswith("Question: Can I return it?\nAnswer:")
    assert text.index("[1]") < text.index("[2]") < text.index("User:") < text.index("Question:")
    assert built.chunks == chunks
    assert built.turns == history
    assert source_dicts(built.chunks)[0] == {
        "documentId": "doc-policy.pdf",
        "fileName": "policy.pdf",
        "chunk": 0,
        "page": 2,
        "score": 0.8,
    }


def test_prompt_without_context_says_so() -> None:
    built = build_prompt("What is the capital of France?", [], [], budget=500, count_tokens=words)
    assert built.text.startswith(NO_CONTEXT)
    assert "Sources:" not in built.text
    assert built.chunks == []


def test_prompt_stays_within_its_budget_cutting_the_last_chunk_and_dropping_old_turns() -> None:
    chunks = [chunk(" ".join(f"alpha{i}" for i in range(80))), chunk(" ".join(f"beta{i}" for i in range(80)))]
    history = [PromptTurn(f"question {i} " + "x " * 20, f"answer {i} " + "y " * 20) for i in range(10)]
    built = build_prompt("Which one?", chunks, history, budget=230, count_tokens=words)
    assert built.tokens <= 230
    assert len(built.chunks) == 2
    assert "alpha79" in built.text  # the first chunk whole
    assert "beta0" in built.text and "beta79" not in built.text  # the second cut to fit
    assert built.turns and built.turns[-1] == history[-1]  # the newest turns kept
    assert history[0] not in built.turns  # the oldest dropped
    roomy = build_prompt("Which one?", chunks, history, budget=2000, count_tokens=words)
    assert roomy.turns == history
    assert "beta79" in roomy.text


def test_followups_come_from_headings_then_key_phrases_leaving_out_what_was_asked() -> None:
    chunks = [
        chunk("# Warranty Terms\nThe battery pack is covered. The battery pack lasts for years.", score=0.9),
        chunk("Solar Charging\nCharge the battery pack in sunlight with the solar panel.", score=0.5),
    ]
    suggestions = suggest_followups("How long does the warranty last?", chunks)
    assert suggestions == [
        "Tell me more about Warranty Terms.",
        "Tell me more about Solar Charging.",
        "What about battery pack?",
    ]
    assert suggest_followups("How long does the warranty last?", chunks) == suggestions  # deterministic
    asked = suggest_followups("What are the warranty terms for the battery pack?", chunks)
    assert asked == [  # what the question already asked is not offered again
        "Tell me more about Solar Charging.",
        "What else is in guide.md?",  # no other phrase recurs
    ]
    assert suggest_followups("anything", []) == []


# -- the request body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "Request body must be a JSON object"),
        (b"[1]", "Request body must be a JSON object"),
        (b"{", "Request body must be a JSON object"),
        (b'{"chatbotId": "b"}', "query is required"),
        (b'{"query": "  ", "chatbotId": "b"}', "query is required"),
        (b'{"query": 3, "chatbotId": "b"}', "query must be a string"),
        (b'{"query": "hi"}', "chatbotId is required"),
        (b'{"query": "hi", "chatbotId": "b", "sessionId": 7}', "sessionId must be a string"),
        (b'{"query": "hi", "chatbotId": "b", "enableTTS": "yes"}', "enableTTS must be true or false"),
        (b'{"query": "hi", "chatbotId": "b", "audioFormat": "flac"}', "audioFormat must be one of mp3, wav, opus"),
        (b'{"query": "' + b"q" * 4001 + b'", "chatbotId": "b"}', "query is too long: at most 4000 characters"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(body: bytes, error: str) -> None:
    with pytest.raises(APIError) as refused:
        parse_chat_request(body)
    assert refused.value.status == 400
    assert refused.value.message == error


def test_a_good_body_has_defaults() -> None:
    parsed = parse_chat_request(b'{"query": " hi ", "chatbotId": "bot"}')
    assert (parsed.query, parsed.chatbot_id, parsed.session_id, parsed.enable_tts, parsed.audio_format) == (
        "hi",
        "bot",
        None,
        False,
        "mp3",
    )
    assert parse_chat_request(b'{"query": "q", "chatbotId": "b", "enableTTS": true, "audioFormat": "opus"}').enable_tts


# -- memory -------------------------------------------------------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_memory_keeps_the_newest_turns_per_session_and_tenant(store: Store) -> None:
    memory = ChatMemory(store, clock=ManualClock(), turns=3)
    for i in range(5):
        await memory.remember(1, "s1", "chat", f"q{i}", f"a{i}")
    await memory.remember(1, "s2", "chat", "other", "session")
    await memory.remember(2, "s1", "troika", "other", "tenant")
    assert await memory.history(1, "s1") == [PromptTurn(f"q{i}", f"a{i}") for i in (2, 3, 4)]
    assert await memory.history(1, "s2") == [PromptTurn("other", "session")]
    assert await memory.history(2, "s1") == [PromptTurn("other", "tenant")]
    assert await memory.history(1, None) == []
    async with store.session() as session:  # older turns are deleted, not just hidden
        rows = await session.scalar(
            select(func.count()).select_from(ChatTurnRow).where(ChatTurnRow.tenant == 1, ChatTurnRow.session_id == "s1")
        )
    assert rows == 6
    # A second memory (another node) over the same database sees the same turns.
    assert await ChatMemory(store, clock=ManualClock(), turns=3).history(1, "s1") == await memory.history(1, "s1")


async def test_memory_of_zero_turns_remembers_nothing(store: Store) -> None:
    memory = ChatMemory(store, clock=ManualClock(), turns=0)
    await memory.remember(1, "s", "chat", "q", "a")
    assert await memory.history(1, "s") == []


# -- the answer pipeline ------------------------------------------------------------------


class ScriptedGeneration(Generation):
    """Pieces from a list; each waits for ``gate`` when one is given."""

    def __init__(self, pieces: list[str], gate: asyncio.Queue[None] | None, fail: bool) -> None:
        super().__init__()
        self.script = pieces
        self.gate = gate
        self.fail = fail
        self.stopped = False

    async def pieces(self) -> AsyncGenerator[str]:
        for piece in self.script:
            if self.gate is not None:
                await self.gate.get()
            self.usage.completion_tokens += 1
            yield piece
        if self.fail:
            raise ProviderError("the model broke")

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class ScriptedProvider:
    """An in-test LLM provider (this file tests the pipeline, not a model)."""

    pieces: list[str]
    gate: asyncio.Queue[None] | None = None
    fail: bool = False
    name: str = "scripted"
    last: ScriptedGeneration | None = None
    request: GenerationRequest | None = None

    def unavailable_reason(self) -> str | None:
        return None

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def start(self, request: GenerationRequest) -> Generation:
        self.request = request
        self.last = ScriptedGeneration(self.pieces, self.gate, self.fail)
        self.last.usage.prompt_tokens = len(request.prompt.split())
        return self.last


def streamer_for(provider: ScriptedProvider, voice: PiperSynthesizer) -> AnswerStreamer:
    registry = ModelRegistry({"scripted": provider}, {"m": "scripted"}, "m")
    return AnswerStreamer(registry, voice, clock=ManualClock(), max_output_tokens=32)


@pytest.fixture(scope="module")
def voice() -> Iterator[PiperSynthesizer]:
    """One voice for the module: loaded by the first test, then reused."""
    voice = PiperSynthesizer()
    yield voice
    asyncio.run(voice.close())


ANSWER = ["Returns", " are free", " for 30 days.", " Keep", " the receipt,", " please!"]


async def test_text_streams_and_each_sentence_is_spoken_in_order(voice: PiperSynthesizer) -> None:
    provider = ScriptedProvider(ANSWER)
    run = streamer_for(provider, voice).run("prompt", enable_tts=True, audio_format="wav")
    events = [event async for event in run.events()]
    texts = [data for name, data in events if name == "text"]
    audio = [data for name, data in events if name == "audio"]
    assert [t["token"] for t in texts] == ANSWER
    assert texts[-1]["fullText"] == run.text == "".join(ANSWER)
    assert [a["index"] for a in audio] == [0, 1]
    assert [a["sentence"] for a in audio] == ["Returns are free for 30 days.", "Keep the receipt, please!"]
    for item in audio:
        samples, rate = soundfile.read(io.BytesIO(base64.b64decode(item["chunk"])), dtype="int16")
        assert rate == item["sampleRate"] == 22_050
        assert abs(samples.size / rate * 1000 - item["durationMs"]) < 2
        assert np.abs(samples.astype(np.int32)).max() > 5_000
    # Each sentence's audio comes after its text.
    names = [name for name, _ in events]
    assert names.index("audio") > 2
    assert run.usage["completionTokens"] == len(ANSWER)
    assert provider.request is not None and provider.request.options.max_output_tokens == 32
    assert run.outcome == "completed" and run.warnings == []


async def test_the_first_sentence_is_spoken_while_the_model_still_writes(voice: PiperSynthesizer) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    provider = ScriptedProvider(["Hello there.", " And", " more", " text", " follows."], gate=gate)
    run = streamer_for(provider, voice).run("prompt", enable_tts=True, audio_format="mp3")
    events = run.events()
    seen = []
    first: dict[str, Any] = {}
    gate.put_nowait(None)
    gate.put_nowait(None)  # "Hello there." and " And": the first sentence is complete
    async for name, data in events:
        seen.append(name)
        if name == "audio":
            first = data
            break
    # The audio of the first sentence arrived with the model held after two pieces.
    assert seen == ["text", "text", "audio"]
    assert first["sentence"] == "Hello there." and first["format"] == "mp3"
    assert base64.b64decode(first["chunk"])[:2] in (b"\xff\xf3", b"\xff\xf2", b"\xff\xfb")
    for _ in range(3):
        gate.put_nowait(None)
    rest = [name async for name, _ in events]
    assert rest.count("text") == 3 and rest.count("audio") == 1


async def test_leaving_early_stops_the_model(voice: PiperSynthesizer) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    provider = ScriptedProvider(["One.", " Two."], gate=gate)
    run = streamer_for(provider, voice).run("prompt", enable_tts=True)
    gate.put_nowait(None)
    async with contextlib.aclosing(run.events()) as events:
        async for name, _ in events:
            assert name == "text"
            break
    assert provider.last is not None and provider.last.stopped
    assert run.outcome == "cancelled"


async def test_without_a_voice_text_still_streams_with_a_warning(tmp_path: Path) -> None:
    broken = PiperSynthesizer(voice_path=tmp_path / "missing.onnx")
    run = streamer_for(ScriptedProvider(ANSWER), broken).run("prompt", enable_tts=True)
    events = [event async for event in run.events()]
    assert events[0][0] == "progress" and events[0][1]["step"] == "speech"
    assert "SLUICEGATE_TTS_VOICE_PATH" in events[0][1]["message"]
    assert [name for name, _ in events[1:]] == ["text"] * len(ANSWER)
    assert run.text == "".join(ANSWER)
    assert run.warnings == [events[0][1]["message"]]


async def test_a_model_failure_ends_the_answer_with_its_error(voice: PiperSynthesizer) -> None:
    run = streamer_for(ScriptedProvider(["Half."], fail=True), voice).run("prompt")
    seen = []
    with pytest.raises(ProviderError, match="the model broke"):
        async for name, _ in run.events():
            seen.append(name)
    assert seen == ["text"]
    assert run.outcome == "failed"


def test_an_unknown_chat_model_fails_at_start_up(voice: PiperSynthesizer) -> None:
    registry = ModelRegistry({"scripted": ScriptedProvider([])}, {"m": "scripted"}, "m")
    with pytest.raises(ConfigurationError, match="SLUICEGATE_CHAT_MODEL"):
        AnswerStreamer(registry, voice, clock=ManualClock(), max_output_tokens=8, model="nope")
