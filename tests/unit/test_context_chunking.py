"""Sentence-aware chunking, counted with the embedding model's own tokenizer (no model loaded)."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from sluicegate.providers.embeddings import MiniLMEmbedder
from sluicegate.services.context.chunking import Chunk, chunk_text, split_sentences

COUNT = MiniLMEmbedder().count_tokens_batch


def sentences(text: str, **kwargs: bool) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text, **kwargs)]


def assert_chunk_invariants(text: str, chunks: list[Chunk], limit: int) -> None:
    """Offsets point at the chunk's text, nothing is lost, limits hold, order is kept."""
    assert chunks
    covered = [False] * len(text)
    for n, chunk in enumerate(chunks):
        assert chunk.ordinal == n
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert chunk.tokens == COUNT([chunk.text])[0] <= limit
        for i in range(chunk.start, chunk.end):
            covered[i] = True
        if n:
            assert chunk.start > chunks[n - 1].start  # always moves forward
    lost = [text[i] for i, seen in enumerate(covered) if not seen and not text[i].isspace()]
    assert lost == []


def test_sentences_end_at_stops_but_not_after_abbreviations_initials_or_decimals() -> None:
    text = "Dr. Smith met J. R. Doe on Jan. 5 at 3.30 p.m. They agreed! Was it late? Yes, e.g. after nine."
    assert sentences(text) == [
        "Dr. Smith met J. R. Doe on Jan. 5 at 3.30 p.m. They agreed!",
        "Was it late?",
        "Yes, e.g. after nine.",
    ]


def test_a_stop_before_a_lower_case_word_does_not_end_a_sentence() -> None:
    assert sentences("Use approx. five cups. Then stir.") == ["Use approx. five cups.", "Then stir."]
    assert sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


def test_paragraphs_headings_and_list_items_are_boundaries_and_soft_wraps_are_not() -> None:
    text = "# Title\nIntro line one\ncontinues here. Second.\n\n- first item\n- second item\n\n| a | b |\n| 1 | 2 |"
    assert sentences(text) == [
        "# Title",
        "Intro line one\ncontinues here.",
        "Second.",
        "- first item",
        "- second item",
        "| a | b |",
        "| 1 | 2 |",
    ]


def test_line_mode_makes_every_line_a_unit() -> None:
    text = "name: Trail shoe. Red\nprice: 89\n\nname: Hat"
    assert sentences(text, line_mode=True) == ["name: Trail shoe. Red", "price: 89", "name: Hat"]


def test_cjk_sentence_marks_end_sentences() -> None:
    stop, bang, ask = "\u3002", "\uff01", "\uff1f"
    text = f"今日は晴れ{stop}明日は雨{bang}本当{ask}"
    assert sentences(text) == [f"今日は晴れ{stop}", f"明日は雨{bang}", f"本当{ask}"]


def test_sentences_are_packed_up_to_the_limit_and_the_overlap_repeats_trailing_sentences() -> None:
    text = " ".join(f"Sentence number {n} is about item {n * 7}." for n in range(60))
    chunks = chunk_text(text, COUNT, chunk_tokens=50, overlap=15)
    assert_chunk_invariants(text, chunks, 50)
    units = split_sentences(text)
    for previous, chunk in itertools.pairwise(chunks):
        # Each chunk starts and ends on sentence boundaries.
        assert (chunk.start, True) in {(s, True) for s, _ in units}
        overlap = text[chunk.start : previous.end] if chunk.start < previous.end else ""
        assert COUNT([overlap])[0] <= 15 if overlap else True
        assert overlap, "sentences of about ten tokens fit in a 15-token overlap"
        # The next sentence would not have fitted in the previous chunk.
        following = next(e for s, e in units if s >= previous.end)
        assert COUNT([text[previous.start : following]])[0] > 50
    assert max(c.tokens for c in chunks) > 35  # packed, not one sentence a chunk


