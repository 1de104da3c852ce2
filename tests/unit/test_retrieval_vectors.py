"""The in-memory vector index and rank fusion: exact and HNSW agree, filters and removal hold."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from sluicegate.services.retrieval.fusion import RRF_K, reciprocal_rank_fusion
from sluicegate.services.retrieval.vectors import VectorIndex

DIM = 64

Data = tuple[np.random.Generator, npt.NDArray[np.float32]]


def unit_rows(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def near(rng: np.random.Generator, vector: npt.NDArray[np.float32], noise: float = 0.3) -> npt.NDArray[np.float32]:
    query = vector + noise * unit_rows(rng, 1)[0]
    return np.asarray(query / np.linalg.norm(query), dtype=np.float32)


@pytest.fixture
def data() -> Data:
    rng = np.random.default_rng(13)
    return rng, unit_rows(rng, 3000)


def test_hnsw_above_the_exact_limit_finds_the_same_top_hits_as_exact_search(data: Data) -> None:
    rng, rows = data
    keys = np.arange(1000, 1000 + len(rows))
    exact = VectorIndex(DIM, exact_limit=10_000)
    graph = VectorIndex(DIM, exact_limit=500)
    exact.upsert(keys, rows)
    graph.upsert(keys, rows)
    assert graph.wait_for_graph() and not exact.wait_for_graph()
    recall = []
    for target in rng.choice(len(rows), 40, replace=False):
        query = near(rng, rows[target])
        truth = exact.search(query, 10)
        found = graph.search(query, 10)
        assert found[0][0] == truth[0][0] == keys[target]
        assert found[0][1] == pytest.approx(truth[0][1], abs=1e-4)  # both are the cosine
        recall.append(len({k for k, _ in truth} & {k for k, _ in found}) / 10)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert np.mean(recall) >= 0.9


@pytest.mark.parametrize("exact_limit", [10_000, 500])
def test_a_filter_mask_keeps_only_allowed_slots_and_finds_the_best_of_them(data: Data, exact_limit: int) -> None:
    rng, rows = data
    index = VectorIndex(DIM, exact_limit=exact_limit)
    slots = index.upsert(np.arange(len(rows)), rows)
    allowed = np.zeros(index.slots, dtype=bool)
    allowed[[slots[i] for i in range(0, len(rows), 3)]] = True  # every third key
    query = near(rng, rows[0], noise=0.1)
    found = index.search(query, 5, allowed=allowed)
    assert found[0][0] == 0
    assert all(key % 3 == 0 for key, _ in found)
    best_allowed = max(range(0, len(rows), 3), key=lambda i: float(rows[i] @ query))
    assert found[0][0] == best_allowed
    tiny = np.zeros(index.slots, dtype=bool)
    tiny[[slots[5], slots[7]]] = True  # fewer allowed than asked: exactly those two
    assert sorted(key for key, _ in index.search(query, 10, allowed=tiny)) == [5, 7]


@pytest.mark.parametrize("exact_limit", [10_000, 500])
def test_removed_and_replaced_vectors_are_no_longer_found(data: Data, exact_limit: int) -> None:
    rng, rows = data
    index = VectorIndex(DIM, exact_limit=exact_limit)
    index.upsert(np.arange(len(rows)), rows)
    query = near(rng, rows[42], noise=0.05)
    assert index.search(query, 1)[0][0] == 42
    index.remove([42])
    assert 42 not in [key for key, _ in index.search(query, 20)]
    assert len(index) == len(rows) - 1
    slot = index.slot_of(7)
    index.upsert([7], [query])  # key 7 now holds the query's vector, in the same slot
    assert index.slot_of(7) == slot
    top_key, top_score = index.search(query, 1)[0]
    assert top_key == 7 and top_score == pytest.approx(1.0, abs=1e-5)
    assert index.cosines(query, [7, 42]) == [pytest.approx(1.0, abs=1e-5), None]


def test_a_mask_made_before_new_vectors_were_added_does_not_allow_them(data: Data) -> None:
    _, rows = data
    index = VectorIndex(DIM)
    index.upsert(np.arange(100), rows[:100])
    mask = index.live_mask()
    index.upsert([500], [rows[500]])
    assert 500 not in [key for key, _ in index.search(rows[500], 5, allowed=mask)]
    assert index.search(rows[500], 1)[0][0] == 500


def test_fusion_scores_lie_in_0_to_1_and_the_ratio_moves_between_the_rankings() -> None:
    text, vector = ["a", "b", "c"], ["c", "d", "a"]
    balanced = dict(reciprocal_rank_fusion(text, vector))
    assert all(0.0 < score <= 1.0 for score in balanced.values())
    assert max(balanced, key=balanced.__getitem__) in ("a", "c")
    only_text = reciprocal_rank_fusion(text, vector, semantic_ratio=0.0)
    assert [key for key, score in only_text if score > 0] == text
    only_vectors = reciprocal_rank_fusion(text, vector, semantic_ratio=1.0)
    assert [key for key, score in only_vectors if score > 0] == vector
    both_first = dict(reciprocal_rank_fusion(["x"], ["x"], semantic_ratio=0.3))
    assert both_first["x"] == pytest.approx(1.0)
    assert dict(reciprocal_rank_fusion(["x", "y"], []))["y"] == pytest.approx(0.5 * (RRF_K + 1) / (RRF_K + 2))
    with pytest.raises(ValueError, match="semantic_ratio"):
        reciprocal_rank_fusion(text, vector, semantic_ratio=1.5)


def test_building_a_graph_before_the_embedding_model_loads_does_not_crash_the_process() -> None:
    """usearch loaded before onnxruntime made onnxruntime's import a segmentation fault."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from sluicegate.services.retrieval.vectors import VectorIndex\n"
        "index = VectorIndex(4, exact_limit=1)\n"
        "index.upsert([1, 2], np.eye(2, 4, dtype=np.float32))\n"
        "assert index.wait_for_graph()\n"
        "import onnxruntime\n"
        "print('alive')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "alive"), done.stderr[-500:]


def test_the_graph_is_built_in_the_background_and_writes_meanwhile_are_not_lost(data: Data) -> None:
    _, rows = data
    keys = np.arange(len(rows))
    index = VectorIndex(DIM, exact_limit=500)
    index.upsert(keys[:1000], rows[:1000])
    assert index.building_graph  # searches are exact until it is built
    [(key, cosine)] = index.search(rows[10], 1)
    assert key == 10 and cosine == pytest.approx(1.0, abs=1e-5)
    index.upsert(keys[1000:1100], rows[1000:1100])  # journalled while the graph is built
    index.remove([10])
    assert index.wait_for_graph() and not index.building_graph
    assert index.search(rows[1050], 1)[0][0] == 1050
    assert index.search(rows[10], 5)[0][0] != 10
    assert len(index) == 1099


def test_many_writes_during_a_build_make_it_build_again_from_what_the_index_holds(data: Data) -> None:
    _, rows = data
    keys = np.arange(len(rows))
    index = VectorIndex(DIM, exact_limit=100)
    index.upsert(keys[:200], rows[:200])
    index.upsert(keys[200:], rows[200:])  # 2,800 writes during the build: more than REPLAY_LIMIT
    assert index.wait_for_graph()
    for target in (5, 250, 2999):
        assert index.search(rows[target], 1)[0][0] == target
