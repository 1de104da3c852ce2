"""The search service on a real database and the real embedding model, SQLite and PostgreSQL alike.

Every test gets a fresh database (``database_url``) and imports the 30-product fixture
catalog; both databases must find the same products for the same text queries.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from sluicegate.clock import SystemClock
from sluicegate.engines.store import Store
from sluicegate.providers.embeddings import MiniLMEmbedder
from sluicegate.services.retrieval.versions import read_version
from sluicegate.services.search.filters import ProductFilters
from sluicegate.services.search.products import parse_products
from sluicegate.services.search.service import KIND, SearchService
from sluicegate.services.search.tables import ProductRow
from sluicegate.services.search.text import query_terms, text_hits

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "products.json"
PRODUCTS = parse_products(json.loads(FIXTURE.read_text())["products"])

#: Text queries and the products either database must match (any word, stemmed).
TEXT_MATCHES = {
    "silk saree": {"sr-001", "sr-002", "sr-003", "sr-004", "sr-005", "lh-001", "lh-004", "kt-004", "sw-001",
                   "dp-002", "ac-001", "ac-003", "dp-001"},
    "leather juttis": {"fw-001", "fw-002"},
    "winter shawls": {"ac-002", "lh-003"},
    "weddings": {"lh-001", "lh-003", "sr-001", "kt-004", "sw-001", "jw-003", "jw-004", "fw-003", "kd-001"},
    "the of and": set(),
}  # fmt: skip


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    model = MiniLMEmbedder()
    yield model
    asyncio.run(model.close())


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def service(store: Store, embedder: MiniLMEmbedder) -> SearchService:
    service = SearchService(store, embedder, clock=SystemClock(), exact_vectors=20)
    assert await service.import_products(1, "default", PRODUCTS) == {
        "catalog": "default",
        "imported": 30,
        "updated": 0,
        "total": 30,
    }
    return service


async def test_both_databases_match_the_same_products_for_the_same_words(service: SearchService) -> None:
    for query, expected in TEXT_MATCHES.items():
        async with service.store.session() as session:
            hits = await text_hits(session, 1, "default", query_terms(query), limit=100)
        ids = {card["id"] for card in (await service.cards(pk for pk, _ in hits)).values()}
        assert ids == expected, query
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        assert not scores or (scores[0] == 1.0 and all(0.0 <= s <= 1.0 for s in scores))


async def test_products_with_every_word_come_first_then_without_the_commonest_then_any(service: SearchService) -> None:
    async def ids(query: str, enough: int | None = None) -> list[str]:
        async with service.store.session() as session:
            hits = await text_hits(session, 1, "default", query_terms(query), limit=100, enough=enough)
        cards = await service.cards(pk for pk, _ in hits)
        return [cards[pk]["id"] for pk, _ in hits]

    silk, saree = set(await ids("silk")), set(await ids("saree"))
    both = silk & saree
    rare, common = sorted([("silk", silk), ("saree", saree)], key=lambda word: len(word[1]))
    assert 2 <= len(both) < len(rare[1]) < len(common[1]) < len(silk | saree)
    query = f"{common[0]} {rare[0]}"  # the commoner word first: the order of the words does not decide
    assert set(await ids(query, enough=len(both))) == both
    # Too few with both words: the commonest is dropped (Meilisearch's "frequency" strategy) ...
    fewer = await ids(query, enough=len(both) + 1)
    assert set(fewer[: len(both)]) == both and set(fewer) == rare[1]
    # ... a word no product has is dropped before any other ...
    assert await ids(f"{common[0]} zqxwv {rare[0]}", enough=len(both) + 1) == fewer
    # ... and any word only when the rarest word alone is not enough.
    anyword = await ids(query, enough=len(rare[1]) + 1)
    assert set(anyword[: len(both)]) == both and set(anyword[: len(rare[1])]) == rare[1]
    assert set(anyword) == silk | saree


async def test_a_products_own_name_ranks_it_first_with_sane_scores(service: SearchService) -> None:
    outcome = await service.find(1, "default", "Kanjeevaram Silk Saree Temple Border", limit=5)
    first = outcome.products[0]
    assert first["id"] == "sr-002"
    assert first["score"] == pytest.approx(1.0) and first["textScore"] == pytest.approx(1.0)
    assert 0.6 < first["vectorScore"] <= 1.0
    assert all(0.0 <= p["score"] <= first["score"] for p in outcome.products)
    assert [p["score"] for p in outcome.products] == sorted((p["score"] for p in outcome.products), reverse=True)
    assert first["price"] == 26500 and first["currency"] == "INR"  # the stored product, as imported
    assert outcome.counts["ranking"] == outcome.total == 5


async def test_filters_hold_on_every_result(service: SearchService) -> None:
    filters = ProductFilters(size="m", min_price=3000, max_price=40000, in_stock=True)
    outcome = await service.find(1, "default", "festive outfit", limit=20, filters=filters)
    assert outcome.products
    for product in outcome.products:
        assert "M" in product["sizes"] and 3000 <= product["price"] <= 40000 and product["stock"] > 0
    assert "lh-003" not in {p["id"] for p in outcome.products}  # size M but out of stock
    assert outcome.filtered == 5  # products of size M, in stock, priced 3000-40000
    red = await service.find(1, "default", "wedding", limit=20, filters=ProductFilters(color="RED", category="lehenga"))
    assert [p["id"] for p in red.products] == ["lh-001"]


async def test_a_second_node_learns_of_imports_updates_and_deletions_through_the_database(
    service: SearchService, embedder: MiniLMEmbedder
) -> None:
    other = SearchService(service.store, embedder, clock=SystemClock())
    assert (await other.find(1, "default", "pashmina", limit=1)).products[0]["id"] == "ac-002"
    shawl = next(p for p in PRODUCTS if p.id == "ac-002")
    cheaper = parse_products([{**shawl.data, "price": 9999, "name": "Pashmina Shawl (sale)"}])
    answer = await service.import_products(1, "default", cheaper)
    assert answer == {"catalog": "default", "imported": 1, "updated": 1, "total": 30}
    first = (await other.find(1, "default", "pashmina", limit=1)).products[0]
    assert (first["id"], first["price"], first["name"]) == ("ac-002", 9999, "Pashmina Shawl (sale)")
    deleted = await service.delete_product(1, "default", "ac-002")
    assert deleted == {"catalog": "default", "id": "ac-002", "deleted": True, "total": 29}
    assert "ac-002" not in {p["id"] for p in (await other.find(1, "default", "pashmina shawl", limit=30)).products}
    async with service.store.session() as session:
        row = await session.scalar(select(ProductRow).where(ProductRow.id == "ac-002"))
        assert row is not None and row.deleted and row.seq == await read_version(session, 1, KIND, "default")
    again = await service.import_products(1, "default", [shawl])  # a deleted id comes back as new
    assert again == {"catalog": "default", "imported": 1, "updated": 0, "total": 30}
    assert (await other.find(1, "default", "pashmina", limit=1)).products[0]["price"] == 12500


async def test_tenants_never_see_each_others_catalogs(service: SearchService) -> None:
    assert (await service.find(2, "default", "silk saree", limit=10)).products == []
    assert (await service.list_products(2, "default", limit=10, offset=0))["total"] == 0
    await service.import_products(2, "default", PRODUCTS[:2])
    assert {p["id"] for p in (await service.find(2, "default", "silk saree", limit=10)).products} <= {
        "lh-001",
        "lh-002",
    }
    assert (await service.list_products(1, "default", limit=100, offset=0))["total"] == 30


async def test_market_and_vocabulary_describe_the_catalog(service: SearchService) -> None:
    everything = await service.market(1, "default", "")
    assert everything["matchingProducts"] == 30
    assert everything["inStock"] == 27  # three have stock 0
    assert everything["priceRange"]["min"] == 450 and everything["priceRange"]["max"] == 48500
    assert everything["topCategories"][0] == {"category": "saree", "count": 5}
    sarees = await service.market(1, "default", "silk saree", filters=ProductFilters(category="saree"))
    assert sarees["matchingProducts"] == 5
    assert sarees["priceRange"] == {"min": 2400, "max": 26500, "median": 9800}
    assert sarees["topCategories"] == [{"category": "saree", "count": 5}]
    vocabulary = await service.vocabulary(1, "default")
    assert "lehenga" in vocabulary.categories and "maroon" in vocabulary.colors and "XL" in vocabulary.sizes
    assert len(vocabulary.categories) == 10


async def test_a_catalog_above_the_exact_limit_searches_through_hnsw(service: SearchService) -> None:
    index = await service.fresh_index(1, "default")
    assert await asyncio.to_thread(index.vectors.wait_for_graph)  # exact_vectors=20 < 30 products
    outcome = await service.find(1, "default", "Oxidised Silver Jhumka Earrings", limit=3, semantic_ratio=1.0)
    assert outcome.products[0]["id"] == "jw-002"
