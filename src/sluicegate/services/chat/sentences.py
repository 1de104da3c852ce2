"""Cutting a stream of tokens into sentences to speak, as soon as each one is complete.

:class:`SentenceSplitter` is fed the model's pieces and returns the segments that are
ready: a sentence once its ``.``, ``!``, ``?`` (or ``…``, or a line break) is followed
by white space; ``3.5``, ``e.g.`` and ``Dr.`` do not end one. Any segment reaching
:attr:`~SentenceSplitter.max_chars` is cut at its last space, so speech never waits on a
model that forgot punctuation. Pure: no I/O, no clock.

So that the first audio comes quickly, the *first* sentence is out as soon as its mark
arrives (a ``.`` after a word, not after a digit or an abbreviation, at the end of what
was received), without waiting for the next token's space: one token sooner (30-100 ms
here), at the price of a seam in the rare first sentence that is not over (``Node.js``).
And the *first* segment is shorter (a deliberate
trade of one audible seam for latency: the voice takes about 10 ms per character on a
busy core, so a 60-character sentence costs ~0.6 s before its first sound, ~3 words
~0.15 s): it is cut at a clause mark (``,`` ``;`` ``:`` or a spaced dash) once it is
:attr:`~SentenceSplitter.first_clause_chars` long, or after
:attr:`~SentenceSplitter.first_words` words when no sentence end or clause came by then.

:func:`speakable` strips what should not be read aloud (Markdown marks, ``[1]``
citation markers).
"""

from __future__ import annotations

import re

__all__ = ["SentenceSplitter", "speakable"]

_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
#: A sentence end as the last thing received, after a letter (``3.`` may become ``3.5``).
_END_OF_BUFFER = re.compile(r"(?<=[^\W\d_])[.!?…]+[\"')\]]*$")
_CLAUSE = re.compile(r"[,;:]\s|\s[\u2013\u2014-]\s")  # comma, semicolon, colon, or a spaced dash
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "e.g", "i.e", "etc", "no", "fig", "approx"})
_CITATION = re.compile(r"\[(?:source\s*)?\d+(?:\s*,\s*\d+)*\]", re.IGNORECASE)
_MARKUP = re.compile(r"[*_#`>|~]+")
_WORD = re.compile(r"\w")
_SPACE_AFTER_WORD = re.compile(r"(?<=\S)\s")


def speakable(text: str) -> str:
    """``text`` as it should be spoken: without Markdown marks and citation markers."""
    return " ".join(_MARKUP.sub(" ", _CITATION.sub("", text)).split())


class SentenceSplitter:
    """Segments to speak, out of a stream of text pieces (see the module docstring).

    Args:
        first_clause_chars: the first segment is cut at a clause mark once it is this
            long; ``0`` never cuts at clauses.
        min_clause_chars: a clause shorter than this is not cut off on its own.
        first_words: the first segment is cut after this many words at most; ``0``
            never cuts it by words.
        max_chars: a segment this long is cut at its last space.
    """

    def __init__(
        self, *, first_clause_chars: int = 24, min_clause_chars: int = 12, first_words: int = 4, max_chars: int = 300
    ) -> None:
        self.first_clause_chars = first_clause_chars
        self.min_clause_chars = min_clause_chars
        self.first_words = first_words
        self.max_chars = max_chars
        self.emitted = 0
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        """The segments that ``piece`` completed (often none)."""
        self._buffer += piece
        out: list[str] = []
        while (cut := self._next_cut()) is not None:
            self._take(cut, out)
        return out

    def flush(self) -> list[str]:
        """Whatever is left once the text has ended."""
        out: list[str] = []
        self._take(len(self._buffer), out)
        return out

    def _take(self, cut: int, out: list[str]) -> None:
        segment, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
        if _WORD.search(segment):
            out.append(segment)
            self.emitted += 1

    def _next_cut(self) -> int | None:
        buffer = self._buffer
        for match in _END.finditer(buffer):
            if match.group().startswith("\n") or not self._abbreviation(buffer, match.start()):
                return match.end()
        if self.emitted == 0:
            end = _END_OF_BUFFER.search(buffer)
            if end is not None and not self._abbreviation(buffer, end.start()):
                return end.end()
            first = self._first_cut(buffer)
            if first is not None:
                return first
        if len(buffer) >= self.max_chars:
            space = buffer.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None

    def _first_cut(self, buffer: str) -> int | None:
        if self.first_clause_chars and len(buffer) >= self.first_clause_chars:
            for match in _CLAUSE.finditer(buffer, self.min_clause_chars):
                return match.start() + 1
        if self.first_words:
            words = list(_SPACE_AFTER_WORD.finditer(buffer.lstrip()))
            if len(words) >= self.first_words:
                return len(buffer) - len(buffer.lstrip()) + words[self.first_words - 1].start()
        return None

    @staticmethod
    def _abbreviation(buffer: str, at: int) -> bool:
        """Whether the ``.`` at ``at`` ends an abbreviation or sits inside a number, not a sentence."""
        if buffer[at] != ".":
            return False
        word = buffer[:at].rsplit(maxsplit=1)[-1].lower() if buffer[:at].strip() else ""
        return word.lstrip("(\"'") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())
