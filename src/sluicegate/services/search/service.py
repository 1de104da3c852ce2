"""Product catalogs and the searches over them, per tenant.

- Imports (:meth:`SearchService.import_products`) embed every product first, then write
  the rows and bump the catalog's index version in one transaction: an answered import is
  searchable by text (the database's own index, kept in the same transaction) and by
  vector (every node loads rows newer than its copy on its next search).
- :meth:`SearchService.find` is the hybrid search: text hits from the database and vector
  hits from the in-memory :class:`~sluicegate.services.search.catalog.CatalogIndex`, both
  under the same filters, fused by reciprocal rank fusion with a semantic ratio. The
  ``GET /api/products/search/stream`` events are its steps (:meth:`search_events`).
- :meth:`SearchService.aza_events` is semantic search first, text search when nothing
  reaches ``minScore`` or the embedding model is unavailable.
- :meth:`SearchService.market` and :meth:`SearchService.vocabulary` serve the sales agent.

In-memory indexes are kept for the ``max_catalogs`` most recently searched catalogs.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, insert, select, update

from sluicegate.errors import APIError
from sluicegate.providers.embeddings.base import EmbeddingError
from sluicegate.services.retrieval.fusion import reciprocal_rank_fusion
from sluicegate.services.retrieval.vectors import encode_vector
from sluicegate.services.retrieval.versions import bump_version, read_version
from sluicegate.services.search.catalog import CatalogIndex, IndexedRow
from sluicegate.services.search.products import embedding_text, search_text
from sluicegate.services.search.tables import ProductRow
from sluicegate.services.search.text import query_terms, text_hits
from sluicegate.streaming.events import progress

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    import numpy.typing as npt
    from sqlalchemy.ext.asyncio import AsyncSession

    from sluicegate.clock import Clock
    from sluicegate.engines.store import Store
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.services.search.filters import ProductFilters
    from sluicegate.services.search.products import Product
    from sluicegate.streaming.events import NamedEvent

__all__ = ["KIND", "CatalogVocabulary", "SearchOutcome", "SearchService", "check_catalog"]

#: The ``kind`` of catalogs in ``index_versions``.
KIND = "products"
_CATALOG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: Rows per statement when importing (well under SQLite's bound-parameter limit).
_CHUNK = 500
#: Catalogs at least this large search (and load) in a thread, off the event loop.
_THREAD_ABOVE = 5_000
#: Text hits considered by :meth:`SearchService.market`.
_MARKET_TEXT = 1_000


def check_catalog(name: str | None) -> str:
    """A valid catalog name (``default`` when none is given).

    Raises:
        APIError: 400 when the name is not 1-100 letters, digits, ``_``, ``.`` or ``-``.
    """
    if name is None or name == "":
        return "default"
    if not _CATALOG.fullmatch(name):
        raise APIError.invalid_argument(
            "catalog must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class CatalogVocabulary:
    """The categories, colours and sizes the live products of a catalog use (sorted)."""

    categories: list[str]
    colors: list[str]
    sizes: list[str]


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    """A hybrid search's answer: the product cards (best first) and what each step found."""

    products: list[dict[str, Any]]
    total: int
    text_hits: int
    vector_hits: int
    filtered: int

    @property
    def counts(self) -> dict[str, int]:
        """The ``count`` of each progress step."""
        return {
            "text_search": self.text_hits,
            "vector_search": self.vector_hits,
            "filters": self.filtered,
            "ranking": self.total,
        }


