"""Sentence-aware chunks of extracted text, counted in the embedding model's tokens (pure).

1. **Units.** The text is cut into paragraphs at blank lines; inside a paragraph a Markdown
   heading, list item, table row or block quote starts a unit of its own (and a heading
   ends one), and in line mode (CSV, JSON) every line is a unit. Other single line breaks
   are soft wraps inside a sentence.
2. **Sentences.** A unit is cut after ``.``, ``!``, ``?`` or ``…`` (and closing quotes or
   brackets) followed by white space and a character that is not lower case, except after
   a known abbreviation (``Dr.``, ``e.g.``, ``etc.``...) or a single-letter initial; and
   after the CJK full stop, exclamation and question marks. Headings, table rows and line-mode lines are never cut.
3. **Tokens.** Every sentence is counted with the embedder's own tokenizer (one batch). A
   sentence longer than ``chunk_tokens`` is cut at word boundaries (a word longer than
   that, in halves) into pieces that fit. WordPiece splits at white space first, so the
   tokens of sentences joined by white space are the sum of theirs.
4. **Packing.** Sentences are packed, in order, into chunks of at most ``chunk_tokens``;
   the next chunk repeats the trailing sentences of the last one that fit in ``overlap``
   tokens (never the whole chunk: each chunk starts after the previous one's start). A
   chunk that is at least half full ends before a heading, so sections start chunks.
   Pages (PDF) are hard boundaries: a chunk, and its overlap, stay on one page.

A chunk's text is exactly ``text[start:end]`` (white space between its sentences kept),
and every non-white-space character of the text is in at least one chunk. Its ``tokens``
is the tokenizer's count of that text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Chunk", "TokenCounter", "chunk_text", "split_sentences"]

#: Counts the tokens of many texts at once (``Embedder.count_tokens_batch``).
TokenCounter = Callable[[Sequence[str]], list[int]]
#: A "word" (no white space) longer than this is cut: WordPiece reads it as one ``[UNK]``.
LONG_WORD = 100
#: Characters per token above which a sentence is cut anyway (text that is barely words).
MAX_CHARS_PER_TOKEN = 40


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document's text, ready to embed."""

    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    tokens: int


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    tokens: int
    heading: bool


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_HEADING_LINE = re.compile(r"[ \t]{0,3}#{1,6}[ \t]")
_BLOCK_LINE = re.compile(r"[ \t]*(?:[-*+][ \t]|\d{1,3}[.)][ \t]|\||>)")
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]+")
_WORD_BEFORE = re.compile(r"(\S+?)\.+$")
_WORDS = re.compile(r"\S+")

#: Lower-cased words after which a full stop does not end a sentence.
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "approx",
        "appx",
        "ca",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "est",
        "fig",
        "figs",
        "no",
        "nos",
        "vol",
        "vols",
        "p",
        "pp",
        "ed",
        "eds",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
        "u.s",
        "u.k",
        "a.m",
        "p.m",
        "ph.d",
        "gen",
        "col",
        "lt",
        "sgt",
        "rev",
        "hon",
    ]
)


def split_sentences(
    text: str, start: int = 0, end: int | None = None, *, line_mode: bool = False
) -> list[tuple[int, int]]:
    """The sentences of ``text[start:end]`` as ``(start, end)`` offsets into ``text``, trimmed of
    white space, in order; together they hold every non-white-space character."""
    stop = len(text) if end is None else end
    return [span for span, _ in _sentences(text, start, stop, line_mode=line_mode)]


def _sentences(text: str, start: int, stop: int, *, line_mode: bool) -> Iterator[tuple[tuple[int, int], bool]]:
    for unit_start, unit_end, whole in _units(text, start, stop, line_mode=line_mode):
        if whole:
            yield (unit_start, unit_end), whole and _HEADING_LINE.match(text, unit_start) is not None
            continue
        yield from ((span, False) for span in _cut_sentences(text, unit_start, unit_end))


