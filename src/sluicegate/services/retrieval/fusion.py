"""Reciprocal rank fusion of a text ranking and a vector ranking.

``score(d) = (1 - r) / (k + rank_text(d)) + r / (k + rank_vector(d))`` with ranks from 1,
``r`` the semantic ratio (0: text only, 1: vectors only; Meilisearch's ``semanticRatio``)
and ``k = 60`` (Cormack et al. 2009). A document missing from one ranking gets nothing
from it. Scores are divided by ``1 / (k + 1)``, the score of a document first in both
rankings, so they lie in 0..1 whatever the ratio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

__all__ = ["RRF_K", "reciprocal_rank_fusion"]

K = TypeVar("K", bound="Hashable")

RRF_K = 60


def reciprocal_rank_fusion(
    text: Sequence[K], vector: Sequence[K], *, semantic_ratio: float = 0.5, k: int = RRF_K
) -> list[tuple[K, float]]:
    """Fuse two rankings (best first) into one, best first, with scores in 0..1.

    Ties keep the order of first appearance (text before vector).
    """
    if not 0.0 <= semantic_ratio <= 1.0:
        raise ValueError("semantic_ratio must be between 0 and 1")
    scores: dict[K, float] = {}
    for weight, ranking in ((1.0 - semantic_ratio, text), (semantic_ratio, vector)):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    best = 1.0 / (k + 1)
    fused = [(key, min(1.0, score / best)) for key, score in scores.items()]
    fused.sort(key=lambda item: item[1], reverse=True)
    return fused
