"""Product search benchmark: imports per second, and text, vector and hybrid search latency.

A catalog of ``--sizes`` products is generated from a small fashion vocabulary (names,
descriptions, categories, colours, sizes, prices, stock) and imported through
:meth:`SearchService.import_products` with the real embedding model (all-MiniLM-L6-v2
int8, the slow part: some 8 minutes per 100,000 products on a 2-core machine). Each size
is built once in ``--data-dir`` (a SQLite file per size) and reused by later runs.

Then, in this process, ``--queries`` generated queries (two to four vocabulary words,
some with filters) per case, one at a time:

- ``text``: the database's full-text search alone (FTS5 bm25), every word first and then
  without the commonest words, as the service searches; ``text_any_word`` is the baseline
  of any word at once (``OR``), ``text_without_mmap`` the service's query with SQLite's
  memory map switched off (its own 2 MB page cache only);
- ``embed``: the query's embedding alone (the model's share of vector and hybrid);
- ``vector``: embedding plus the in-memory vector search;
- ``hybrid``: :meth:`SearchService.find` (text and vector side by side, filters, fusion,
  cards); ``hybrid_one_after_the_other`` the same steps with text, then vector;

each with the HNSW index the service uses beyond ``search_exact_vectors`` (20,000) and,
as the baseline, exact numpy search over every vector. Reports p50/p99 in ms and the
cold load of the in-memory index. Prints one JSON line.

    .venv/bin/python bench/search.py --sizes 10000
    .venv/bin/python bench/search.py --sizes 10000,100000 --data-dir /tmp/sg-search-bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import text as sql  # noqa: E402

from sluicegate.clock import SystemClock  # noqa: E402
from sluicegate.engines.store import SQLITE_MMAP_BYTES, Store  # noqa: E402
from sluicegate.providers.embeddings import MiniLMEmbedder  # noqa: E402
from sluicegate.services.search.filters import ProductFilters  # noqa: E402
from sluicegate.services.search.products import parse_products  # noqa: E402
from sluicegate.services.search.service import SearchService, _Hybrid  # noqa: E402
from sluicegate.services.search.text import query_terms, text_hits  # noqa: E402

CATEGORIES = {
    "saree": ["silk", "cotton", "chiffon", "organza", "georgette", "banarasi", "kanjeevaram"],
    "lehenga": ["bridal", "velvet", "net", "mirror work", "floral", "embroidered"],
    "kurta": ["linen", "chikankari", "anarkali", "straight", "printed", "festive"],
    "sherwani": ["raw silk", "indo-western", "brocade", "jacquard"],
    "dupatta": ["phulkari", "bandhani", "chanderi", "silk"],
    "jewellery": ["kundan", "polki", "oxidised", "temple", "pearl", "jhumka"],
    "footwear": ["jutti", "kolhapuri", "mojari", "wedge", "leather", "embellished"],
    "accessories": ["potli", "pashmina", "clutch", "stole", "brooch"],
    "kids": ["girls", "boys", "party", "festive"],
    "home": ["block print", "bedsheet", "cushion", "table runner"],
}
COLORS = ["red", "maroon", "pink", "peach", "yellow", "mustard", "green", "emerald", "blue", "navy", "ivory", "white",
          "black", "gold", "silver", "grey", "orange", "purple", "teal", "cream"]  # fmt: skip
SIZES = ["XS", "S", "M", "L", "XL", "XXL"]
OCCASIONS = ["wedding", "reception", "mehendi", "sangeet", "diwali", "navratri", "office", "party", "daily wear"]
WORK = ["zari", "thread", "sequin", "mirror", "gota"]
WORDS = ["handwoven", "handmade", "lightweight", "heavy", "classic", "modern", "designer", "traditional", "premium"]


def generate(count: int, seed: int = 13) -> list[dict[str, Any]]:
    """``count`` products made from the vocabulary, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    names = list(CATEGORIES)
    for n in range(count):
        category = rng.choice(names)
        style = rng.choice(CATEGORIES[category])
        colors = rng.sample(COLORS, rng.randint(1, 3))
        word, occasion = rng.choice(WORDS), rng.choice(OCCASIONS)
        name = f"{word.title()} {colors[0].title()} {style.title()} {category.title()} {n}"
        description = (
            f"A {word} {style} {category} in {' and '.join(colors)}, for {occasion}. "
            f"{rng.choice(WORDS).capitalize()} finish with {rng.choice(WORK)} work."
        )
        out.append(
            {
                "id": f"p{n}",
                "name": name,
                "description": description,
                "category": category,
                "price": round(rng.uniform(300, 50000), 2),
                "currency": "INR",
                "sizes": sorted(rng.sample(SIZES, rng.randint(1, 4))),
                "colors": colors,
                "tags": [style, occasion],
                "stock": rng.choice([0, 1, 3, 10, 25, 100]),
            }
        )
    return out


def queries(count: int, seed: int = 7) -> list[tuple[str, ProductFilters | None]]:
    rng = random.Random(seed)
    out: list[tuple[str, ProductFilters | None]] = []
    for n in range(count):
        category = rng.choice(list(CATEGORIES))
        words = [rng.choice(COLORS), rng.choice(CATEGORIES[category]), category, rng.choice(OCCASIONS)]
        text = " ".join(rng.sample(words, rng.randint(2, 4)))
        filters = None
        if n % 3 == 1:
            filters = ProductFilters(max_price=rng.choice([2000.0, 10000.0, 30000.0]), in_stock=True)
        elif n % 3 == 2:
            filters = ProductFilters(size=rng.choice(SIZES), color=rng.choice(COLORS))
        out.append((text, filters))
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2), "p99_ms": round(p99 * 1000, 2)}


