"""One catalog in memory: its vectors and, per slot, what filters read.

A :class:`CatalogIndex` mirrors the live rows of one (tenant, catalog) up to ``seq``: a
:class:`~sluicegate.services.retrieval.vectors.VectorIndex` keyed by the rows' primary
keys, and per-slot prices, stock and facets (category, sizes, colours) from which a
filter becomes a boolean mask over slots in a few vector operations. The database is the
source of truth; :meth:`CatalogIndex.apply` takes the rows written since ``seq``
(:mod:`sluicegate.services.retrieval.versions`), deleted ones included, so any node
catches up with imports made on another.

Not thread-safe: the owner holds :attr:`CatalogIndex.lock` around :meth:`apply` and searches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sluicegate.services.retrieval.vectors import VectorIndex, decode_vectors

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy.typing as npt

    from sluicegate.services.search.filters import ProductFilters

__all__ = ["CatalogIndex", "IndexedRow"]


@dataclass(frozen=True, slots=True)
class IndexedRow:
    """What the in-memory index needs of a product row."""

    pk: int
    deleted: bool
    category: str | None
    price: float | None
    stock: int | None
    sizes: tuple[str, ...]
    colors: tuple[str, ...]
    embedding: bytes


class _Facet:
    """A multi-valued field: for each value (case-folded) a boolean array over slots."""

    def __init__(self) -> None:
        self._bits: dict[str, npt.NDArray[np.bool_]] = {}
        self._names: dict[str, str] = {}
        self._of_slot: dict[int, tuple[str, ...]] = {}
        self._capacity = 0

    def grow(self, capacity: int) -> None:
        if capacity <= self._capacity:
            return
        new = max(capacity, self._capacity * 2, 1024)
        for value, bits in self._bits.items():
            grown = np.zeros(new, dtype=bool)
            grown[: len(bits)] = bits
            self._bits[value] = grown
        self._capacity = new

    def assign(self, slot: int, values: Iterable[str]) -> None:
        for old in self._of_slot.pop(slot, ()):
            self._bits[old][slot] = False
        keys = []
        for value in values:
            key = value.casefold()
            if key not in self._bits:
                self._bits[key] = np.zeros(self._capacity, dtype=bool)
                self._names[key] = value
            self._bits[key][slot] = True
            keys.append(key)
        if keys:
            self._of_slot[slot] = tuple(keys)

    def mask(self, value: str, slots: int) -> npt.NDArray[np.bool_]:
        bits = self._bits.get(value.casefold())
        if bits is None:
            return np.zeros(slots, dtype=bool)
        return bits[:slots]

    def values_of(self, slot: int) -> tuple[str, ...]:
        return tuple(self._names[key] for key in self._of_slot.get(slot, ()))

    def vocabulary(self, live: npt.NDArray[np.bool_]) -> list[str]:
        """Display names of the values some live slot holds, sorted case-insensitively."""
        slots = len(live)
        names = [self._names[key] for key, bits in self._bits.items() if bool((bits[:slots] & live).any())]
        return sorted(names, key=str.casefold)

    def counts(self, selected: npt.NDArray[np.bool_]) -> list[tuple[str, int]]:
        slots = len(selected)
        found = [(self._names[key], int((bits[:slots] & selected).sum())) for key, bits in self._bits.items()]
        return [(name, count) for name, count in found if count]


class CatalogIndex:
    """The in-memory copy of one catalog (see the module docs).

    Args:
        dimensions: the embedding model's vector length.
        exact_limit: products up to which vector search is exact (HNSW beyond).
    """

    def __init__(self, dimensions: int, *, exact_limit: int) -> None:
        self.vectors = VectorIndex(dimensions, exact_limit=exact_limit)
        #: The ``seq`` of the newest write applied.
        self.seq = 0
        self.lock = asyncio.Lock()
        self._price: npt.NDArray[np.float64] = np.zeros(0)
        self._stock: npt.NDArray[np.float64] = np.zeros(0)
        self.categories = _Facet()
        self.sizes = _Facet()
        self.colors = _Facet()

    def __len__(self) -> int:
        return len(self.vectors)

    def _grow(self, slots: int) -> None:
        if slots > len(self._price):
            new = max(slots, len(self._price) * 2, 1024)
            for name in ("_price", "_stock"):
                old = getattr(self, name)
                grown = np.full(new, np.nan)
                grown[: len(old)] = old
                setattr(self, name, grown)
        for facet in (self.categories, self.sizes, self.colors):
            facet.grow(slots)

    def apply(self, rows: Sequence[IndexedRow]) -> None:
        """Apply rows written since :attr:`seq`: live ones are added or replaced, deleted ones removed."""
        gone = [row.pk for row in rows if row.deleted]
        if gone:
            for pk in gone:
                slot = self.vectors.slot_of(pk)
                if slot is not None:
                    self._clear(slot)
            self.vectors.remove(gone)
        live = [row for row in rows if not row.deleted]
        if not live:
            return
        matrix = decode_vectors([row.embedding for row in live], self.vectors.dimensions)
        slots = self.vectors.upsert([row.pk for row in live], matrix)
        self._grow(self.vectors.slots)
        for slot, row in zip(slots, live, strict=True):
            self._price[slot] = np.nan if row.price is None else row.price
            self._stock[slot] = np.nan if row.stock is None else row.stock
            self.categories.assign(slot, [row.category] if row.category else [])
            self.sizes.assign(slot, row.sizes)
            self.colors.assign(slot, row.colors)

    def _clear(self, slot: int) -> None:
        self._price[slot] = np.nan
        self._stock[slot] = np.nan
        for facet in (self.categories, self.sizes, self.colors):
            facet.assign(slot, [])

    def allowed(self, filters: ProductFilters | None) -> npt.NDArray[np.bool_]:
        """The live slots that pass ``filters``."""
        used = self.vectors.slots
        mask = self.vectors.live_mask()
        if filters is None or not filters.active:
            return mask
        if filters.category is not None:
            mask &= self.categories.mask(filters.category, used)
        if filters.size is not None:
            mask &= self.sizes.mask(filters.size, used)
        if filters.color is not None:
            mask &= self.colors.mask(filters.color, used)
        price = self._price[:used]
        with np.errstate(invalid="ignore"):
            if filters.min_price is not None:
                mask &= price >= filters.min_price
            if filters.max_price is not None:
                mask &= price <= filters.max_price
            if filters.in_stock:
                stock = self._stock[:used]
                mask &= np.isnan(stock) | (stock > 0)
        return mask

    def passes(self, pk: int, mask: npt.NDArray[np.bool_]) -> bool:
        """Whether the product ``pk`` is live and its slot is set in ``mask``."""
        slot = self.vectors.slot_of(pk)
        return slot is not None and bool(mask[slot])

    def summary(self, slots: npt.NDArray[np.bool_]) -> dict[str, Any]:
        """Market figures over the selected slots: count, price range, in stock, top categories."""
        price = self._price[: len(slots)][slots]
        price = price[~np.isnan(price)]
        stock = self._stock[: len(slots)][slots]
        in_stock = int((np.isnan(stock) | (stock > 0)).sum())
        categories = sorted(self.categories.counts(slots), key=lambda item: (-item[1], item[0].casefold()))
        price_range = (
            {"min": float(price.min()), "max": float(price.max()), "median": float(np.median(price))}
            if len(price)
            else {"min": None, "max": None, "median": None}
        )
        return {
            "matchingProducts": int(slots.sum()),
            "priceRange": price_range,
            "inStock": in_stock,
            "topCategories": [{"category": name, "count": count} for name, count in categories[:5]],
        }
