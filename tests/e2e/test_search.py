"""Product catalogs and the two product searches, end to end: real servers, the real embedding model.

A module server on SQLite holds the fixture catalog (30 products) for tenant 1; tests
import, update and delete in catalogs of their own. Every stream is read whole and
checked as a client sees it: the named events in order, the product cards and their scores.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import orjson
import pytest

from sluicegate.streaming.sse import SSEDecoder
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.server import Server

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "products.json"
CATALOG = json.loads(FIXTURE.read_text())
K1 = "search-tenant-one-0123456789"
K2 = "search-tenant-two-0123456789"
ADMIN = "search-admin-0123456789"
ONE = {"X-API-Key": K1}
TWO = {"X-API-Key": K2}
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
STEPS = ["text_search", "vector_search", "filters", "ranking"]


def env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "SLUICEGATE_API_KEYS": f"{K1}:user:1,{K2}:user:2,{ADMIN}:admin",
        "SLUICEGATE_DATABASE_URL": database_url,
        "SLUICEGATE_RATE_LIMIT_STREAMING_IP": "1000/minute",
        "SLUICEGATE_SEARCH_MAX_IMPORT_BYTES": str(64 * 1024),
        **extra,
    }


@pytest.fixture(scope="module")
def database_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{(tmp_path_factory.mktemp('search') / 'search.db').as_posix()}"


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server], database_file: str) -> Server:
    server = serve_module(None, **env(database_file))
    answer = httpx.post(f"{server.url}/api/products/import", json=CATALOG, headers=ONE, timeout=60 * UNIT)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"catalog": "default", "imported": 30, "updated": 0, "total": 30}
    return server


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [(event.event, orjson.loads(event.data)) for event in SSEDecoder().feed(response.content)]


def search(server: Server, headers: dict[str, str] = ONE, **params: Any) -> list[tuple[str, dict[str, Any]]]:
    response = httpx.get(f"{server.url}/api/products/search/stream", params=params, headers=headers, timeout=30 * UNIT)
    return events_of(response)


def aza(server: Server, body: dict[str, Any], headers: dict[str, str] = ONE) -> list[tuple[str, dict[str, Any]]]:
    response = httpx.post(f"{server.url}/aza/search/stream", json=body, headers=headers, timeout=30 * UNIT)
    return events_of(response)


def results(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    (data,) = [data for name, data in events if name == "results"]
    assert data["type"] == "product_cards" and data["total"] == len(data["products"])
    return list(data["products"])


def ids(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [product["id"] for product in results(events)]


def test_a_search_streams_its_steps_results_and_completion_in_order(server: Server) -> None:
    events = search(server, q="lehenga", limit=5)
    names = [name for name, _ in events]
    assert names == ["connected", "progress", "progress", "progress", "progress", "results", "complete", "close"]
    connected = events[0][1]
    assert connected["message"] == "Stream started" and connected["streamId"].startswith("product-search-")
    progress = [data for name, data in events if name == "progress"]
    assert [p["step"] for p in progress] == STEPS
    assert all(isinstance(p["count"], int) and p["message"] for p in progress)
    assert progress[0]["message"] == f"Text search found {progress[0]['count']} results"
    assert progress[0]["count"] == 5  # the fixture's five lehengas (four, and the girls' lehenga choli)
    products = results(events)
    assert len(products) == 5 and progress[3]["count"] == 5
    complete = events[6][1]
    assert complete["total"] == 5 and complete["query"] == "lehenga" and isinstance(complete["duration"], int)
    assert events[7][1] == {"message": "Stream ended"}
    stream_id = connected["streamId"]
    server.wait_for_log(rf"\[{stream_id}\] Starting streaming product search")
    line = server.wait_for_log(rf".*\[{stream_id}\] Product search stream complete.*").group(0)
    fields = orjson.loads(line)
    assert fields["query"] == "lehenga" and fields["limit"] == 5 and fields["totalResults"] == 5


def test_a_products_own_name_ranks_it_first_and_scores_are_sane(server: Server) -> None:
    products = results(search(server, q="Oxidised Silver Jhumka Earrings", limit=10))
    assert products[0]["id"] == "jw-002"
    assert products[0]["score"] == pytest.approx(1.0) and products[0]["textScore"] == pytest.approx(1.0)
    assert 0.6 < products[0]["vectorScore"] <= 1.0
    scores = [p["score"] for p in products]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert all(-1.0 <= p["vectorScore"] <= 1.0 and 0.0 <= p["textScore"] <= 1.0 for p in products)
    expected = next(p for p in CATALOG["products"] if p["id"] == "jw-002")
    assert {k: v for k, v in products[0].items() if k in expected} == expected  # the stored product, whole


def test_semantic_ratio_moves_the_ranking_between_words_and_meaning(server: Server) -> None:
    query = "footwear for the groom"
    words = results(search(server, q=query, limit=5, semanticRatio=0))
    meaning = results(search(server, q=query, limit=5, semanticRatio=1))
    assert [p["id"] for p in words] != [p["id"] for p in meaning]
    assert all(p["textScore"] > 0 for p in words)  # ratio 0: text hits only, ranked by their text score
    assert [p["textScore"] for p in words] == sorted((p["textScore"] for p in words), reverse=True)
    cosines = [p["vectorScore"] for p in meaning]  # ratio 1: nearest by cosine
    assert cosines == sorted(cosines, reverse=True)
    assert words[0]["id"] == "sw-001"  # the sherwani says "groom"
    assert meaning[0]["category"] == "footwear"  # what the query means


def test_filters_hold_on_every_result(server: Server) -> None:
    products = results(
        search(server, q="wedding outfit", limit=30, size="M", minPrice=3000, maxPrice=40000, inStock="true")
    )
    assert products
    assert all("M" in p["sizes"] and 3000 <= p["price"] <= 40000 and p["stock"] > 0 for p in products)
    assert {p["id"] for p in products} <= {"lh-002", "lh-004", "kt-002", "kt-003", "kt-004"}
    events = search(server, q="jewellery", color="Green", category="jewellery", limit=30)
    assert set(ids(events)) == {"jw-003", "jw-004"}
    assert [data["count"] for name, data in events if name == "progress"][2] == 2  # the filters step


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "q is required"),
        ({"q": "   "}, "q is required"),
        ({"q": "saree", "minPrice": "500", "maxPrice": "100"}, "minPrice must not be above maxPrice"),
        ({"q": "saree", "maxPrice": "cheap"}, "maxPrice must be a number"),
        ({"q": "saree", "semanticRatio": "2"}, "semanticRatio must be between 0 and 1"),
        ({"q": "saree", "limit": "0"}, "limit must be between 1 and 100"),
        ({"q": "saree", "catalog": "no spaces"}, "catalog must be"),
    ],
)
def test_a_bad_search_is_a_400_before_the_stream(server: Server, params: dict[str, str], message: str) -> None:
    response = httpx.get(f"{server.url}/api/products/search/stream", params=params, headers=ONE)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_aza_search_is_semantic_with_cosines_in_order(server: Server) -> None:
    events = aza(server, {"query": "jewellery for a bride", "limit": 4})
    assert events[0][1]["streamId"].startswith("aza-search-")
    assert "text_fallback" not in [data["step"] for name, data in events if name == "progress"]
    products = results(events)
    assert len(products) == 4 and {p["matchType"] for p in products} == {"semantic"}
    similarities = [p["similarity"] for p in products]
    assert similarities == sorted(similarities, reverse=True) and all(s >= 0.3 for s in similarities)
    assert "jw-001" in {p["id"] for p in products}  # the kundan bridal choker
    assert [name for name, _ in events][-2:] == ["complete", "close"]


def test_aza_falls_back_to_text_when_nothing_reaches_min_score(server: Server) -> None:
    events = aza(server, {"query": "kolhapuri", "minScore": 0.99, "filters": {"inStock": False}})
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps.index("semantic_search") < steps.index("text_fallback")
    products = results(events)
    assert [p["id"] for p in products] == ["fw-002"]
    assert products[0]["matchType"] == "text" and products[0]["similarity"] < 0.99
    complete = next(data for name, data in events if name == "complete")
    assert complete["matchType"] == "text" and complete["minScore"] == 0.99


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "query is required"),
        ({"query": ""}, "query is required"),
        ({"query": "saree", "filters": {"minPrice": 10, "maxPrice": 1}}, "minPrice must not be above maxPrice"),
        ({"query": "saree", "filters": {"colour": "red"}}, "Unknown filter 'colour'"),
        ({"query": "saree", "minScore": 3}, "minScore must be between -1 and 1"),
        ({"query": "saree", "limit": "ten"}, "limit must be a whole number"),
    ],
)
def test_a_bad_aza_search_is_a_400_before_the_stream(server: Server, body: dict[str, Any], message: str) -> None:
    response = httpx.post(f"{server.url}/aza/search/stream", json=body, headers=ONE)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_ndjson_and_csv_imports_are_searchable_and_a_reimport_updates(server: Server) -> None:
    url = f"{server.url}/api/products/import"
    ndjson = b"".join(orjson.dumps(p) + b"\n" for p in CATALOG["products"][:3])
    answer = httpx.post(
        url, params={"catalog": "nd"}, content=ndjson, headers={**ONE, "Content-Type": "application/x-ndjson"}
    )
    assert answer.json() == {"catalog": "nd", "imported": 3, "updated": 0, "total": 3}
    csv = (
        "id,name,category,price,sizes,colors,stock\n"
        "c1,Mustard Cotton Kurta,kurta,1500,S;M;L,yellow|white,5\n"
        "c2,Maroon Velvet Shawl,accessories,4000,,maroon,0\n"
    )
    answer = httpx.post(url, params={"catalog": "csv"}, content=csv, headers={**ONE, "Content-Type": "text/csv"})
    assert answer.json() == {"catalog": "csv", "imported": 2, "updated": 0, "total": 2}
    products = results(search(server, q="kurta", catalog="csv", size="m"))
    assert [(p["id"], p["sizes"], p["colors"]) for p in products] == [("c1", ["S", "M", "L"], ["yellow", "white"])]
    update = "id,name,category,price\nc1,Mustard Cotton Kurta,kurta,1200\nc3,Linen Shawl,accessories,900\n"
    answer = httpx.post(url, params={"catalog": "csv"}, content=update, headers={**ONE, "Content-Type": "text/csv"})
    assert answer.json() == {"catalog": "csv", "imported": 2, "updated": 1, "total": 3}
    assert results(search(server, q="mustard kurta", catalog="csv", limit=1))[0]["price"] == 1200
    listing = httpx.get(f"{server.url}/api/products", params={"catalog": "csv", "limit": 2}, headers=ONE).json()
    assert [p["id"] for p in listing["products"]] == ["c1", "c2"] and listing["total"] == 3
    page = httpx.get(f"{server.url}/api/products", params={"catalog": "csv", "offset": 2}, headers=ONE).json()
    assert [p["id"] for p in page["products"]] == ["c3"]


def test_a_bad_product_is_a_400_naming_it_and_nothing_is_stored(server: Server) -> None:
    url = f"{server.url}/api/products/import"
    good = {"id": "ok", "name": "Fine Product", "price": 10}
    answer = httpx.post(
        url, params={"catalog": "bad"}, json={"products": [good, {"id": "x", "name": "n", "price": "ten"}]}, headers=ONE
    )
    assert answer.status_code == 400
    assert answer.json()["index"] == 1 and answer.json()["field"] == "price"
    assert "Product 1" in answer.json()["error"]
    listing = httpx.get(f"{server.url}/api/products", params={"catalog": "bad"}, headers=ONE).json()
    assert listing["total"] == 0
    too_big = {"products": [{**good, "id": f"p{i}", "description": "x" * 1000} for i in range(80)]}
    assert httpx.post(url, params={"catalog": "bad"}, json=too_big, headers=ONE).status_code == 413
    assert httpx.post(url, params={"catalog": "a b"}, json={"products": [good]}, headers=ONE).status_code == 400


def test_a_deleted_product_is_gone_from_searches_and_listings(server: Server) -> None:
    url = f"{server.url}/api/products"
    products = [p for p in CATALOG["products"] if p["category"] == "saree"]
    assert (
        httpx.post(f"{url}/import", params={"catalog": "del"}, json={"products": products}, headers=ONE).status_code
        == 200
    )
    assert ids(search(server, q="Kanjeevaram Silk Saree", catalog="del"))[0] == "sr-002"
    answer = httpx.delete(f"{url}/sr-002", params={"catalog": "del"}, headers=ONE)
    assert answer.status_code == 200 and answer.json()["total"] == 4
    assert "sr-002" not in ids(search(server, q="Kanjeevaram Silk Saree", catalog="del"))
    assert "sr-002" not in ids(aza(server, {"query": "Kanjeevaram silk saree", "catalog": "del", "minScore": -1}))
    listing = httpx.get(url, params={"catalog": "del"}, headers=ONE).json()
    assert "sr-002" not in [p["id"] for p in listing["products"]]
    assert httpx.delete(f"{url}/sr-002", params={"catalog": "del"}, headers=ONE).status_code == 404


def test_tenants_never_see_each_others_catalogs(server: Server) -> None:
    assert results(search(server, TWO, q="silk saree")) == []
    assert results(aza(server, {"query": "silk saree", "minScore": -1}, TWO)) == []
    assert httpx.get(f"{server.url}/api/products", headers=TWO).json()["total"] == 0
    assert httpx.delete(f"{server.url}/api/products/sr-001", headers=TWO).status_code == 404
    mine = {"products": [{"id": "sr-001", "name": "Tenant Two Saree", "price": 1}]}
    answer = httpx.post(f"{server.url}/api/products/import", json=mine, headers=TWO)
    assert answer.json() == {"catalog": "default", "imported": 1, "updated": 0, "total": 1}
    assert [p["name"] for p in results(search(server, TWO, q="saree"))] == ["Tenant Two Saree"]
    assert results(search(server, q="Banarasi Silk Saree", limit=1))[0]["name"] == "Banarasi Silk Saree in Royal Blue"


def test_a_browser_searches_with_an_access_token_and_sees_rate_limit_headers(server: Server) -> None:
    assert httpx.get(f"{server.url}/api/products/search/stream", params={"q": "saree"}).status_code == 401
    issued = httpx.post(f"{server.url}/api/auth/tokens", json={"tenant": 1}, headers={"X-API-Key": ADMIN})
    token = issued.json()["token"]
    response = httpx.get(
        f"{server.url}/api/products/search/stream",
        params={"q": "Banarasi saree", "access_token": token, "limit": 1},
        timeout=30 * UNIT,
    )
    assert ids(events_of(response)) == ["sr-001"]  # tenant 1's catalog
    assert response.headers["x-ratelimit-limit"] == "1000"


def test_without_an_embedding_model_aza_falls_back_to_text_on_another_node(
    server: Server, serve: Callable[..., Server], database_file: str, tmp_path: Path
) -> None:
    """A second node on the same database, whose embedding model cannot load, serves the catalog by text."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    node = serve(None, **env(database_file, SLUICEGATE_EMBEDDINGS_MODEL_PATH=str(broken)))
    events = aza(node, {"query": "pashmina shawl"})
    fallback = next(data for name, data in events if name == "progress" and data["step"] == "text_fallback")
    assert "unavailable" in fallback["message"]
    products = results(events)
    assert products[0]["id"] == "ac-002" and products[0]["matchType"] == "text"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"sg_search_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_a_postgresql_server_finds_what_the_sqlite_server_finds(
    server: Server, serve: Callable[..., Server], postgres_url: str
) -> None:
    node = serve(None, **env(postgres_url))
    answer = httpx.post(f"{node.url}/api/products/import", json=CATALOG, headers=ONE, timeout=60 * UNIT)
    assert answer.json() == {"catalog": "default", "imported": 30, "updated": 0, "total": 30}
    for query in ("leather juttis", "silk saree", "winter shawls"):
        on_postgres = search(node, q=query, limit=30, semanticRatio=0)
        on_sqlite = search(server, q=query, limit=30, semanticRatio=0)
        assert set(ids(on_postgres)) == set(ids(on_sqlite)) and ids(on_postgres)
    assert ids(search(node, q="Ivory Wedding Sherwani", limit=1)) == ["sw-001"]
    assert results(search(node, TWO, q="silk saree")) == []
