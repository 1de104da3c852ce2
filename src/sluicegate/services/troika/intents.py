"""The sales agent's intent classifier: softmax regression over sentence embeddings.

The labelled examples are ``intents.jsonl`` beside this module (one ``{"intent", "text"}``
per line, about fifteen per intent). At first use they are embedded with the gateway's
embedding model and a multinomial logistic regression (L2-regularised, full-batch
gradient descent in numpy, a fixed number of steps from zeros, so it is deterministic) is
fitted on the vectors: about 100 ms for 110 examples, in a thread. A query is embedded
and classified; ``confidence`` is the winning class's probability. No keyword rules: a
phrasing the examples never saw is classified by what it means.

Intents: ``greeting``, ``product_search``, ``product_question``, ``purchase``,
``price_negotiation``, ``order_support``, ``other``. Below
:data:`MIN_CONFIDENCE` the answer is ``other``: the agent does not act on a guess.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

if TYPE_CHECKING:
    import numpy.typing as npt

    from sluicegate.providers.embeddings import Embedder

__all__ = ["EXAMPLES_PATH", "INTENTS", "MIN_CONFIDENCE", "IntentClassifier", "IntentGuess", "load_examples"]

INTENTS = (
    "greeting",
    "product_search",
    "product_question",
    "purchase",
    "price_negotiation",
    "order_support",
    "other",
)
EXAMPLES_PATH = Path(__file__).with_name("intents.jsonl")
#: Below this probability the classifier answers ``other``.
MIN_CONFIDENCE = 0.35
_STEPS = 400
_LEARNING_RATE = 2.0
_L2 = 1e-3
#: Embeddings are multiplied by this before fitting: unit vectors are close together, and a
#: wider spread lets a linear model separate the classes in fewer steps.
_SCALE = 8.0


def load_examples(path: Path = EXAMPLES_PATH) -> list[tuple[str, str]]:
    """``(text, intent)`` pairs of a JSON Lines file."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = orjson.loads(line)
            if item["intent"] not in INTENTS:
                raise ValueError(f"unknown intent {item['intent']!r} in {path.name}")
            pairs.append((str(item["text"]), str(item["intent"])))
    return pairs


@dataclass(frozen=True, slots=True)
class IntentGuess:
    intent: str
    confidence: float
    scores: dict[str, float]


def _fit(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], classes: int) -> npt.NDArray[np.float64]:
    features = np.hstack([x.astype(np.float64) * _SCALE, np.ones((len(x), 1))])
    weights = np.zeros((features.shape[1], classes))
    onehot = np.eye(classes)[y]
    for _ in range(_STEPS):
        logits = features @ weights
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        gradient = features.T @ (probs - onehot) / len(features) + _L2 * weights
        weights -= _LEARNING_RATE * gradient
    return weights


class IntentClassifier:
    """Classifies shopper messages into :data:`INTENTS`.

    Args:
        embedder: the embedding model (shared with search).
        examples: ``(text, intent)`` pairs to learn from; by default ``intents.jsonl``.
    """

    def __init__(self, embedder: Embedder, examples: list[tuple[str, str]] | None = None) -> None:
        self.embedder = embedder
        self.examples = examples if examples is not None else load_examples()
        self._weights: npt.NDArray[np.float64] | None = None
        self._lock: asyncio.Lock | None = None

    async def ready(self) -> None:
        """Embed the examples and fit the model, once."""
        if self._weights is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._weights is not None:
                return
            vectors = await self.embedder.embed([text for text, _ in self.examples])
            labels = np.array([INTENTS.index(intent) for _, intent in self.examples], dtype=np.int64)
            self._weights = await asyncio.to_thread(_fit, vectors, labels, len(INTENTS))

    def _probabilities(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        assert self._weights is not None  # noqa: S101 -- ready() ran
        features = np.hstack([vectors.astype(np.float64) * _SCALE, np.ones((len(vectors), 1))])
        logits = features @ self._weights
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs

    async def classify_many(self, texts: list[str]) -> list[IntentGuess]:
        """The intent of each text."""
        return await self.classify_vectors(await self.embedder.embed(texts))

    async def classify_vectors(self, vectors: npt.NDArray[np.float32]) -> list[IntentGuess]:
        """The intent of each message, from its embedding (one row each)."""
        await self.ready()
        probs = self._probabilities(vectors)
        guesses = []
        for row in probs:
            best = int(row.argmax())
            confidence = float(row[best])
            intent = INTENTS[best] if confidence >= MIN_CONFIDENCE else "other"
            scores = {name: round(float(p), 4) for name, p in zip(INTENTS, row, strict=True)}
            guesses.append(IntentGuess(intent, round(confidence, 4), scores))
        return guesses

    async def classify(self, text: str) -> IntentGuess:
        """The intent of one message."""
        return (await self.classify_many([text]))[0]