@dataclass(slots=True)
class _Hybrid:
    """One hybrid search, step by step (the stream reports each step; text and vector search
    run side by side)."""

    service: SearchService
    tenant: int
    catalog: str
    query: str
    limit: int
    filters: ProductFilters | None
    semantic_ratio: float
    index: CatalogIndex | None = None
    mask: npt.NDArray[np.bool_] | None = None
    embedding: asyncio.Task[npt.NDArray[np.float32]] | None = None
    texts: list[tuple[int, float]] = field(default_factory=list)
    vectors: list[tuple[int, float]] = field(default_factory=list)
    query_vector: npt.NDArray[np.float32] | None = None
    #: The query's embedding when the caller has it already (the sales agent embeds a message once).
    given_vector: npt.NDArray[np.float32] | None = None
    #: The one transaction of the search's statements (the version, the text hits, the cards):
    #: each transaction costs a pool checkout and a commit, about 1 ms on SQLite.
    session: AsyncSession | None = None

    async def start(self, session: AsyncSession) -> None:
        self.session = session
        if self.given_vector is None:
            self.embedding = asyncio.create_task(self.service.embedder.embed([self.query]))
        self.index = await self.service.fresh_index(self.tenant, self.catalog, session=session)
        async with self.index.lock:
            self.mask = self.index.allowed(self.filters)

    def close(self) -> None:
        if self.embedding is not None and not self.embedding.done():
            self.embedding.cancel()

    @property
    def candidates(self) -> int:
        return min(max(self.limit * 3, 50), 300)

    @property
    def filtered(self) -> int:
        assert self.mask is not None  # noqa: S101 -- start() made it
        return int(self.mask.sum())

    async def text(self) -> int:
        assert self.index is not None and self.mask is not None  # noqa: S101 -- start() made them
        fetch = self.candidates * (4 if self.filters and (self.filters.size or self.filters.color) else 1)
        terms = query_terms(self.query)
        assert self.session is not None  # noqa: S101 -- start() set it
        hits = await text_hits(
            self.session, self.tenant, self.catalog, terms, limit=fetch, filters=self.filters, enough=self.limit
        )
        index, mask = self.index, self.mask
        self.texts = [(pk, score) for pk, score in hits if _passes(index, pk, mask)][: self.candidates]
        return len(self.texts)

    async def vector(self) -> int:
        assert self.index is not None  # noqa: S101 -- start() made it
        if self.given_vector is not None:
            self.query_vector = self.given_vector
        else:
            assert self.embedding is not None  # noqa: S101 -- start() made it
            self.query_vector = (await self.embedding)[0]
        self.vectors = await self.service.nearest(self.index, self.query_vector, self.candidates, self.mask)
        return len(self.vectors)

    async def text_and_vector(self) -> tuple[int, int]:
        """:meth:`text` and :meth:`vector` at once (the database's thread and the model's or
        the vector search's run side by side): the number of hits of each."""
        try:
            async with asyncio.TaskGroup() as group:
                texts = group.create_task(self.text())
                vectors = group.create_task(self.vector())
        except BaseExceptionGroup as failed:  # the first failure, as a sequential search raises it
            raise failed.exceptions[0] from None
        return texts.result(), vectors.result()

    async def rank(self) -> SearchOutcome:
        assert self.index is not None and self.query_vector is not None  # noqa: S101 -- vector() ran
        fused = reciprocal_rank_fusion(
            [pk for pk, _ in self.texts], [pk for pk, _ in self.vectors], semantic_ratio=self.semantic_ratio
        )
        fused = [(pk, score) for pk, score in fused if score > 0][: self.limit]
        text_scores = dict(self.texts)
        vector_scores = dict(self.vectors)
        missing = [pk for pk, _ in fused if pk not in vector_scores]
        if missing:
            async with self.index.lock:
                vector_scores.update(
                    (pk, cos)
                    for pk, cos in zip(missing, self.index.vectors.cosines(self.query_vector, missing), strict=True)
                    if cos is not None
                )
        cards = await self.service.cards((pk for pk, _ in fused), session=self.session)
        products = []
        for pk, score in fused:
            card = cards.get(pk)
            if card is None:  # deleted since the index was read
                continue
            card["score"] = round(score, 6)
            card["textScore"] = round(text_scores.get(pk, 0.0), 6)
            card["vectorScore"] = _round(vector_scores.get(pk))
            products.append(card)
        return SearchOutcome(products, len(products), len(self.texts), len(self.vectors), self.filtered)