def test_no_overlap_means_chunks_tile_the_text() -> None:
    text = " ".join(f"Line {n} holds a fact about the number {n}." for n in range(40))
    chunks = chunk_text(text, COUNT, chunk_tokens=40, overlap=0)
    assert_chunk_invariants(text, chunks, 40)
    assert all(b.start > a.end for a, b in itertools.pairwise(chunks))


def test_an_over_long_sentence_is_cut_at_word_boundaries() -> None:
    text = "Start. " + " ".join(f"word{n}" for n in range(300)) + " end. Finish."
    chunks = chunk_text(text, COUNT, chunk_tokens=32, overlap=8)
    assert_chunk_invariants(text, chunks, 32)
    for chunk in chunks:
        before = text[chunk.start - 1] if chunk.start else " "
        after = text[chunk.end] if chunk.end < len(text) else " "
        assert before.isspace() and after.isspace(), chunk.text


def test_a_word_longer_than_a_chunk_is_cut_into_pieces_that_fit() -> None:
    text = "Intro. " + ",".join(str(n) for n in range(400)) + ". Outro."
    chunks = chunk_text(text, COUNT, chunk_tokens=24, overlap=4)
    assert_chunk_invariants(text, chunks, 24)
    junk = "x" * 5000
    chunks = chunk_text(junk, COUNT, chunk_tokens=32, overlap=0)
    assert "".join(c.text for c in chunks) == junk and all(len(c.text) <= 100 for c in chunks)


def test_pages_are_hard_boundaries_and_each_chunk_has_its_page() -> None:
    pages = ["Page one fact. " * 12, "Page two fact alpha. Page two fact beta.", "Page three. " * 3]
    text = "\n\n".join(page.strip() for page in pages)
    starts = [0]
    for page in pages[:-1]:
        starts.append(starts[-1] + len(page.strip()) + 2)
    chunks = chunk_text(text, COUNT, chunk_tokens=20, overlap=5, page_starts=starts)
    assert_chunk_invariants(text, chunks, 20)
    for chunk in chunks:
        number = chunk.page
        assert number is not None
        end = starts[number] if number < len(starts) else len(text)
        assert starts[number - 1] <= chunk.start < chunk.end <= end
    assert {c.page for c in chunks} == {1, 2, 3}
    [two] = [c for c in chunks if c.page == 2]
    assert two.text == "Page two fact alpha. Page two fact beta."


def test_a_half_full_chunk_ends_before_a_heading_and_the_section_starts_without_overlap() -> None:
    section = "A sentence about the topic at hand. " * 6  # over half a chunk
    text = f"# One\n\n{section}\n\n# Two\n\n{section}"
    chunks = chunk_text(text, COUNT, chunk_tokens=100, overlap=20)
    assert_chunk_invariants(text, chunks, 100)
    assert [c.text.split("\n")[0] for c in chunks] == ["# One", "# Two"]


def test_chunking_a_random_document_keeps_every_invariant() -> None:
    rng = random.Random(7)
    words = [
        "the",
        "kettle",
        "boils",
        "water",
        "fast",
        "and",
        "the",
        "warranty",
        "covers",
        "rust",
        "for",
        "five",
        "years",
        "Dr.",
        "e.g.",
        "3.5",
    ]
    paragraphs = []
    for _ in range(30):
        sentences_ = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) + "." for _ in range(5)]
        prefix = rng.choice(["", "# ", "- ", "## "])
        paragraphs.append(prefix + " ".join(sentences_))
    text = "\n\n".join(paragraphs)
    for limit, overlap in [(16, 0), (64, 16), (200, 40), (256, 255)]:
        assert_chunk_invariants(text, chunk_text(text, COUNT, chunk_tokens=limit, overlap=overlap), limit)


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_bad_limits_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("Some text.", COUNT, chunk_tokens=size, overlap=overlap)


def test_whitespace_between_sentences_is_kept_inside_a_chunk() -> None:
    text = "First line.\nSecond line.\n\nThird paragraph."
    [chunk] = chunk_text(text, COUNT, chunk_tokens=100, overlap=10)
    assert chunk.text == text and (chunk.start, chunk.end) == (0, len(text))
    assert re.search(r"\n\n", chunk.text)
