"""The sales agent, end to end: a real server, the real embedding model, local model and voice.

Every test imports the fixture catalog (tests/fixtures/products.json) for its own tenant
and talks to ``POST /api/troika/intelligent-chat/stream`` as a shop's front end would,
asserting what it shows a shopper: the intent and entities, market figures that match the
catalog, product cards that honour the budget and colour, a grounded answer, speech,
suggestions naming real products, memory across turns, and tenants kept apart.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import soundfile

from sluicegate.providers.tokencounts import encoding
from sluicegate.streaming.sse import SSEDecoder
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.server import Server

SHOP = "troika-shop-key-0123456789"  # tenant 7
OTHER = "troika-other-key-0123456789"  # tenant 8
ANSWER_TOKENS = 16
PRODUCTS = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "products.json").read_text())
PRODUCTS = PRODUCTS["products"] if isinstance(PRODUCTS, dict) else PRODUCTS
ROUTE = "/api/troika/intelligent-chat/stream"


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server], gguf_path: Path) -> Server:
    return serve_module(
        None,
        SLUICEGATE_API_KEYS=f"{SHOP}:user:7,{OTHER}:user:8",
        SLUICEGATE_LLM_MODEL_PATH=str(gguf_path),
        SLUICEGATE_LLM_THREADS="2",
        SLUICEGATE_LLM_CONTEXT_TOKENS="2048",
        SLUICEGATE_CHAT_MAX_OUTPUT_TOKENS=str(ANSWER_TOKENS),
        SLUICEGATE_RATE_LIMIT_STREAMING_IP="1000/minute",
    )


@pytest.fixture
async def client(server: Server) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=120 * UNIT) as client:
        yield client


async def import_catalog(client: httpx.AsyncClient, catalog: str, key: str = SHOP) -> None:
    response = await client.post(
        f"/api/products/import?catalog={catalog}", headers={"X-API-Key": key}, json={"products": PRODUCTS}
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"] == len(PRODUCTS)


async def ask(client: httpx.AsyncClient, body: dict[str, Any], key: str = SHOP) -> list[tuple[str, dict[str, Any]]]:
    response = await client.post(ROUTE, headers={"X-API-Key": key}, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-ratelimit-limit"] == "1000"
    return [(event.event, orjson.loads(event.data)) for event in SSEDecoder().feed(response.content)]


def only(events: list[tuple[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    found = [data for event, data in events if event == name]
    assert len(found) == 1, [event for event, _ in events]
    return found[0]


async def test_a_product_search_streams_intent_market_cards_and_a_grounded_answer(
    client: httpx.AsyncClient,
) -> None:
    catalog = f"shop-{uuid.uuid4().hex[:8]}"
    await import_catalog(client, catalog)
    body = {"query": "show me red lehengas under 50000", "catalog": catalog, "tokenCounts": ["cl100k_base"]}
    events = await ask(client, body)
    names = [event for event, _ in events]
    assert names[0] == "connected" and names[-2:] == ["complete", "close"]
    order = [n for n in names if n in ("intent", "market", "results", "text", "suggestions", "complete")]
    first_text = order.index("text")
    assert order[:3] == ["intent", "market", "results"] and first_text == 3
    assert order[-2:] == ["suggestions", "complete"]

    intent = only(events, "intent")
    assert intent["intent"] == "product_search" and 0 < intent["confidence"] <= 1
    assert intent["entities"] == {"category": "lehenga", "color": "red", "budget": {"min": None, "max": 50000}}

    results = only(events, "results")
    assert results["type"] == "product_cards" and results["products"]
    assert results["filters"] == {"category": "lehenga", "color": "red", "maxPrice": 50000}
    assert results["relaxed"] is False
    for card in results["products"]:
        assert card["category"] == "lehenga" and "red" in card["colors"] and card["price"] <= 50000
    assert results["products"][0]["id"] == "lh-001"

    market = only(events, "market")
    reds = [p for p in PRODUCTS if p["category"] == "lehenga" and "red" in p["colors"] and p["price"] <= 50000]
    assert market["matchingProducts"] >= 1
    assert market["priceRange"]["min"] >= min(p["price"] for p in reds)
    assert market["priceRange"]["max"] <= 50000
    assert {c["category"] for c in market["topCategories"]} == {"lehenga"}

    texts = [data for event, data in events if event == "text"]
    complete = only(events, "complete")
    assert complete["fullText"] == texts[-1]["fullText"] == "".join(t["token"] for t in texts)
    assert complete["intent"] == "product_search" and complete["products"] == len(results["products"])
    assert complete["usage"]["completionTokens"] <= ANSWER_TOKENS and complete["duration"] >= 0
    openai = complete["usage"]["tokenCounts"]["cl100k_base"]  # asked for: OpenAI-compatible counts beside the model's
    assert openai["completionTokens"] == len(encoding("cl100k_base").encode_ordinary(complete["fullText"]))
    assert openai["promptTokens"] > 50 and openai["totalTokens"] == openai["promptTokens"] + openai["completionTokens"]
    suggestions = only(events, "suggestions")["suggestions"]
    assert suggestions and any(results["products"][0]["name"] in s for s in suggestions)


async def test_a_colour_the_shop_lacks_relaxes_the_filters_and_says_so(client: httpx.AsyncClient) -> None:
    catalog = f"shop-{uuid.uuid4().hex[:8]}"
    await import_catalog(client, catalog)
    events = await ask(client, {"query": "I'm looking for a purple saree", "catalog": catalog})
    results = only(events, "results")
    assert only(events, "intent")["entities"]["color"] == "purple"
    assert results["relaxed"] is True and "color" not in results["filters"]
    assert results["products"] and all(card["category"] == "saree" for card in results["products"])


async def test_a_greeting_shows_no_cards_and_the_market_of_the_whole_catalog(client: httpx.AsyncClient) -> None:
    catalog = f"shop-{uuid.uuid4().hex[:8]}"
    await import_catalog(client, catalog)
    events = await ask(client, {"query": "hello there, good morning!", "catalog": catalog})
    assert only(events, "intent")["intent"] == "greeting"
    assert "results" not in [event for event, _ in events]
    market = only(events, "market")
    prices = [p["price"] for p in PRODUCTS]
    assert market["matchingProducts"] == len(PRODUCTS)
    assert market["priceRange"] == {"min": min(prices), "max": max(prices), "median": statistics.median(prices)}
    assert market["inStock"] == sum(1 for p in PRODUCTS if p["stock"] > 0)


async def test_speech_comes_with_the_answer_and_decodes(client: httpx.AsyncClient) -> None:
    catalog = f"shop-{uuid.uuid4().hex[:8]}"
    await import_catalog(client, catalog)
    events = await ask(
        client, {"query": "do you have cotton sarees?", "catalog": catalog, "enableTTS": True, "audioFormat": "wav"}
    )
    audio = [data for event, data in events if event == "audio"]
    assert audio, [event for event, _ in events]
    assert [a["index"] for a in audio] == list(range(len(audio)))
    pcm, rate = soundfile.read(io.BytesIO(base64.b64decode(audio[0]["chunk"])))
    assert rate > 8000 and len(pcm) > rate // 10
    assert only(events, "complete")["audioChunks"] == len(audio)


async def test_a_session_remembers_earlier_turns(client: httpx.AsyncClient) -> None:
    catalog = f"shop-{uuid.uuid4().hex[:8]}"
    await import_catalog(client, catalog)
    turn = {"catalog": catalog, "sessionId": f"s-{uuid.uuid4().hex[:8]}"}
    first = only(await ask(client, {"query": "show me silk sarees", **turn}), "complete")
    second = only(await ask(client, {"query": "any discount?", **turn}), "complete")
    assert first["historyTurns"] == 0 and second["historyTurns"] == 1
    fresh = {"catalog": catalog, "sessionId": uuid.uuid4().hex}
    other = only(await ask(client, {"query": "any discount?", **fresh}), "complete")
    assert other["historyTurns"] == 0


async def test_tenants_never_see_each_others_catalogs(client: httpx.AsyncClient) -> None:
    catalog = f"shop-{uuid.uuid4().hex[:8]}"
    await import_catalog(client, catalog)
    events = await ask(client, {"query": "show me lehengas", "catalog": catalog}, key=OTHER)
    assert only(events, "results")["products"] == []
    assert only(events, "market")["matchingProducts"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Query is required"),
        (b'{"query": "  "}', "Query is required"),
        (b"[1, 2]", "Request body must be a JSON object"),
        (b'{"query": "hi", "audioFormat": "flac"}', "Invalid request"),
        (b'{"query": "hi", "catalog": "../etc"}', "Invalid request"),
        (b'{"query": "hi", "tokenCounts": ["p50k"]}', "tokenCounts: unknown encoding 'p50k' (known: cl100k_base)"),
    ],
)
async def test_bad_requests_are_a_400_before_the_stream(client: httpx.AsyncClient, body: bytes, message: str) -> None:
    response = await client.post(ROUTE, headers={"X-API-Key": SHOP, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 400
    assert response.json()["error"] == message


async def test_credentials_are_required(client: httpx.AsyncClient) -> None:
    response = await client.post(ROUTE, json={"query": "hello"})
    assert response.status_code == 401