def _passes(index: CatalogIndex, pk: int, mask: npt.NDArray[np.bool_]) -> bool:
    slot = index.vectors.slot_of(pk)
    return slot is not None and slot < len(mask) and bool(mask[slot])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class SearchService:
    """Catalogs and searches over a store and an embedding model.

    Args:
        store: the database holding ``products`` and ``index_versions``.
        embedder: the embedding model of products and queries.
        clock: timestamps rows.
        max_limit: the largest ``limit`` of a search.
        exact_vectors: products per catalog up to which vector search is exact (HNSW beyond).
        aza_min_score: the default ``minScore`` (cosine) of the semantic search, and the
            relevance floor of :meth:`market`.
        max_catalogs: catalogs kept in memory (least recently searched dropped first).
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        clock: Clock,
        max_limit: int = 100,
        exact_vectors: int = 20_000,
        aza_min_score: float = 0.3,
        max_catalogs: int = 64,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.clock = clock
        self.max_limit = max_limit
        self.exact_vectors = exact_vectors
        self.aza_min_score = aza_min_score
        self.max_catalogs = max_catalogs
        self._indexes: OrderedDict[tuple[int, str], CatalogIndex] = OrderedDict()

    # -- the catalog ----------------------------------------------------------------------

    async def import_products(self, tenant: int, catalog: str, products: Sequence[Product]) -> dict[str, Any]:
        """Store ``products`` (new ids added, known ids replaced) once they are embedded.

        Returns:
            ``{"catalog", "imported", "updated", "total"}``: products stored, how many of
            them replaced a live product, and the live products of the catalog after.

        Raises:
            APIError: 503 when the embedding model is unavailable (nothing is stored).
        """
        try:
            vectors = await self.embedder.embed([embedding_text(product) for product in products])
        except EmbeddingError as exc:
            raise APIError.unavailable(f"The embedding model is unavailable: {exc}") from None
        now = self.clock.now()
        async with self.store.session() as session:
            seq = await bump_version(session, tenant, KIND, catalog)
            existing = await self._existing(session, tenant, catalog, [product.id for product in products])
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            updated = 0
            for product, vector in zip(products, vectors, strict=True):
                values = {
                    "seq": seq,
                    "deleted": False,
                    "name": product.name,
                    "category": product.category,
                    "price": product.price,
                    "stock": product.stock,
                    "data": product.data,
                    "search_text": search_text(product),
                    "embedding": encode_vector(vector),
                    "updated_at": now,
                }
                known = existing.get(product.id)
                if known is None:
                    inserts.append({"tenant": tenant, "catalog": catalog, "id": product.id, **values})
                else:
                    updates.append({"pk": known[0], **values})
                    updated += not known[1]
            for start in range(0, len(inserts), _CHUNK):
                await session.execute(insert(ProductRow), inserts[start : start + _CHUNK])
            for start in range(0, len(updates), _CHUNK):
                await session.execute(update(ProductRow), updates[start : start + _CHUNK])
            total = await self._count(session, tenant, catalog)
        return {"catalog": catalog, "imported": len(products), "updated": updated, "total": total}

    @staticmethod
    async def _existing(
        session: AsyncSession, tenant: int, catalog: str, ids: list[str]
    ) -> dict[str, tuple[int, bool]]:
        found: dict[str, tuple[int, bool]] = {}
        for start in range(0, len(ids), _CHUNK):
            rows = await session.execute(
                select(ProductRow.id, ProductRow.pk, ProductRow.deleted).where(
                    ProductRow.tenant == tenant,
                    ProductRow.catalog == catalog,
                    ProductRow.id.in_(ids[start : start + _CHUNK]),
                )
            )
            found.update((row.id, (row.pk, row.deleted)) for row in rows)
        return found

    @staticmethod
    async def _count(session: AsyncSession, tenant: int, catalog: str) -> int:
        count = await session.scalar(
            select(func.count())
            .select_from(ProductRow)
            .where(ProductRow.tenant == tenant, ProductRow.catalog == catalog, ProductRow.deleted.is_(False))
        )
        return int(count or 0)

    async def delete_product(self, tenant: int, catalog: str, product_id: str) -> dict[str, Any]:
        """Delete a product: its row becomes a tombstone carrying the deletion's ``seq``.

        Raises:
            APIError: 404 when the catalog holds no such product.
        """
        async with self.store.session() as session:
            row = await session.scalar(
                select(ProductRow).where(
                    ProductRow.tenant == tenant,
                    ProductRow.catalog == catalog,
                    ProductRow.id == product_id,
                    ProductRow.deleted.is_(False),
                )
            )
            if row is None:
                raise APIError.not_found(f"No product {product_id!r} in catalog {catalog!r}")
            row.seq = await bump_version(session, tenant, KIND, catalog)
            row.deleted = True
            row.search_text = ""
            row.embedding = b""
            row.updated_at = self.clock.now()
            await session.flush()
            total = await self._count(session, tenant, catalog)
        return {"catalog": catalog, "id": product_id, "deleted": True, "total": total}

    async def list_products(self, tenant: int, catalog: str, *, limit: int, offset: int) -> dict[str, Any]:
        """A page of the catalog's live products, ordered by id."""
        async with self.store.session() as session:
            rows = await session.scalars(
                select(ProductRow.data)
                .where(ProductRow.tenant == tenant, ProductRow.catalog == catalog, ProductRow.deleted.is_(False))
                .order_by(ProductRow.id)
                .limit(limit)
                .offset(offset)
            )
            products = list(rows)
            total = await self._count(session, tenant, catalog)
        return {"catalog": catalog, "products": products, "total": total, "limit": limit, "offset": offset}

    async def cards(self, pks: Any, *, session: AsyncSession | None = None) -> dict[int, dict[str, Any]]:
        """The stored products of these primary keys (live ones), by key (in ``session`` when given)."""
        keys = list(pks)
        if not keys:
            return {}
        query = select(ProductRow.pk, ProductRow.data).where(ProductRow.pk.in_(keys), ProductRow.deleted.is_(False))
        if session is not None:
            return {int(row.pk): dict(row.data) for row in await session.execute(query)}
        async with self.store.session() as own:
            return {int(row.pk): dict(row.data) for row in await own.execute(query)}

    # -- the in-memory indexes -----------------------------------------------------------

    async def fresh_index(self, tenant: int, catalog: str, *, session: AsyncSession | None = None) -> CatalogIndex:
        """The catalog's in-memory index, first brought up to the database's version (read in
        ``session`` when given)."""
        key = (tenant, catalog)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = CatalogIndex(self.embedder.dimensions, exact_limit=self.exact_vectors)
            while len(self._indexes) > self.max_catalogs:
                self._indexes.popitem(last=False)
        self._indexes.move_to_end(key)
        if session is not None:
            version = await read_version(session, tenant, KIND, catalog)
        else:
            async with self.store.session() as own:
                version = await read_version(own, tenant, KIND, catalog)
        if version <= index.seq:
            return index
        async with index.lock:
            if version > index.seq:
                rows = await self._rows_since(tenant, catalog, index.seq, version)
                if len(rows) >= _THREAD_ABOVE:
                    await asyncio.to_thread(index.apply, rows)
                else:
                    index.apply(rows)
                index.seq = version
        return index

    async def _rows_since(self, tenant: int, catalog: str, after: int, upto: int) -> list[IndexedRow]:
        columns = (
            ProductRow.pk,
            ProductRow.deleted,
            ProductRow.category,
            ProductRow.price,
            ProductRow.stock,
            ProductRow.data,
            ProductRow.embedding,
        )
        query = select(*columns).where(
            ProductRow.tenant == tenant, ProductRow.catalog == catalog, ProductRow.seq > after, ProductRow.seq <= upto
        )
        if after == 0:
            query = query.where(ProductRow.deleted.is_(False))
        async with self.store.session() as session:
            result = await session.execute(query.order_by(ProductRow.seq))
            return [
                IndexedRow(
                    pk=int(row.pk),
                    deleted=bool(row.deleted),
                    category=row.category,
                    price=row.price,
                    stock=row.stock,
                    sizes=tuple(row.data.get("sizes", ())),
                    colors=tuple(row.data.get("colors", ())),
                    embedding=row.embedding,
                )
                for row in result
            ]

    async def nearest(
        self, index: CatalogIndex, vector: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_] | None
    ) -> list[tuple[int, float]]:
        """The ``k`` products nearest to ``vector`` among the ``mask`` slots: ``(pk, cosine)``."""
        async with index.lock:
            if len(index) >= _THREAD_ABOVE:
                return await asyncio.to_thread(index.vectors.search, vector, k, allowed=mask)
            return index.vectors.search(vector, k, allowed=mask)

    # -- the searches ----------------------------------------------------------------------

    async def find(
        self,
        tenant: int,
        catalog: str,
        query: str,
        *,
        limit: int = 10,
        filters: ProductFilters | None = None,
        semantic_ratio: float = 0.5,
        vector: npt.NDArray[np.float32] | None = None,
    ) -> SearchOutcome:
        """The hybrid search of ``GET /api/products/search/stream``: product cards, best first.

        Each card is the stored product plus ``score`` (fused, 0..1), ``textScore`` (0..1)
        and ``vectorScore`` (the cosine). ``vector`` is the query's embedding when the caller
        has it already (it is not computed again).

        Raises:
            EmbeddingError: the embedding model is unavailable.
            StoreUnavailable: the database failed.
        """
        run = _Hybrid(
            self, tenant, catalog, query, min(limit, self.max_limit), filters, semantic_ratio, given_vector=vector
        )
        try:
            async with self.store.session() as session:
                await run.start(session)
                await run.text_and_vector()
                return await run.rank()
        finally:
            run.close()

    async def search_events(
        self,
        tenant: int,
        catalog: str,
        query: str,
        *,
        limit: int,
        filters: ProductFilters | None,
        semantic_ratio: float,
    ) -> AsyncIterator[NamedEvent]:
        """:meth:`find`, step by step, as the stream's ``progress``, ``results`` and ``complete`` events."""
        run = _Hybrid(self, tenant, catalog, query, min(limit, self.max_limit), filters, semantic_ratio)
        try:
            async with self.store.session() as session:
                await run.start(session)
                texts, vectors = await run.text_and_vector()
                outcome = await run.rank()
            yield progress("text_search", f"Text search found {texts} results", texts)
            yield progress("vector_search", f"Vector search found {vectors} results", vectors)
            yield progress("filters", f"{run.filtered} products pass the filters", run.filtered)
            yield progress("ranking", f"Ranked {outcome.total} results by reciprocal rank fusion", outcome.total)
            yield "results", {"type": "product_cards", "products": outcome.products, "total": outcome.total}
            yield (
                "complete",
                {
                    "total": outcome.total,
                    "query": query,
                    "catalog": catalog,
                    "filters": (filters.describe() if filters else {}),
                    "semanticRatio": semantic_ratio,
                    "counts": outcome.counts,
                },
            )
        finally:
            run.close()

    async def aza_events(
        self,
        tenant: int,
        catalog: str,
        query: str,
        *,
        limit: int,
        filters: ProductFilters | None,
        min_score: float | None,
    ) -> AsyncIterator[NamedEvent]:
        """Semantic search first (cosine ``similarity`` at least ``min_score``), text search as the fallback."""
        floor = self.aza_min_score if min_score is None else min_score
        limit = min(limit, self.max_limit)
        index = await self.fresh_index(tenant, catalog)
        async with index.lock:
            mask = index.allowed(filters)
        yield progress("semantic_search", "Performing semantic search...")
        vector: npt.NDArray[np.float32] | None = None
        reason = ""
        try:
            vector = (await self.embedder.embed([query]))[0]
        except EmbeddingError as exc:
            reason = f"The embedding model is unavailable ({exc}); falling back to text search"
        hits: list[tuple[int, float]] = []
        if vector is not None:
            hits = [(pk, cos) for pk, cos in await self.nearest(index, vector, limit, mask) if cos >= floor]
            yield progress("semantic_search", f"Semantic search found {len(hits)} results", len(hits))
            reason = f"No product reached minScore {floor:g}; falling back to text search"
        match_type = "semantic"
        products: list[dict[str, Any]] = []
        if hits:
            cards = await self.cards(pk for pk, _ in hits)
            for pk, cos in hits:
                if pk in cards:
                    products.append({**cards[pk], "similarity": round(cos, 6), "matchType": "semantic"})
        else:
            match_type = "text"
            yield progress("text_fallback", reason)
            products = await self._text_cards(index, tenant, catalog, query, limit, filters, mask, vector)
            yield progress("text_fallback", f"Text search found {len(products)} results", len(products))
        yield (
            "results",
            {"type": "product_cards", "products": products, "total": len(products), "matchType": match_type},
        )
        yield (
            "complete",
            {"total": len(products), "query": query, "catalog": catalog, "matchType": match_type, "minScore": floor},
        )

    async def _text_cards(
        self,
        index: CatalogIndex,
        tenant: int,
        catalog: str,
        query: str,
        limit: int,
        filters: ProductFilters | None,
        mask: npt.NDArray[np.bool_],
        vector: npt.NDArray[np.float32] | None,
    ) -> list[dict[str, Any]]:
        fetch = limit * (4 if filters and (filters.size or filters.color) else 1)
        async with self.store.session() as session:
            hits = await text_hits(session, tenant, catalog, query_terms(query), limit=fetch, filters=filters)
        hits = [(pk, score) for pk, score in hits if _passes(index, pk, mask)][:limit]
        cosines: list[float | None] = [None] * len(hits)
        if vector is not None:
            async with index.lock:
                cosines = index.vectors.cosines(vector, [pk for pk, _ in hits])
        cards = await self.cards(pk for pk, _ in hits)
        return [
            {**cards[pk], "textScore": round(score, 6), "similarity": _round(cos), "matchType": "text"}
            for (pk, score), cos in zip(hits, cosines, strict=True)
            if pk in cards
        ]

    async def market(
        self,
        tenant: int,
        catalog: str,
        query: str,
        *,
        filters: ProductFilters | None = None,
        vector: npt.NDArray[np.float32] | None = None,
    ) -> dict[str, Any]:
        """Market figures over the products matching ``query`` (all filtered products when it is blank;
        ``vector`` is the query's embedding when the caller has it already).

        A product matches when it passes ``filters`` and either its cosine with the query
        reaches ``aza_min_score`` or it is a strong text hit (``textScore`` at least 0.5).

        Returns:
            ``{"matchingProducts", "priceRange": {"min", "max", "median"}, "inStock",
            "topCategories": [{"category", "count"}]}`` (prices ``None`` when no match has one).
        """
        index = await self.fresh_index(tenant, catalog)
        async with index.lock:
            mask = index.allowed(filters)
        if query.strip():
            selected = np.zeros(len(mask), dtype=bool)
            async with self.store.session() as session:
                hits = await text_hits(
                    session, tenant, catalog, query_terms(query), limit=_MARKET_TEXT, filters=filters
                )
            if vector is None:
                try:
                    vector = (await self.embedder.embed([query]))[0]
                except EmbeddingError:
                    vector = None
            async with index.lock:
                for pk, score in hits:
                    slot = index.vectors.slot_of(pk)
                    if score >= 0.5 and slot is not None and slot < len(selected):
                        selected[slot] = True
                if vector is not None:
                    sims = await asyncio.to_thread(index.vectors.similarities, vector)
                    selected |= sims[: len(selected)] >= self.aza_min_score
            mask = mask & selected
        async with index.lock:
            return index.summary(mask)

    async def vocabulary(self, tenant: int, catalog: str) -> CatalogVocabulary:
        """The categories, colours and sizes of the catalog's live products (for entity extraction)."""
        index = await self.fresh_index(tenant, catalog)
        async with index.lock:
            live = index.vectors.live_mask()
            return CatalogVocabulary(
                categories=index.categories.vocabulary(live),
                colors=index.colors.vocabulary(live),
                sizes=index.sizes.vocabulary(live),
            )