async def build(store: Store, service: SearchService, size: int) -> dict[str, Any] | None:
    """Import the catalog unless the data dir holds it already; the import rate when it ran.

    :func:`generate` makes the same first products for every size, so a catalog that
    holds the first ``n`` (a copy of a smaller size's file, see :func:`main`) is topped up
    with the rest instead of being imported again.
    """
    have = (await service.list_products(1, "bench", limit=1, offset=0))["total"]
    if have >= size:
        return None
    products = parse_products(generate(size))
    started = time.perf_counter()
    for start in range(have, size, 1000):  # one import request per 1,000 products, as a client would send
        await service.import_products(1, "bench", products[start : min(size, start + 1000)])
    elapsed = time.perf_counter() - started
    added = size - have
    return {"products": added, "seconds": round(elapsed, 1), "imports_per_s": round(added / elapsed, 1)}


def seed_file(data_dir: Path, size: int) -> Path:
    """The catalog file of ``size``, started as a copy of the largest smaller one when it is new."""
    path = data_dir / f"catalog-{size}.db"
    if not path.exists():
        smaller = sorted(
            (int(p.stem.split("-")[1]), p) for p in data_dir.glob("catalog-*.db") if int(p.stem.split("-")[1]) < size
        )
        if smaller:
            shutil.copyfile(smaller[-1][1], path)
    return path


async def timed(run: Any, items: list[tuple[str, ProductFilters | None]]) -> dict[str, float]:
    samples = []
    for query, filters in items:
        started = time.perf_counter()
        await run(query, filters)
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def measure(store: Store, embedder: MiniLMEmbedder, size: int, exact_limit: int, n: int) -> dict[str, Any]:
    service = SearchService(store, embedder, clock=SystemClock(), exact_vectors=exact_limit)
    started = time.perf_counter()
    index = await service.fresh_index(1, "bench")
    load = time.perf_counter() - started
    await asyncio.to_thread(index.vectors.wait_for_graph)  # built in the background: measure with it
    graph_build = time.perf_counter() - started - load
    items = queries(n)

    async def text(query: str, filters: ProductFilters | None) -> None:
        async with store.session() as session:
            await text_hits(session, 1, "bench", query_terms(query), limit=50, filters=filters, enough=10)

    async def text_any(query: str, filters: ProductFilters | None) -> None:
        async with store.session() as session:
            await text_hits(session, 1, "bench", query_terms(query), limit=50, filters=filters, match="any")

    async def embed(query: str, filters: ProductFilters | None) -> None:
        await embedder.embed([query])

    async def vector(query: str, filters: ProductFilters | None) -> None:
        vec = (await embedder.embed([query]))[0]
        await service.nearest(index, vec, 50, index.allowed(filters))

    async def text_without_mmap(query: str, filters: ProductFilters | None) -> None:
        async with store.session() as session:
            await session.execute(sql("PRAGMA mmap_size=0"))
            await text_hits(session, 1, "bench", query_terms(query), limit=50, filters=filters, enough=10)
            await session.execute(sql(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}"))

    async def hybrid(query: str, filters: ProductFilters | None) -> None:
        await service.find(1, "bench", query, limit=10, filters=filters)

    async def hybrid_one_after_the_other(query: str, filters: ProductFilters | None) -> None:
        run = _Hybrid(service, 1, "bench", query, 10, filters, 0.5)
        try:
            async with store.session() as session:
                await run.start(session)
                await run.text()
                await run.vector()
                await run.rank()
        finally:
            run.close()

    await hybrid(*items[0])  # warm
    return {
        "index": "hnsw" if index.vectors.uses_graph else "exact",
        "load_s": round(load, 2),
        "graph_build_s": round(graph_build, 2),
        "text": await timed(text, items),
        "text_any_word": await timed(text_any, items),
        "text_without_mmap": await timed(text_without_mmap, items),
        "embed": await timed(embed, items),
        "vector": await timed(vector, items),
        "hybrid": await timed(hybrid, items),
        "hybrid_one_after_the_other": await timed(hybrid_one_after_the_other, items),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="catalog sizes, comma-separated (10000,100000)")
    parser.add_argument("--queries", type=int, default=200, help="queries per case")
    default_dir = Path(tempfile.gettempdir()) / "sg-search-bench"
    parser.add_argument("--data-dir", type=Path, default=default_dir, help="where catalogs are kept")
    parser.add_argument("--exact-limit", type=int, default=20_000, help="the service's search_exact_vectors")
    parser.add_argument("--threads", type=int, default=1, help="embedding threads (SLUICEGATE_EMBEDDINGS_THREADS)")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    embedder = MiniLMEmbedder(threads=args.threads)
    report: dict[str, Any] = {"bench": "search", "machine": platform.machine(), "queries": args.queries, "sizes": {}}
    try:
        for size in (int(part) for part in args.sizes.split(",")):
            store = Store(f"sqlite+aiosqlite:///{seed_file(args.data_dir, size).as_posix()}")
            await store.open()
            try:
                builder = SearchService(store, embedder, clock=SystemClock())
                imported = await build(store, builder, size)
                case: dict[str, Any] = {"import": imported or "reused"}
                case["service"] = await measure(store, embedder, size, args.exact_limit, args.queries)
                case["exact_baseline"] = await measure(store, embedder, size, 10**9, args.queries)
                report["sizes"][str(size)] = case
            finally:
                await store.close()
    finally:
        await embedder.close()
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
