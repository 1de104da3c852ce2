"""Full-text search over ``products.search_text`` in the database: SQLite FTS5 or PostgreSQL.

A query becomes its words (letters and digits, lower-cased), without English stop words
(PostgreSQL's ``english`` list, removed here on both databases so that both match the same
products) and one-letter words. Products with *every* word are looked for first
(``"red" AND "silk"`` for FTS5, ``red & silk`` for ``to_tsquery('english', ...)``); while
fewer than ``enough`` are found, the most frequent remaining word is dropped and the
products with every remaining word come next, as Meilisearch's ``frequency`` matching
strategy does (the word that most products have says least about what is wanted: "groom"
is kept from "footwear for the groom"); words no product has are dropped first; products
with *any* word (``OR``, ``|``) only when the rarest word alone is not enough. Besides
ranking better, each step is a cheap query: with common words an ``OR`` matches a large
part of a catalog, and each match is scored and sorted before the ``LIMIT`` (at 100,000
products, 117 ms for ``OR`` against under 10 ms for ``AND``), and the rarest words match
the fewest products (docs/performance.md). Words are counted in the whole index, every
tenant's and catalog's (one ``count(*)`` per word, in one statement). Ranked by ``bm25`` on SQLite and
``ts_rank_cd`` on PostgreSQL; both stem English (FTS5's ``porter`` tokenizer,
PostgreSQL's snowball stemmer). No prefix matching: the two databases do not agree on
what a prefix of a stemmed word matches.

``textScore`` is each hit's raw score divided by the best hit's of the same step, times the
share of the query's words that step required, and never above the previous hit's: the
best hit with every word scores 1, a hit found with two of four words at most 0.5, and the
scores descend in the order of the hits (bm25 and ts_rank_cd have no fixed scale; hits
with more of the words always come first).
On SQLite bm25's document frequencies count every catalog of every tenant (one FTS table);
ranks within a catalog can differ from PostgreSQL's, the sets of matches do not.

Filters on columns (``category``, ``price``, ``stock``) are applied in SQL; ``sizes`` and
``colors`` by the caller's in-memory mask.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from sluicegate.services.search.filters import ProductFilters

__all__ = ["STOP_WORDS", "query_terms", "text_hits"]

#: PostgreSQL's english stop words (the snowball list), so both databases drop the same words.
STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below between
    both but by can did do does doing don down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own s same she should so some such t than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with you your yours yourself yourselves
    """.split()  # noqa: SIM905 -- a word list reads better as prose
)
_POSTGRES_SQL = (
    "SELECT p.pk, ts_rank_cd(p.search_tsv, q) AS score"
    " FROM products p, to_tsquery('english', :query) q"
    " WHERE p.search_tsv @@ q AND p.tenant = :tenant AND p.catalog = :catalog AND NOT p.deleted{filters}"
    " ORDER BY score DESC, p.pk LIMIT :limit"
)
_SQLITE_SQL = (
    "SELECT p.pk, -bm25(products_fts) AS score"
    " FROM products_fts JOIN products p ON p.pk = products_fts.rowid"
    " WHERE products_fts MATCH :query AND p.tenant = :tenant AND p.catalog = :catalog AND NOT p.deleted{filters}"
    " ORDER BY score DESC, p.pk LIMIT :limit"
)
_WORD = re.compile(r"\w+", re.UNICODE)
_MAX_TERMS = 32


