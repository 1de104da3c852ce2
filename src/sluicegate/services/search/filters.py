"""Search filters and the parsing of a search request, shared by both search routes.

``category``, ``size`` and ``color`` match case-insensitively (a product matches ``size``
when any of its ``sizes`` is that size); ``minPrice`` / ``maxPrice`` are inclusive and
exclude products without a price; ``inStock=true`` keeps products whose ``stock`` is
above 0 or not given (stock not tracked); ``false`` or absent does not filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FILTER_KEYS", "FilterError", "ProductFilters", "parse_float", "parse_int"]

#: The filter names of the query string and of a JSON ``filters`` object.
FILTER_KEYS = ("category", "size", "color", "minPrice", "maxPrice", "inStock")

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


class FilterError(ValueError):
    """A filter or search parameter is invalid; the message is for clients."""


@dataclass(frozen=True, slots=True)
class ProductFilters:
    """What a search keeps; ``None`` (or ``False`` for ``in_stock``) does not filter."""

    category: str | None = None
    size: str | None = None
    color: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool = False

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return self != ProductFilters()

    def describe(self) -> dict[str, Any]:
        """The set filters by their wire names (for logs and ``complete``)."""
        names = {
            "category": self.category,
            "size": self.size,
            "color": self.color,
            "minPrice": self.min_price,
            "maxPrice": self.max_price,
            "inStock": self.in_stock or None,
        }
        return {key: value for key, value in names.items() if value is not None}

    @classmethod
    def parse(cls, source: Mapping[str, Any], *, strict: bool = False) -> ProductFilters:
        """Filters from query parameters (strings) or a JSON object (strings, numbers, booleans).

        Args:
            source: the mapping to read ``category``, ``size``, ``color``, ``minPrice``,
                ``maxPrice`` and ``inStock`` from.
            strict: refuse keys that are not filters (a JSON ``filters`` object).

        Raises:
            FilterError: a value is not valid, or ``minPrice`` is above ``maxPrice``.
        """
        if strict:
            unknown = sorted(set(source) - set(FILTER_KEYS))
            if unknown:
                raise FilterError(f"Unknown filter {unknown[0]!r}; filters are {', '.join(FILTER_KEYS)}")
        texts = {key: _text(source.get(key), key) for key in ("category", "size", "color")}
        low = parse_float(source.get("minPrice"), "minPrice", low=0.0)
        high = parse_float(source.get("maxPrice"), "maxPrice", low=0.0)
        if low is not None and high is not None and low > high:
            raise FilterError("minPrice must not be above maxPrice")
        return cls(
            category=texts["category"],
            size=texts["size"],
            color=texts["color"],
            min_price=low,
            max_price=high,
            in_stock=_flag(source.get("inStock"), "inStock"),
        )


def _text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FilterError(f"{key} must be a string")
    value = value.strip()
    if len(value) > 200:
        raise FilterError(f"{key} is over 200 characters")
    return value or None


def parse_float(value: Any, key: str, *, low: float | None = None, high: float | None = None) -> float | None:
    """A number from a query parameter or JSON value, ``None`` when absent or blank.

    Raises:
        FilterError: not a finite number, or outside ``low``..``high``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise FilterError(f"{key} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FilterError(f"{key} must be a number") from None
    if not math.isfinite(number):
        raise FilterError(f"{key} must be a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else f"at least {low:g}"
        raise FilterError(f"{key} must be {bounds}")
    return number


def parse_int(value: Any, key: str, *, low: int, high: int) -> int | None:
    """A whole number in ``low``..``high`` from a query parameter or JSON value, ``None`` when absent.

    Raises:
        FilterError: not a whole number, or out of range.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise FilterError(f"{key} must be a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FilterError(f"{key} must be a whole number") from None
    if not low <= number <= high:
        raise FilterError(f"{key} must be between {low} and {high}")
    return number


def _flag(value: Any, key: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FilterError(f"{key} must be true or false")
