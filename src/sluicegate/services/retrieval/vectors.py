"""An in-memory vector index over unit vectors: exact in numpy, HNSW (usearch) when large.

Up to ``exact_limit`` live vectors a search is one matrix-vector product, exact, a few
milliseconds at 20,000 vectors of 384 dimensions. Beyond it the index also keeps a usearch
HNSW graph (cosine, ``connectivity`` 16, ``expansion_search`` 64) and answers from it,
over-fetching when a filter applies and falling back to an exact search over the allowed
rows when the graph's candidates do not fill the answer. Scores are cosines either way.

The graph is built in a background thread, from a copy of the live vectors, the first
time the index grows past ``exact_limit``: a build takes a while (about 54 s for 100,000
vectors of 384 dimensions on two cores), and a search must not wait for it. Until it is
done, searches stay exact; writes made meanwhile are kept in a journal and replayed into
the graph when it is installed (by the next search, or :meth:`VectorIndex.wait_for_graph`),
or, when more than :data:`REPLAY_LIMIT` of them came (a catalog still loading), the graph
is built again from the vectors as they are then.

Keys are integers (the rows' primary keys). Each key has a *slot*, a row of the dense
matrix; callers keep per-slot metadata (for filters) in arrays indexed the same way and
pass a boolean ``allowed`` mask over slots to :meth:`VectorIndex.search`.

Not thread-safe: the owner serialises writes against searches.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

__all__ = ["EXACT_LIMIT", "VectorIndex", "decode_vectors", "encode_vector"]

#: Live vectors up to which searches are exact (no HNSW graph is built).
EXACT_LIMIT = 20_000
#: Writes made while a graph was being built that are replayed into it; more, and it is built again.
REPLAY_LIMIT = 2_000

_builder: ThreadPoolExecutor | None = None
_builder_lock = threading.Lock()


def _build_executor() -> ThreadPoolExecutor:
    """The one thread that builds graphs (one build at a time per process)."""
    global _builder
    with _builder_lock:
        if _builder is None:
            _builder = ThreadPoolExecutor(1, thread_name_prefix="hnsw-build")
        return _builder


def _build(dimensions: int, keys: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> Any:
    Index = _usearch_index()
    graph = Index(ndim=dimensions, metric="cos", dtype="f32", connectivity=16, expansion_search=64)
    if len(keys):
        graph.add(keys, vectors)
    return graph


def encode_vector(vector: npt.ArrayLike) -> bytes:
    """A vector as the database stores it: float32, little-endian."""
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vectors(blobs: Sequence[bytes], dimensions: int) -> npt.NDArray[np.float32]:
    """Stored vectors (:func:`encode_vector`) as one read-only ``(len(blobs), dimensions)`` matrix
    (no copy on a little-endian machine: :meth:`VectorIndex.upsert` copies the rows it keeps)."""
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimensions)
    return matrix.astype(np.float32, copy=False)


def _usearch_index() -> Any:
    """usearch's ``Index`` class, with onnxruntime loaded first when it is installed.

    Loading usearch's native library before onnxruntime's makes the later import of
    onnxruntime crash the process (a segmentation fault; usearch 2.26 with onnxruntime
    1.32, in any thread): a node whose first search builds a graph before its first
    embedding would die. Loading onnxruntime first is safe in every order after.
    """
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    from usearch.index import Index

    return Index


class VectorIndex:
    """Unit vectors by integer key.

    Args:
        dimensions: length of each vector.
        exact_limit: live vectors up to which no HNSW graph is kept.
    """

    def __init__(self, dimensions: int, *, exact_limit: int = EXACT_LIMIT) -> None:
        self.dimensions = dimensions
        self.exact_limit = exact_limit
        self._vectors: npt.NDArray[np.float32] = np.zeros((0, dimensions), dtype=np.float32)
        self._keys: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._alive: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._slots: dict[int, int] = {}
        self._used = 0
        self._graph: Any = None
        self._building: Future[Any] | None = None
        self._journal: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32] | None]] = []

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def slots(self) -> int:
        """Slots in use, live or freed: the length per-slot metadata arrays need."""
        return self._used

    @property
    def uses_graph(self) -> bool:
        """Whether searches go through the HNSW graph (installing one that has been built)."""
        self._adopt_graph()
        return self._graph is not None

    @property
    def building_graph(self) -> bool:
        """Whether a graph is being built in the background (searches are exact meanwhile)."""
        return self._building is not None

    def wait_for_graph(self, timeout: float | None = None) -> bool:
        """Wait for a background build (if any) and install its graph; whether searches now use one.

        Raises:
            TimeoutError: the build did not end within ``timeout`` seconds.
        """
        while self._building is not None:
            self._building.result(timeout)
            self._adopt_graph()
        return self._graph is not None

    def slot_of(self, key: int) -> int | None:
        """The slot of a live key, or ``None``."""
        return self._slots.get(key)

    def key_at(self, slot: int) -> int:
        """The key stored in ``slot``."""
        return int(self._keys[slot])

    def live_mask(self) -> npt.NDArray[np.bool_]:
        """Which slots hold a live vector (a copy)."""
        return self._alive[: self._used].copy()

    def _grow(self, needed: int) -> None:
        capacity = len(self._keys)
        if needed <= capacity:
            return
        new = max(needed, capacity * 2, 1024)
        vectors = np.zeros((new, self.dimensions), dtype=np.float32)
        vectors[: self._used] = self._vectors[: self._used]
        keys = np.zeros(new, dtype=np.int64)
        keys[: self._used] = self._keys[: self._used]
        alive = np.zeros(new, dtype=bool)
        alive[: self._used] = self._alive[: self._used]
        self._vectors, self._keys, self._alive = vectors, keys, alive

    def upsert(self, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> list[int]:
        """Add or replace vectors; returns each key's slot (a replaced key keeps its slot)."""
        key_array = np.asarray(keys, dtype=np.int64)
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(key_array), self.dimensions)
        slots: list[int] = []
        fresh = sum(1 for key in key_array.tolist() if key not in self._slots)
        self._grow(self._used + fresh)
        for key, vector in zip(key_array.tolist(), matrix, strict=True):
            slot = self._slots.get(key)
            if slot is None:
                slot = self._used
                self._used += 1
                self._slots[key] = slot
                self._keys[slot] = key
                self._alive[slot] = True
            self._vectors[slot] = vector
            slots.append(slot)
        if self._graph is not None:
            self._graph_remove(key_array)
            self._graph.add(key_array, matrix)
        elif self._building is not None:
            self._journal.append((key_array.copy(), matrix.copy()))
        elif len(self._slots) > self.exact_limit:
            self._start_build()
        return slots

    def remove(self, keys: npt.ArrayLike) -> None:
        """Forget vectors (unknown keys are ignored); their slots are not reused."""
        key_array = np.asarray(keys, dtype=np.int64)
        gone = []
        for key in key_array.tolist():
            slot = self._slots.pop(key, None)
            if slot is not None:
                self._alive[slot] = False
                gone.append(key)
        if gone and self._graph is not None:
            self._graph_remove(np.asarray(gone, dtype=np.int64))
        elif gone and self._building is not None:
            self._journal.append((np.asarray(gone, dtype=np.int64), None))

    def _graph_remove(self, keys: npt.NDArray[np.int64], graph: Any = None) -> None:
        graph = self._graph if graph is None else graph
        present = [key for key in keys.tolist() if graph.contains(key)]
        if present:
            graph.remove(np.asarray(present, dtype=np.int64))

    def _start_build(self) -> None:
        live = np.flatnonzero(self._alive[: self._used])
        keys, vectors = self._keys[live].copy(), self._vectors[live].copy()
        self._journal = []
        self._building = _build_executor().submit(_build, self.dimensions, keys, vectors)

    def _adopt_graph(self) -> None:
        """Install a finished background graph, replaying the journal (or build again when it is long)."""
        building = self._building
        if building is None or not building.done():
            return
        self._building = None
        graph = building.result()
        journal, self._journal = self._journal, []
        if sum(len(keys) for keys, _ in journal) > REPLAY_LIMIT:
            self._start_build()  # a catalog still loading: build from what it holds now
            return
        for keys, matrix in journal:
            self._graph_remove(keys, graph)
            if matrix is not None:
                graph.add(keys, matrix)
        self._graph = graph

    def search(
        self, query: npt.ArrayLike, k: int, *, allowed: npt.NDArray[np.bool_] | None = None
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest live keys to ``query`` (a unit vector), best first, with their cosines.

        Args:
            query: the query vector.
            k: how many to return at most.
            allowed: a mask over slots; only slots that are ``True`` (and live) are returned.
        """
        if k <= 0 or not self._slots:
            return []
        vector = np.asarray(query, dtype=np.float32).reshape(self.dimensions)
        mask = self._alive[: self._used]
        if allowed is not None:
            if len(allowed) < self._used:  # slots added since the mask was made: not allowed
                allowed = np.concatenate([allowed, np.zeros(self._used - len(allowed), dtype=bool)])
            mask = mask & allowed[: self._used]
        self._adopt_graph()
        if self._graph is not None:
            found = self._graph_search(vector, k, mask, filtered=allowed is not None)
            if found is not None:
                return found
        return self._exact(vector, k, mask)

    def similarities(self, query: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The cosine of ``query`` with every slot (exact; freed slots hold stale values: mask them)."""
        vector = np.asarray(query, dtype=np.float32).reshape(self.dimensions)
        return self._vectors[: self._used] @ vector

    def cosines(self, query: npt.ArrayLike, keys: Sequence[int]) -> list[float | None]:
        """The cosine of ``query`` with each key's vector, ``None`` for keys not in the index."""
        vector = np.asarray(query, dtype=np.float32).reshape(self.dimensions)
        out: list[float | None] = []
        for key in keys:
            slot = self._slots.get(key)
            out.append(None if slot is None else float(self._vectors[slot] @ vector))
        return out

    def _exact(self, vector: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_]) -> list[tuple[int, float]]:
        candidates = np.flatnonzero(mask)
        if not len(candidates):
            return []
        if len(candidates) == self._used:
            scores = self._vectors[: self._used] @ vector
        else:
            scores = self._vectors[candidates] @ vector
        top = min(k, len(candidates))
        best = np.argpartition(-scores, top - 1)[:top] if top < len(candidates) else np.arange(len(candidates))
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(self._keys[candidates[i]]), float(scores[i])) for i in best]

    def _graph_search(
        self, vector: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_], *, filtered: bool
    ) -> list[tuple[int, float]] | None:
        allowed_count = int(mask.sum())
        if filtered and allowed_count < 4 * k * 16:
            return None  # few enough rows pass the filter: exact over them is cheaper and complete
        fetch = min(len(self._slots), k * 4 if filtered else k)
        matches = self._graph.search(vector, fetch)
        out: list[tuple[int, float]] = []
        for key, distance in zip(matches.keys.tolist(), matches.distances.tolist(), strict=True):
            slot = self._slots.get(int(key))
            if slot is not None and mask[slot]:
                out.append((int(key), 1.0 - float(distance)))
                if len(out) == k:
                    return out
        return out if len(out) >= min(k, allowed_count) else None
