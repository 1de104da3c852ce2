"""The sales agent's intent classifier (real embedding model) and entity extraction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sluicegate.providers.embeddings import MiniLMEmbedder
from sluicegate.services.troika.entities import extract_entities
from sluicegate.services.troika.intents import INTENTS, IntentClassifier, load_examples

HELD_OUT = Path(__file__).resolve().parent.parent / "fixtures" / "intents_heldout.jsonl"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_held_out_examples_are_not_in_the_training_set() -> None:
    training = {text.lower() for text, _ in load_examples()}
    held_out = load_examples(HELD_OUT)
    assert not [text for text, _ in held_out if text.lower() in training]
    assert Counter(intent for _, intent in held_out) == dict.fromkeys(INTENTS, 5)


async def test_held_out_messages_are_classified_by_meaning(embedder: MiniLMEmbedder) -> None:
    classifier = IntentClassifier(embedder)
    held_out = load_examples(HELD_OUT)
    guesses = await classifier.classify_many([text for text, _ in held_out])
    right = Counter(intent for (_, intent), guess in zip(held_out, guesses, strict=True) if guess.intent == intent)
    assert sum(right.values()) >= 0.85 * len(held_out), right
    assert all(right[intent] >= 3 for intent in INTENTS), right
    for guess in guesses:
        assert 0 < guess.confidence <= 1
        assert abs(sum(guess.scores.values()) - 1) < 1e-3


async def test_the_classifier_learns_from_its_examples_not_from_keywords(embedder: MiniLMEmbedder) -> None:
    # The same message changes class when the examples it learns from are relabelled.
    relabelled = [(text, "order_support" if intent == "greeting" else intent) for text, intent in load_examples()]
    message = "hello there, good morning to you"
    assert (await IntentClassifier(embedder).classify(message)).intent == "greeting"
    assert (await IntentClassifier(embedder, relabelled).classify(message)).intent == "order_support"


def test_entities_use_the_catalog_vocabulary() -> None:
    found = extract_entities(
        "show me red lehengas under 5k in size M",
        categories=["Lehenga", "Saree"],
        colors=["Red", "Maroon"],
        sizes=["S", "M", "L"],
    )
    assert found.as_dict() == {"category": "Lehenga", "color": "Red", "size": "M", "budget": {"min": None, "max": 5000}}


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("a saree between 2000 and 4,000 rupees", 2000, 4000),
        ("something below ₹3,000", None, 3000),
        ("over $50 please", 50, None),
        ("my budget of 100", 80, 120),
        ("a dress", None, None),
    ],
)
def test_budgets(text: str, low: float | None, high: float | None) -> None:
    found = extract_entities(text)
    assert (found.min_price, found.max_price) == (low, high)


def test_a_lone_letter_is_a_size_only_when_written_as_one() -> None:
    assert extract_entities("it's a blue shirt, have it in XL?", sizes=["S", "XL"]).size == "XL"
    assert extract_entities("it's nice, is it available?", sizes=["S", "M"]).size is None
    assert extract_entities("a medium one").size == "M"
