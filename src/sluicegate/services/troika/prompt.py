"""What the sales agent tells the model, and the follow-ups it offers.

The prompt grounds the answer in what the gateway found: the shopper's intent and the
entities in the message, the products of the search (name, price, stock, sizes,
colours), the market picture of the catalog, context passages of the chatbot when one
is named, and the session's earlier turns. The model is told to use only those facts.

Suggestions are made from the same facts, by intent, without another model call: they
cost nothing and always name real products, categories and prices of the catalog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["agent_prompt", "agent_suggestions"]

_ACTS = {
    "greeting": "Greet the shopper warmly and offer help finding products.",
    "product_search": "Recommend the best matching products below, with their prices.",
    "product_question": "Answer the question about the product from the facts below.",
    "purchase": "Confirm the product the shopper wants and explain how to complete the order.",
    "price_negotiation": "Be friendly about price: point to the most affordable matching products.",
    "order_support": "Help with the order politely; say that order details are handled by support.",
    "other": "Answer briefly and steer back to shopping.",
}
_MAX_PRODUCTS = 5


def _price(product: dict[str, Any]) -> str:
    price = product.get("price")
    if price is None:
        return "price on request"
    currency = product.get("currency") or ""
    return f"{price:g} {currency}".strip()


def _product_line(number: int, product: dict[str, Any]) -> str:
    parts = [f"{number}. {product.get('name', '')} - {_price(product)}"]
    stock = product.get("stock")
    if stock is not None:
        parts.append("in stock" if stock > 0 else "out of stock")
    for field in ("sizes", "colors"):
        values = product.get(field)
        if values:
            parts.append(f"{field}: {', '.join(str(v) for v in values)}")
    return "; ".join(parts)


def agent_prompt(
    query: str,
    *,
    intent: str,
    entities: dict[str, Any],
    products: Sequence[dict[str, Any]],
    market: dict[str, Any],
    passages: Sequence[str] = (),
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """The model's prompt for one message (the local provider wraps it in its chat template)."""
    lines = ["You are a helpful sales assistant of an online store.", _ACTS.get(intent, _ACTS["other"])]
    lines.append("Use only the facts below; if they do not answer, say so. Keep the answer short.")
    if entities:
        lines.append("Shopper wants: " + ", ".join(f"{k} {v}" for k, v in entities.items()))
    if products:
        lines.append("Products found:")
        lines.extend(_product_line(i, p) for i, p in enumerate(products[:_MAX_PRODUCTS], start=1))
    elif intent in ("product_search", "product_question", "purchase", "price_negotiation"):
        lines.append("No product of the store matches this request.")
    matching = market.get("matchingProducts")
    prices = market.get("priceRange") or {}
    if matching:
        lines.append(f"Market: {matching} matching products, prices {prices.get('min')} to {prices.get('max')}.")
    if passages:
        lines.append("Store information:")
        lines.extend(f"- {passage}" for passage in passages)
    if history:
        lines.append("Conversation so far:")
        lines.extend(f"{'Shopper' if role == 'user' else 'Assistant'}: {text}" for role, text in history)
    lines.append(f"Shopper: {query}")
    return "\n".join(lines)


def agent_suggestions(intent: str, products: Sequence[dict[str, Any]], market: dict[str, Any]) -> list[str]:
    """Up to three follow-ups the shopper can click, from the products and the market."""
    top = products[0] if products else None
    categories = [c["category"] for c in market.get("topCategories", []) if c.get("category")]
    median = (market.get("priceRange") or {}).get("median")
    out: list[str] = []
    if intent == "greeting" or not top:
        out.extend(f"Show me {c.lower()}" for c in categories[:2])
        out.append("What's new in the store?")
    elif intent == "purchase":
        name = top["name"]
        out.extend([f"Add {name} to my cart", f"What sizes does {name} come in?", "How long is delivery?"])
    elif intent == "price_negotiation":
        if median is not None:
            out.append(f"Show me options under {median:g}")
        out.extend(["Are there any offers on this?", f"Tell me more about {top['name']}"])
    elif intent == "order_support":
        out.extend(["Track my order", "What is the return policy?", "Talk to support"])
    else:
        out.append(f"Tell me more about {top['name']}")
        if len(products) > 1:
            out.append(f"Compare {top['name']} and {products[1]['name']}")
        if top.get("colors"):
            out.append(f"Is {top['name']} available in other colours?")
        elif median is not None:
            out.append(f"Show me options under {median:g}")
    return out[:3]
