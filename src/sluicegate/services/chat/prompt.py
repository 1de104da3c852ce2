"""The grounded prompt of a chat answer, and the follow-up questions offered after it.

:func:`build_prompt` writes one plain-text prompt (the local provider wraps it in the
model's chat template)::

    You answer questions for a chatbot from its documents. ...
    Sources:
    [1] guide.pdf, page 2
    <chunk text>
    ...
    Conversation so far:
    User: <earlier question>
    Assistant: <earlier answer>
    Question: <the question>
    Answer:

It stays within a token budget (the model's context less the answer's tokens), counted
with the caller's tokenizer: the question and instructions always; then up to a third
of what is left for the newest earlier turns (oldest dropped first); then the chunks in
rank order, the last one cut at a word boundary to fit, and any room the chunks leave
goes back to older turns. With no chunks, the prompt says that nothing was found, and
the model says so.

:func:`suggest_followups` derives follow-up questions from the sources, without another
model call (it would cost a second generation on the one local model): the headings in
the chunks (Markdown ``#`` lines, or short title-like lines) first, then the key
phrases (pairs of adjacent content words, or single words, that occur more than once
in the chunks, the most frequent first, weighted by retrieval score), then the first
source's file, leaving out what the question already asked.
Deterministic: the same sources give the same suggestions.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["BuiltPrompt", "PromptTurn", "SourceChunk", "build_prompt", "source_dicts", "suggest_followups"]

INSTRUCTIONS = (
    "You answer questions for a chatbot from its documents. Use only the numbered sources below and the "
    "conversation so far; cite sources like [1]. If the sources do not answer the question, say that you do not know."
)
NO_CONTEXT = (
    "You answer questions for a chatbot from its documents, but no document matched this question. "
    "Say that its documents do not cover it, then answer briefly if you can."
)


class SourceChunk(Protocol):
    """What a prompt needs of a retrieved chunk (``sluicegate.services.context.RetrievedChunk``)."""

    @property
    def document_id(self) -> str: ...
    @property
    def file_name(self) -> str: ...
    @property
    def ordinal(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class PromptTurn:
    """One earlier exchange of the session."""

    query: str
    answer: str


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    """A prompt and what went into it."""

    text: str
    #: The chunks in the prompt, in the order they are numbered (the last may be cut).
    chunks: list[SourceChunk]
    #: The earlier turns in the prompt, oldest first.
    turns: list[PromptTurn]
    #: The prompt's size in the caller's tokens.
    tokens: int


def _source_block(number: int, chunk: SourceChunk, text: str) -> str:
    where = f", page {chunk.page}" if chunk.page is not None else ""
    return f"[{number}] {chunk.file_name}{where}\n{text.strip()}\n"


def _turn_block(turn: PromptTurn) -> str:
    return f"User: {turn.query.strip()}\nAssistant: {turn.answer.strip()}\n"


def _cut_to(text: str, tokens: int, count: Callable[[str], int]) -> str:
    """The longest word-boundary prefix of ``text`` within ``tokens``."""
    words = text.split()
    low, high = 0, len(words)
    while low < high:  # binary search on the number of words
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid])) <= tokens:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low])


def build_prompt(
    question: str,
    chunks: Sequence[SourceChunk],
    history: Sequence[PromptTurn],
    *,
    budget: int,
    count_tokens: Callable[[str], int],
    min_chunk_tokens: int = 24,
) -> BuiltPrompt:
    """The grounded prompt of ``question`` within ``budget`` tokens (see the module docstring)."""
    head = INSTRUCTIONS if chunks else NO_CONTEXT
    tail = f"Question: {question.strip()}\nAnswer:"
    used = count_tokens(head) + count_tokens(tail) + 8  # the section titles and line breaks
    room = max(0, budget - used)
    turn_cost = [count_tokens(_turn_block(turn)) for turn in history]
    kept_turns = _newest_within(turn_cost, room // 3)
    room -= sum(turn_cost[i] for i in kept_turns)
    blocks: list[str] = []
    kept_chunks: list[SourceChunk] = []
    for chunk in chunks:
        block = _source_block(len(blocks) + 1, chunk, chunk.text)
        cost = count_tokens(block)
        if cost > room:
            if room - (cost - count_tokens(chunk.text)) < min_chunk_tokens:  # too little left to be useful
                break
            block = _source_block(
                len(blocks) + 1, chunk, _cut_to(chunk.text, room - (cost - count_tokens(chunk.text)), count_tokens)
            )
            cost = count_tokens(block)
            if cost > room:
                break
        blocks.append(block)
        kept_chunks.append(chunk)
        room -= cost
    # Room the chunks left goes back to older turns.
    more = _newest_within(turn_cost, room + sum(turn_cost[i] for i in kept_turns))
    turns = [history[i] for i in sorted(more)]
    parts = [head, ""]
    if blocks:
        parts += ["Sources:", *blocks]
    if turns:
        parts += ["Conversation so far:", *(_turn_block(turn) for turn in turns)]
    parts.append(tail)
    text = "\n".join(parts)
    return BuiltPrompt(text=text, chunks=kept_chunks, turns=turns, tokens=count_tokens(text))


def _newest_within(costs: list[int], room: int) -> list[int]:
    """Indexes of the newest entries (the end of ``costs``) whose costs fit ``room``, contiguous."""
    kept: list[int] = []
    for index in range(len(costs) - 1, -1, -1):
        if costs[index] > room:
            break
        room -= costs[index]
        kept.append(index)
    return kept


def source_dicts(chunks: Sequence[SourceChunk]) -> list[dict[str, object]]:
    """The ``sources`` of the ``complete`` event."""
    return [
        {
            "documentId": chunk.document_id,
            "fileName": chunk.file_name,
            "chunk": chunk.ordinal,
            "page": chunk.page,
            "score": round(float(chunk.score), 4),
        }
        for chunk in chunks
    ]


# -- follow-up questions ------------------------------------------------------------------

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_WORDS = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
_STOP = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "one",
        "two",
        "may",
        "must",
        "shall",
        "might",
        "within",
        "without",
        "per",
        "via",
        "page",
        "file",
    ]
)


def _title_like(line: str) -> bool:
    words = line.split()
    return (
        1 <= len(words) <= 8
        and len(line) <= 60
        and not line.rstrip().endswith((".", "!", "?", ",", ";", ":"))
        and all(word[:1].isupper() or word.lower() in _STOP or not word[:1].isalpha() for word in words)
    )


def _headings(text: str) -> list[str]:
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _HEADING.match(line)
        if match:
            found.append(match.group(1).strip())
        elif _title_like(line.strip()) and index + 1 < len(lines) and lines[index + 1].strip():
            found.append(line.strip())
    return found


def _key_phrases(chunks: Sequence[SourceChunk]) -> list[str]:
    """Phrases that occur more than once in the chunks, the most frequent first (score-weighted)."""
    weights: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(phrase: str, weight: float) -> None:
        weights[phrase] = weights.get(phrase, 0.0) + weight
        counts[phrase] = counts.get(phrase, 0) + 1

    for chunk in chunks:
        weight = max(float(chunk.score), 0.05)
        words = [word.lower() for word in _WORDS.findall(chunk.text)]
        for first, second in itertools.pairwise(words):
            if first not in _STOP and second not in _STOP and len(first) > 2 and len(second) > 2:
                add(f"{first} {second}", 2 * weight)
        for word in words:
            if word not in _STOP and len(word) > 3:
                add(word, weight)
    recurring = [(phrase, weight) for phrase, weight in weights.items() if counts[phrase] > 1]
    return [phrase for phrase, _ in sorted(recurring, key=lambda item: (-item[1], item[0]))]


def suggest_followups(question: str, chunks: Sequence[SourceChunk], *, limit: int = 3) -> list[str]:
    """Up to ``limit`` follow-up questions from the sources (see the module docstring)."""
    asked = {word.lower() for word in _WORDS.findall(question)}
    out: list[str] = []
    seen: set[str] = set()

    def offer(topic: str, template: str) -> None:
        key = topic.lower()
        words = {word.lower() for word in _WORDS.findall(topic)} - _STOP
        if len(out) >= limit or not words or words <= asked or any(key in s or s in key for s in seen):
            return
        seen.add(key)
        out.append(template.format(topic))

    for chunk in chunks:
        for heading in _headings(chunk.text):
            offer(heading, "Tell me more about {}.")
    for phrase in _key_phrases(chunks):
        offer(phrase, "What about {}?")
    if chunks:
        offer(chunks[0].file_name, "What else is in {}?")
    return out
