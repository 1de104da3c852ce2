"""The sales agent of ``POST /api/troika/intelligent-chat/stream``.

One message goes through these steps, each reported as it happens::

    progress intent_analysis   -> intent   {"intent", "confidence", "entities"}
    progress market_analysis   -> market   {"matchingProducts", "priceRange", "inStock", "topCategories"}
    progress product_search    -> results  {"type": "product_cards", "products", "total", "filters"}
    progress retrieval         (with a chatbotId: the chatbot's context passages)
    text / audio               the answer, from the chat pipeline (services/chat/answer.py)
    suggestions, complete      {"fullText", "intent", "products", "sources", "usage", ...}

- The intent comes from :class:`~sluicegate.services.troika.intents.IntentClassifier`
  (softmax regression over embeddings of labelled examples); entities (category,
  colour, size, budget) from the catalog's own vocabulary
  (:mod:`~sluicegate.services.troika.entities`).
- Entities become search filters. When the filtered search finds nothing, the filters
  are relaxed (size and colour first, then category; a budget is kept longest) and
  ``results.filters`` says which were applied, so a shopper asking for a colour the
  store does not carry still sees the nearest products and is told so.
- Product cards are searched for the intents that need them (``product_search``,
  ``product_question``, ``purchase``, ``price_negotiation``); ``results`` is sent only
  then. The market picture is always computed (it grounds greetings and prices too).
- The answer is grounded in the intent, entities, products, market, the chatbot's
  passages and the session's earlier turns (:func:`~sluicegate.services.troika.prompt.agent_prompt`);
  turns are remembered like chat's (``sessionId``, per tenant, bounded).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sluicegate.services.chat.prompt import source_dicts
from sluicegate.services.chat.service import with_token_counts
from sluicegate.services.search.filters import ProductFilters
from sluicegate.services.troika.entities import Entities, extract_entities
from sluicegate.services.troika.intents import IntentClassifier
from sluicegate.services.troika.prompt import agent_prompt, agent_suggestions
from sluicegate.streaming.events import progress

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from sluicegate.clock import Clock
    from sluicegate.providers.embeddings import Embedder
    from sluicegate.services.chat import ChatService
    from sluicegate.services.search import SearchService
    from sluicegate.services.troika.models import AgentRequest
    from sluicegate.streaming.events import NamedEvent

__all__ = ["PRODUCT_INTENTS", "TroikaService"]

#: The intents whose answer shows product cards.
PRODUCT_INTENTS = frozenset({"product_search", "product_question", "purchase", "price_negotiation"})
#: Product cards of one answer.
RESULT_LIMIT = 6
#: Context passages of a chatbot per message.
PASSAGES = 3


def _filters(entities: Entities) -> ProductFilters:
    return ProductFilters(
        category=entities.category,
        size=entities.size,
        color=entities.color,
        min_price=entities.min_price,
        max_price=entities.max_price,
    )


def _relaxations(filters: ProductFilters) -> list[ProductFilters]:
    """``filters``, then looser ones, then none: each distinct and active only once."""
    steps = [
        filters,
        replace(filters, size=None),
        replace(filters, size=None, color=None),
        replace(filters, size=None, color=None, category=None),
        ProductFilters(),
    ]
    seen: list[ProductFilters] = []
    for step in steps:
        if step not in seen:
            seen.append(step)
    return seen


class TroikaService:
    """The sales agent (see the module docstring).

    Args:
        chat: the answer pipeline, the session memory and the chatbots' context.
        search: the catalogs.
        embedder: the embedding model of the intent classifier.
        clock: times the streams.
    """

    def __init__(self, chat: ChatService, search: SearchService, embedder: Embedder, *, clock: Clock) -> None:
        self.chat = chat
        self.search = search
        self.clock = clock
        self.embedder = embedder
        self.intents = IntentClassifier(embedder)

    async def stream(self, tenant: int, request: AgentRequest) -> AsyncGenerator[NamedEvent]:
        """The events of one message, ``progress`` to ``complete`` (the route adds ``connected`` and ``close``)."""
        yield progress("intent_analysis", "Analysing the message")
        # One embedding of the message serves the classifier, the market and every search.
        vector = (await self.embedder.embed([request.query]))[0]
        guess = (await self.intents.classify_vectors(vector.reshape(1, -1)))[0]
        vocabulary = await self.search.vocabulary(tenant, request.catalog)
        entities = extract_entities(
            request.query, categories=vocabulary.categories, colors=vocabulary.colors, sizes=vocabulary.sizes
        )
        yield "intent", {"intent": guess.intent, "confidence": guess.confidence, "entities": entities.as_dict()}

        wanted = _filters(entities)
        yield progress("market_analysis", "Reading the market of the catalog")
        market_query = "" if guess.intent in ("greeting", "order_support", "other") else request.query
        market = await self.search.market(tenant, request.catalog, market_query, filters=wanted, vector=vector)
        yield "market", market

        products: list[dict[str, Any]] = []
        applied = ProductFilters()
        if guess.intent in PRODUCT_INTENTS:
            yield progress("product_search", "Searching the catalog")
            for filters in _relaxations(wanted):
                outcome = await self.search.find(
                    tenant, request.catalog, request.query, limit=RESULT_LIMIT, filters=filters, vector=vector
                )
                if outcome.products:
                    products, applied = outcome.products, filters
                    break
            yield (
                "results",
                {
                    "type": "product_cards",
                    "products": products,
                    "total": len(products),
                    "filters": applied.describe(),
                    "relaxed": applied != wanted,
                },
            )

        chunks: list[Any] = []
        if request.chatbotId:
            chunks = list(await self.chat.context.retrieve(tenant, request.chatbotId, request.query, PASSAGES))
            yield progress("retrieval", f"Found {len(chunks)} relevant context chunks", len(chunks))

        history = await self.chat.memory.history(tenant, request.sessionId)
        prompt = agent_prompt(
            request.query,
            intent=guess.intent,
            entities=entities.as_dict(),
            products=products,
            market=market,
            passages=[chunk.text for chunk in chunks],
            history=[(role, text) for turn in history for role, text in (("user", turn.query), ("agent", turn.answer))],
        )
        yield progress("generation", "Generating the answer")
        run = self.chat.answers.run(
            prompt, enable_tts=request.enableTTS, audio_format=request.audioFormat, route="troika"
        )
        async with contextlib.aclosing(run.events()) as events:
            async for event in events:
                yield event
        await self.chat.memory.remember(tenant, request.sessionId, "troika", request.query, run.text)
        yield "suggestions", {"suggestions": agent_suggestions(guess.intent, products, market)}
        complete: dict[str, Any] = {
            "fullText": run.text,
            "intent": guess.intent,
            "products": len(products),
            "sources": source_dicts(chunks),
            "usage": await with_token_counts(run.usage, request.encodings, prompt, run.text),
            "sessionId": request.sessionId,
            "historyTurns": len(history),
            "audioChunks": run.audio_chunks,
        }
        if run.warnings:
            complete["warnings"] = run.warnings
        yield "complete", complete
