"""The catalog routes and the two product-search streams of :class:`SearchService`.

- ``POST /api/products/import?catalog=`` (JSON ``{"products": [...]}``, NDJSON or CSV),
  ``GET /api/products?catalog=&limit=&offset=``, ``DELETE /api/products/{id}?catalog=``;
- ``GET /api/products/search/stream``: the hybrid search's steps as named events;
- ``POST /aza/search/stream``: semantic search with a text fallback.

Everything wrong with a request (no query, a bad filter, a bad product) is a 400 JSON
body before any stream starts. Deliberate divergence from the seed's browser snippet:
its ``onmessage`` handler with a ``switch (event.type)`` never sees named events; clients
use ``addEventListener('results', ...)`` (docs/search.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from sluicegate.errors import APIError
from sluicegate.responses import json_response, read_body
from sluicegate.security.deps import AnyIdentity, rate_limited
from sluicegate.services.search.filters import FilterError, ProductFilters, parse_float, parse_int
from sluicegate.services.search.products import ProductError, parse_body, parse_products
from sluicegate.services.search.service import check_catalog
from sluicegate.streaming.events import StreamReport, named_event_response, new_stream_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.clock import Clock
    from sluicegate.security.identity import Identity
    from sluicegate.services.search.service import SearchService
    from sluicegate.streaming.events import NamedEvent

__all__ = ["SearchRoutes"]

_AZA_KEYS = frozenset({"query", "limit", "filters", "catalog", "minScore"})
_AZA_BODY_LIMIT = 64 * 1024
_LIST_MAX = 1000


def _bad(exc: ValueError) -> APIError:
    return APIError.invalid_argument(str(exc))


class SearchRoutes:
    """The routes over a :class:`SearchService`.

    Args:
        service: the catalogs and searches.
        clock: paces heartbeats and times the streams.
        heartbeat: seconds of silence before a ``: ping`` comment; ``None`` sends none.
        max_import_bytes: the largest import body (413 above).
    """

    def __init__(self, service: SearchService, *, clock: Clock, heartbeat: float | None, max_import_bytes: int) -> None:
        self.service = service
        self.clock = clock
        self.heartbeat = heartbeat
        self.max_import_bytes = max_import_bytes
        self.router = APIRouter(tags=["search"])
        self._catalog_routes()
        self._search_routes()

    def _stream(self, events: AsyncIterator[NamedEvent], report: StreamReport, response: Response) -> Response:
        return named_event_response(events, report, clock=self.clock, heartbeat=self.heartbeat, response=response)

    def _catalog_routes(self) -> None:
        service, limit = self.service, self.max_import_bytes

        @self.router.post("/api/products/import", summary="Import products into a catalog (JSON, NDJSON or CSV)")
        async def import_products(request: Request, identity: AnyIdentity, catalog: str | None = None) -> Response:
            """Body ``{"products": [...]}``, NDJSON (``application/x-ndjson``) or CSV (``text/csv``).
            Known ids are replaced. Answers ``{"catalog", "imported", "updated", "total"}`` once the
            products are searchable; a bad product is a 400 naming its index and field, and nothing is stored."""
            name = check_catalog(catalog)
            body = await read_body(request, limit)
            try:
                products = parse_products(parse_body(body, request.headers.get("content-type", "application/json")))
            except ProductError as exc:
                details = {
                    key: value for key, value in (("index", exc.index), ("field", exc.field)) if value is not None
                }
                raise APIError.invalid_argument(str(exc), **details) from None
            if not products:
                raise APIError.invalid_argument("The import holds no products", field="products")
            return json_response(await service.import_products(identity.tenant, name, products))

        @self.router.get("/api/products", summary="The products of a catalog, a page at a time")
        async def list_products(
            identity: AnyIdentity, catalog: str | None = None, limit: str | None = None, offset: str | None = None
        ) -> Response:
            """``limit`` (default 100, at most 1000) products ordered by id from ``offset``, and the ``total``."""
            name = check_catalog(catalog)
            try:
                size = parse_int(limit, "limit", low=1, high=_LIST_MAX) or 100
                start = parse_int(offset, "offset", low=0, high=2**31) or 0
            except FilterError as exc:
                raise _bad(exc) from None
            return json_response(await service.list_products(identity.tenant, name, limit=size, offset=start))

        @self.router.delete("/api/products/{product_id}", summary="Delete a product")
        async def delete_product(product_id: str, identity: AnyIdentity, catalog: str | None = None) -> Response:
            """404 when the catalog holds no such product."""
            return json_response(await service.delete_product(identity.tenant, check_catalog(catalog), product_id))

    def _search_routes(self) -> None:
        service = self.service

        @self.router.get(
            "/api/products/search/stream",
            dependencies=[Depends(rate_limited("streaming_ip"))],
            summary="Hybrid product search as a stream of named events",
            response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}},
        )
        async def product_search(request: Request, response: Response, identity: AnyIdentity) -> Response:
            """``q`` (required), ``limit``, ``catalog``, ``semanticRatio`` (0..1) and the filters ``category``,
            ``size``, ``color``, ``minPrice``, ``maxPrice``, ``inStock``. Events: ``connected``, ``progress``
            (``text_search``, ``vector_search``, ``filters``, ``ranking``), ``results``, ``complete``, ``close``."""
            params = request.query_params
            query = (params.get("q") or "").strip()
            if not query:
                raise APIError.invalid_argument("q is required")
            catalog = check_catalog(params.get("catalog"))
            try:
                limit = parse_int(params.get("limit"), "limit", low=1, high=service.max_limit) or 10
                ratio = parse_float(params.get("semanticRatio"), "semanticRatio", low=0.0, high=1.0)
                filters = ProductFilters.parse(params)
            except FilterError as exc:
                raise _bad(exc) from None
            semantic_ratio = 0.5 if ratio is None else ratio
            report = _report(identity, "product-search", "product_search", query, filters, limit)
            events = service.search_events(
                identity.tenant, catalog, query, limit=limit, filters=filters, semantic_ratio=semantic_ratio
            )
            return self._stream(events, report, response)

        @self.router.post(
            "/aza/search/stream",
            dependencies=[Depends(rate_limited("streaming_ip"))],
            summary="Semantic product search with a text fallback, as a stream of named events",
            response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}},
        )
        async def aza_search(request: Request, response: Response, identity: AnyIdentity) -> Response:
            """Body ``{"query", "limit"?, "filters"?, "catalog"?, "minScore"?}``. Products carry ``similarity``
            (cosine) and ``matchType`` ``semantic``; when none reaches ``minScore`` (or the embedding model
            is unavailable) a ``text_fallback`` step and ``matchType`` ``text`` results."""
            body = _aza_body(await read_body(request, _AZA_BODY_LIMIT))
            query = body.get("query")
            if not isinstance(query, str) or not query.strip():
                raise APIError.invalid_argument("query is required")
            query = query.strip()
            catalog = body.get("catalog")
            if catalog is not None and not isinstance(catalog, str):
                raise APIError.invalid_argument("catalog must be a string")
            name = check_catalog(catalog)
            raw_filters = body.get("filters") or {}
            if not isinstance(raw_filters, dict):
                raise APIError.invalid_argument("filters must be an object")
            try:
                limit = parse_int(body.get("limit"), "limit", low=1, high=service.max_limit) or 10
                min_score = parse_float(body.get("minScore"), "minScore", low=-1.0, high=1.0)
                filters = ProductFilters.parse(raw_filters, strict=True)
            except FilterError as exc:
                raise _bad(exc) from None
            report = _report(identity, "aza-search", "aza_search", query, filters, limit)
            events = service.aza_events(identity.tenant, name, query, limit=limit, filters=filters, min_score=min_score)
            return self._stream(events, report, response)


def _aza_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError.invalid_argument("The body must be a JSON object") from None
    if not isinstance(body, dict):
        raise APIError.invalid_argument("The body must be a JSON object")
    unknown = sorted(set(body) - _AZA_KEYS)
    if unknown:
        raise APIError.invalid_argument(f"Unknown field {unknown[0]!r}", field=unknown[0])
    return body


def _report(
    identity: Identity, prefix: str, route: str, query: str, filters: ProductFilters, limit: int
) -> StreamReport:
    return StreamReport(
        stream_id=new_stream_id(prefix),
        route=route,
        what="product search" if route == "product_search" else "aza product search",
        failure="Search failed",
        fields={"query": query, "filters": filters.describe(), "limit": limit},
        connected={"query": query},
        tenant=identity.tenant,
    )
