"""Full-text search over ``products.search_text`` in the database: SQLite FTS5 or PostgreSQL.

A query becomes its words (letters and digits, lower-cased), without English stop words
(PostgreSQL's ``english`` list, removed here on both databases so that both match the same
products) and one-letter words. Products with *every* word are looked for first
(``"red" AND "silk"`` for FTS5, ``red & silk`` for ``to_tsquery('english', ...)``); when
fewer than ``enough`` have them all, products with *any* word (``OR``, ``|``), as
Meilisearch's ``matchingStrategy`` does. Besides ranking better, the first query is the
cheap one: with common words an ``OR`` matches a large part of a catalog, and each match
is scored and sorted before the ``LIMIT`` (at 10,000 products, 0.6 ms for ``AND``
against 13 ms for ``OR``, docs/performance.md). Ranked by ``bm25`` on SQLite and
``ts_rank_cd`` on PostgreSQL; both stem English (FTS5's ``porter`` tokenizer,
PostgreSQL's snowball stemmer). No prefix matching: the two databases do not agree on
what a prefix of a stemmed word matches.

``textScore`` is each hit's raw score divided by the best hit's of the same query, so the
best text hit scores 1 and the others 0..1 (bm25 and ts_rank_cd have no fixed scale).
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
    from collections.abc import Sequence

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

    With ``match="all"``, products with every term, when at least ``enough`` (default
    ``limit``) have them all, else products with any term; with ``"any"``, products with
    any term at once (the benchmark's baseline).
    """
    if not terms or limit <= 0:
        return []
    params: dict[str, Any] = {"tenant": tenant, "catalog": catalog, "limit": limit}
    where = _filter_sql(filters, params, "p.")
    postgres = session.get_bind().dialect.name == "postgresql"
    sql = (_POSTGRES_SQL if postgres else _SQLITE_SQL).replace("{filters}", where)
    rows: Sequence[Any] = []
    for joiner in (" & ", " | ") if postgres else (" AND ", " OR "):
        if joiner.strip() in ("&", "AND") and (len(terms) == 1 or match == "any"):
            continue  # one word: all and any are the same query
        params["query"] = joiner.join(terms if postgres else [f'"{term}"' for term in terms])
        rows = (await session.execute(text(sql), params)).all()
        if len(rows) >= (enough if enough is not None else limit):
            break
    if not rows:
        return []
    best = max(float(row[1]) for row in rows)
    if best <= 0:
        return [(int(row[0]), 1.0) for row in rows]
    return [(int(row[0]), max(0.0, min(1.0, float(row[1]) / best))) for row in rows]