def query_terms(query: str) -> list[str]:
    """The words of ``query`` a text search matches (any of them), in order, without repeats."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        word = word.strip("_")
        if len(word) > 1 and word not in STOP_WORDS and len(word) <= 64:
            seen.setdefault(word, None)
    return list(seen)[:_MAX_TERMS]


def _filter_sql(filters: ProductFilters | None, params: dict[str, Any], prefix: str) -> str:
    if filters is None:
        return ""
    clauses = []
    if filters.category is not None:
        clauses.append(f"lower({prefix}category) = :category")
        params["category"] = filters.category.lower()
    if filters.min_price is not None:
        clauses.append(f"{prefix}price >= :min_price")
        params["min_price"] = filters.min_price
    if filters.max_price is not None:
        clauses.append(f"{prefix}price <= :max_price")
        params["max_price"] = filters.max_price
    if filters.in_stock:
        clauses.append(f"({prefix}stock IS NULL OR {prefix}stock > 0)")
    return "".join(f" AND {clause}" for clause in clauses)


async def text_hits(
    session: AsyncSession,
    tenant: int,
    catalog: str,
    terms: list[str],
    *,
    limit: int,
    filters: ProductFilters | None = None,
    enough: int | None = None,
    match: Literal["all", "any"] = "all",
) -> list[tuple[int, float]]:
    """The best ``limit`` live products matching ``terms``: ``(pk, textScore)``, best first.

    With ``match="all"`` (Meilisearch's ``frequency`` matching strategy): products with
    every term first; while fewer than ``enough`` (default ``limit``) are found, the most
    frequent remaining term is dropped and the products with all the others follow;
    products with any term when even the rarest term alone is not enough. With ``"any"``,
    products with any term at once (the benchmark's baseline).
    """
    if not terms or limit <= 0:
        return []
    wanted = enough if enough is not None else limit
    params: dict[str, Any] = {"tenant": tenant, "catalog": catalog, "limit": limit}
    where = _filter_sql(filters, params, "p.")
    postgres = session.get_bind().dialect.name == "postgresql"
    sql = text((_POSTGRES_SQL if postgres else _SQLITE_SQL).replace("{filters}", where))
    all_of, any_of = (" & ", " | ") if postgres else (" AND ", " OR ")
    found: dict[int, float] = {}
    ceiling = 1.0  # a later step's hits never score above an earlier step's last one

    async def step(words: list[str], joiner: str, matched: int) -> bool:
        nonlocal ceiling
        params["query"] = joiner.join(_quoted(words, postgres))
        rows = [row for row in (await session.execute(sql, params)).all() if int(row[0]) not in found]
        if rows:
            best = max(float(row[1]) for row in rows)
            weight = matched / len(terms)
            for pk, score in rows:
                relative = max(0.0, min(1.0, float(score) / best)) if best > 0 else 1.0
                found[int(pk)] = ceiling = min(ceiling, weight * relative)
        return len(found) >= wanted

    if match == "any" or len(terms) == 1:
        await step(terms, any_of, 1)
        return list(found.items())[:limit]
    if await step(terms, all_of, len(terms)):
        return list(found.items())[:limit]
    counts = await _document_counts(session, terms, postgres)
    # Rarest first; a word no product has cannot be in any "every word" step.
    kept = sorted((term for term in terms if counts[term]), key=lambda term: (counts[term], terms.index(term)))
    first = len(kept) if len(kept) < len(terms) else len(kept) - 1
    for count in range(first, 0, -1):
        if await step(kept[:count], all_of, count):
            return list(found.items())[:limit]
    await step(terms, any_of, 1)
    return list(found.items())[:limit]


def _quoted(words: list[str], postgres: bool) -> list[str]:
    return words if postgres else [f'"{word}"' for word in words]


async def _document_counts(session: AsyncSession, terms: list[str], postgres: bool) -> dict[str, int]:
    """How many indexed products (of every tenant and catalog) have each term, in one query.

    Counting reads only the index's entries for the term (no ranking, no rows): a fraction
    of a millisecond at 10,000 matches on SQLite.
    """
    one = (
        "SELECT {n} AS i, count(*) FROM products WHERE search_tsv @@ to_tsquery('english', :t{n})"
        if postgres
        else "SELECT {n} AS i, count(*) FROM products_fts WHERE products_fts MATCH :t{n}"
    )
    sql = " UNION ALL ".join(one.replace("{n}", str(n)) for n in range(len(terms)))
    params = {f"t{n}": word for n, word in enumerate(_quoted(terms, postgres))}
    rows = (await session.execute(text(sql), params)).all()
    return {terms[int(row[0])]: int(row[1]) for row in rows}