def _units(text: str, start: int, stop: int, *, line_mode: bool) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, whole)``: paragraphs split into units; ``whole`` units are never cut."""
    position = start
    for match in [*_PARAGRAPH_BREAK.finditer(text, start, stop), None]:
        paragraph_end = stop if match is None else match.start()
        yield from _paragraph_units(text, position, paragraph_end, line_mode=line_mode)
        if match is not None:
            position = match.end()


def _paragraph_units(text: str, start: int, stop: int, *, line_mode: bool) -> Iterator[tuple[int, int, bool]]:
    unit_start: int | None = None
    unit_whole = False
    line_start = start
    while line_start < stop:
        newline = text.find("\n", line_start, stop)
        line_end = stop if newline < 0 else newline
        if text[line_start:line_end].strip():
            heading = _HEADING_LINE.match(text, line_start, line_end) is not None
            block = line_mode or heading or _BLOCK_LINE.match(text, line_start, line_end) is not None
            if unit_start is not None and (block or unit_whole):
                yield from _trimmed(text, unit_start, line_start, whole=unit_whole)
                unit_start = None
            if unit_start is None:
                table_row = text[line_start:line_end].lstrip()[:1] == "|"
                unit_start, unit_whole = line_start, line_mode or heading or table_row
        line_start = line_end + 1
    if unit_start is not None:
        yield from _trimmed(text, unit_start, stop, whole=unit_whole)


def _trimmed(text: str, start: int, stop: int, *, whole: bool) -> Iterator[tuple[int, int, bool]]:
    while start < stop and text[start].isspace():
        start += 1
    while stop > start and text[stop - 1].isspace():
        stop -= 1
    if start < stop:
        yield start, stop, whole


def _cut_sentences(text: str, start: int, stop: int) -> Iterator[tuple[int, int]]:
    sentence_start = start
    for match in _SENTENCE_END.finditer(text, start, stop):
        cut = match.end()
        following = cut
        while following < stop and text[following].isspace():
            following += 1
        if following >= stop or text[following].islower():
            continue
        if text[match.start()] == "." and match.group().rstrip("\"'\u201d\u2019)]") == ".":
            word = _WORD_BEFORE.search(text, sentence_start, cut)
            before = word.group(1).lower().lstrip("([\"'") if word else ""
            if before in ABBREVIATIONS or (len(before) == 1 and before.isalpha()):
                continue
        yield from ((s, e) for s, e, _ in _trimmed(text, sentence_start, cut, whole=False))
        sentence_start = following
    yield from ((s, e) for s, e, _ in _trimmed(text, sentence_start, stop, whole=False))


def chunk_text(
    text: str,
    count_tokens: TokenCounter,
    *,
    chunk_tokens: int,
    overlap: int,
    page_starts: Sequence[int] | None = None,
    line_mode: bool = False,
) -> list[Chunk]:
    """The chunks of ``text`` (see the module docs).

    Args:
        text: the extracted text.
        count_tokens: the embedder's ``count_tokens_batch``.
        chunk_tokens: most tokens in a chunk (at least 1).
        overlap: tokens of trailing sentences repeated at the start of the next chunk
            (less than ``chunk_tokens``).
        page_starts: where each page starts in ``text`` (pages are numbered from 1).
        line_mode: every line is a unit (CSV and JSON text).

    Raises:
        ValueError: ``chunk_tokens`` or ``overlap`` out of range.
    """
    if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
        raise ValueError("chunk_tokens must be at least 1 and overlap in [0, chunk_tokens)")
    sections: list[tuple[int, int, int | None]]
    if page_starts:
        bounds = [*page_starts, len(text)]
        sections = [(bounds[n], bounds[n + 1], n + 1) for n in range(len(page_starts))]
    else:
        sections = [(0, len(text), None)]
    spans: list[tuple[int, int, bool]] = []
    section_of: list[int] = []
    for index, (start, stop, _) in enumerate(sections):
        for (s, e), heading in _sentences(text, start, stop, line_mode=line_mode):
            spans.append((s, e, heading))
            section_of.append(index)
    counts = count_tokens([text[s:e] for s, e, _ in spans]) if spans else []
    grouped: list[list[_Piece]] = [[] for _ in sections]
    for (s, e, heading), tokens, index in zip(spans, counts, section_of, strict=True):
        if tokens <= chunk_tokens and e - s <= chunk_tokens * MAX_CHARS_PER_TOKEN:
            grouped[index].append(_Piece(s, e, tokens, heading))
        else:
            grouped[index].extend(_split_long(text, s, e, count_tokens, chunk_tokens))
    bounds_of: list[tuple[int, int, int | None]] = []
    for (_, _, page), pieces in zip(sections, grouped, strict=True):
        bounds_of.extend((s, e, page) for s, e in _pack(pieces, chunk_tokens, overlap))
    texts = [text[s:e] for s, e, _ in bounds_of]
    tokens_of = count_tokens(texts) if texts else []
    return [
        Chunk(ordinal=n, text=chunk, start=s, end=e, page=page, tokens=tokens)
        for n, ((s, e, page), chunk, tokens) in enumerate(zip(bounds_of, texts, tokens_of, strict=True))
    ]


def _split_long(text: str, start: int, stop: int, count_tokens: TokenCounter, limit: int) -> list[_Piece]:
    """An over-long sentence as pieces of at most ``limit`` tokens, cut between words."""
    words = [(m.start(), m.end()) for m in _WORDS.finditer(text, start, stop)]
    stack = list(zip(words, count_tokens([text[s:e] for s, e in words]), strict=True))[::-1]
    fitting: list[tuple[int, int, int]] = []
    while stack:
        (s, e), tokens = stack.pop()
        if (tokens <= limit and e - s <= LONG_WORD) or e - s <= 1:
            fitting.append((s, e, tokens))
            continue
        middle = s + (e - s) // 2  # a word over the limit (no spaces in it): in halves
        halves = [(s, middle), (middle, e)]
        stack.extend(list(zip(halves, count_tokens([text[a:b] for a, b in halves]), strict=True))[::-1])
    pieces: list[_Piece] = []
    piece_start, piece_end, total = fitting[0][0], fitting[0][1], fitting[0][2]
    for s, e, tokens in fitting[1:]:
        if total + tokens > limit:
            pieces.append(_Piece(piece_start, piece_end, total, False))
            piece_start, total = s, 0
        piece_end = e
        total += tokens
    pieces.append(_Piece(piece_start, piece_end, total, False))
    return pieces


def _pack(pieces: list[_Piece], limit: int, overlap: int) -> list[tuple[int, int]]:
    chunks: list[tuple[int, int]] = []
    first, count = 0, len(pieces)
    while first < count:
        last, total = first, 0
        section = False
        while last < count and total + pieces[last].tokens <= limit:
            if pieces[last].heading and last > first and total * 2 >= limit:
                section = True  # a section starts a chunk of its own, without overlap
                break
            total += pieces[last].tokens
            last += 1
        last = max(last, first + 1)
        chunks.append((pieces[first].start, pieces[last - 1].end))
        if last >= count:
            break
        if section:
            first = last
            continue
        start, carried = last, 0
        while start - 1 > first and carried + pieces[start - 1].tokens <= overlap:
            start -= 1
            carried += pieces[start].tokens
        while start < last and carried + pieces[last].tokens > limit:
            carried -= pieces[start].tokens
            start += 1
        first = start
    return chunks
