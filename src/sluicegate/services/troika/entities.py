"""Entities of a shopper's message: category, colour, size and budget.

Categories, colours and sizes are matched against the catalog's own vocabulary (what its
products carry), word by word, case-insensitively, singular or plural (``lehengas``
finds ``Lehenga``); colours also against a short list of common colour words, sizes also
against the usual letter sizes. A budget is read from phrases such as ``under 5000``,
``below $50``, ``less than ₹3,000``, ``within 2k``, ``between 2000 and 5000``,
``around 40``, ``budget of 100``; ``maxPrice`` / ``minPrice`` are what the search filters
take. Numbers with ``k`` are thousands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["COMMON_COLOURS", "Entities", "extract_entities"]

COMMON_COLOURS = (
    "red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "brown",
    "grey", "gray", "gold", "silver", "maroon", "navy", "beige", "cream", "teal", "ivory",
)  # fmt: skip
_SIZE_WORDS = {"small": "S", "medium": "M", "large": "L"}
_NUMBER = r"(?:rs\.?|inr|usd|eur|[$₹€£])?\s*(\d[\d,]*(?:\.\d+)?)\s*(k)?"
_BETWEEN = re.compile(rf"between\s+{_NUMBER}\s+(?:and|to|-)\s+{_NUMBER}", re.IGNORECASE)
_MAX = re.compile(rf"(?:under|below|less than|cheaper than|within|up to|upto|max(?:imum)?|at most)\s+{_NUMBER}", re.I)
_MIN = re.compile(rf"(?:over|above|more than|at least|min(?:imum)?)\s+{_NUMBER}", re.IGNORECASE)
_AROUND = re.compile(rf"(?:around|about|approximately|budget(?: of| is)?|for)\s+{_NUMBER}", re.IGNORECASE)
_SIZE = re.compile(r"\bsize\s+([a-z0-9]{1,4})\b", re.IGNORECASE)
#: A letter size written as one, in capitals (``in M``, ``an XL``): ``s`` of ``it's`` is not one.
_CAPITAL_SIZE = re.compile(r"(?<![A-Za-z'])(XXS|XS|S|M|L|XL|XXL|XXXL)(?![A-Za-z'])")
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _amount(digits: str, thousands: str | None) -> float:
    value = float(digits.replace(",", ""))
    return value * 1000 if thousands else value


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


@dataclass(slots=True)
class Entities:
    category: str | None = None
    color: str | None = None
    size: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``entities`` of the ``intent`` event (only what was found)."""
        found: dict[str, Any] = {}
        if self.category is not None:
            found["category"] = self.category
        if self.color is not None:
            found["color"] = self.color
        if self.size is not None:
            found["size"] = self.size
        if self.min_price is not None or self.max_price is not None:
            found["budget"] = {"min": self.min_price, "max": self.max_price}
        return found


def _budget(text: str, entities: Entities) -> None:
    if found := _BETWEEN.search(text):
        low, high = _amount(found[1], found[2]), _amount(found[3], found[4])
        entities.min_price, entities.max_price = min(low, high), max(low, high)
        return
    if found := _MAX.search(text):
        entities.max_price = _amount(found[1], found[2])
    if found := _MIN.search(text):
        entities.min_price = _amount(found[1], found[2])
    if entities.min_price is None and entities.max_price is None and (found := _AROUND.search(text)):
        value = _amount(found[1], found[2])
        entities.min_price, entities.max_price = round(value * 0.8, 2), round(value * 1.2, 2)


def _match(words: list[str], vocabulary: list[str]) -> str | None:
    """The vocabulary entry whose words all appear in ``words`` (longest entry first)."""
    present = set(words) | {_singular(w) for w in words}
    for entry in sorted(vocabulary, key=len, reverse=True):
        parts = [_singular(w) for w in _WORD.findall(entry.lower())]
        if parts and all(p in present for p in parts):
            return entry
    return None


def extract_entities(
    text: str, *, categories: Sequence[str] = (), colors: Sequence[str] = (), sizes: Sequence[str] = ()
) -> Entities:
    """Category, colour, size and budget found in ``text``, with the catalog's vocabulary."""
    words = _WORD.findall(text.lower())
    entities = Entities()
    entities.category = _match(words, list(categories))
    entities.color = _match(words, list(colors)) or next((c for c in COMMON_COLOURS if c in words), None)
    entities.size = _size(text, words, sizes)
    _budget(text, entities)
    return entities


def _size(text: str, words: list[str], sizes: Sequence[str]) -> str | None:
    if found := _SIZE.search(text):
        return found[1].upper()
    if found := _CAPITAL_SIZE.search(text):
        return found[1]
    catalog_sizes = {s.lower(): s for s in sizes if len(s) > 1}  # one-letter sizes only as above
    for word in words:
        if word in catalog_sizes:
            return catalog_sizes[word]
        if word in _SIZE_WORDS:
            return _SIZE_WORDS[word]
    return None
