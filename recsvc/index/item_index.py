"""ItemIndex: top-k item search by inner product or cosine, over hnswlib or exactly.

Two metrics are served, both through hnswlib's inner-product space:

- ``"ip"`` (user -> item): unnormalised ALS factors searched by inner product directly. The
  MIPS-to-nearest-neighbour transform (append ``sqrt(M^2 - |y|^2)``, search by L2) was measured
  and lost at every ef on real ALS factors (bench/index_recall.py, docs/BENCHMARKS.md), so it is
  not used. What lifts recall is an exact pass over the "head", the ``exact_head_share`` of
  items with the largest norms, merged with the graph's candidates: those items dominate
  inner-product top-k lists and are the ones the graph search misses (recall@10 0.84 -> 1.00
  on 20k ALS item vectors at ef 128, for +0.03 ms a query). Recall is measured against exact
  search at build time and kept in the manifest; small catalogues are searched exactly.
- ``"cosine"`` (item -> item): vectors are L2-normalised and searched by inner product.

Candidates from HNSW are rescored exactly, so scores are true inner products / cosines.
hnswlib's ``knn_query`` may run alongside other queries but not alongside writes; this class
never writes after construction (a new model means a new ItemIndex).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import hnswlib
import numpy as np
import numpy.typing as npt

from recsvc.index.params import EF_LADDER, RECALL_TARGET, GraphParams, SearchParams

Metric = Literal["ip", "cosine"]
FloatMatrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# Per element, besides the graph: the upper-level pointer, level and lock, and the
# label -> id hash map entry (libstdc++ unordered_map node plus bucket).
_HNSW_BOOKKEEPING_BYTES = 8 + 4 + 40 + 48


class ItemIndex:
    """Top-k search over a fixed set of item vectors (rows of ``vectors``; labels = row numbers).

    Parameters
    ----------
    vectors : ndarray of float32, shape (n_items, dim)
        The item vectors, as learned (not normalised).
    metric : "ip" or "cosine"
    hnsw : hnswlib.Index or None
        The built index over the transformed vectors, or None for exact search only.
    """

    def __init__(
        self,
        vectors: FloatMatrix,
        metric: Metric,
        hnsw: hnswlib.Index | None,
        exact_head_share: float = 0.02,
    ) -> None:
        self.metric: Metric = metric
        self.vectors = _prepare(vectors, metric)
        self.hnsw = hnsw
        self.threads = 1
        # Inner-product top-k is dominated by the largest vectors, and those are what the graph
        # search misses most: the head (largest norms) is also searched exactly and merged.
        self.head = np.empty(0, dtype=np.int64)
        if metric == "ip" and hnsw is not None and exact_head_share > 0 and self.size:
            count = min(self.size, max(64, round(exact_head_share * self.size)))
            norms = np.einsum("ij,ij->i", self.vectors, self.vectors)
            self.head = np.argsort(-norms, kind="stable")[:count].astype(np.int64)
        self.head_vectors = self.vectors[self.head]

    def memory_bytes(self) -> int:
        """Bytes this index holds: its vectors, the exact head, and the HNSW graph (estimated
        from hnswlib's layout: each element's level-0 links, vector and label, its share of
        the upper levels, and the label map)."""
        arrays = self.vectors.nbytes + self.head.nbytes + self.head_vectors.nbytes
        if self.hnsw is None:
            return int(arrays)
        n, m, dim = self.hnsw.get_current_count(), self.hnsw.M, self.hnsw.dim
        level0 = (2 * m + 1) * 4 + dim * 4 + 8  # links of 2M neighbours + count, data, label
        upper = (m + 1) * 4 / max(m - 1, 1)  # levels above 0: expected 1/(M-1) per element
        per_element = level0 + upper + _HNSW_BOOKKEEPING_BYTES
        return int(arrays + n * per_element)

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def build(
        cls, vectors: FloatMatrix, metric: Metric, graph: GraphParams, search: SearchParams
    ) -> ItemIndex:
        """Build the HNSW graph over ``vectors`` (float32, shape (n_items, dim)), to be
        searched with ``search``."""
        data = _prepare(vectors, metric)
        index = hnswlib.Index(space="ip", dim=data.shape[1])
        index.init_index(
            max_elements=max(1, len(data)),
            ef_construction=graph.ef_construction,
            M=graph.m,
            random_seed=graph.seed,
        )
        if len(data):
            index.add_items(data, np.arange(len(data)), num_threads=graph.threads)
        return cls._searched_with(vectors, metric, index, search)

    def save_hnsw(self, path: Path) -> None:
        """Write the HNSW graph to ``path`` (the caller makes it atomic and checksums it)."""
        if self.hnsw is None:
            raise ValueError("this index has no HNSW graph to save")
        self.hnsw.save_index(os.fspath(path))

    @classmethod
    def load(
        cls,
        vectors: FloatMatrix,
        metric: Metric,
        hnsw_params: Mapping[str, object],
        search: SearchParams,
    ) -> ItemIndex:
        """An index over ``vectors`` with a graph :meth:`save_hnsw` wrote, given as the dict
        hnswlib's ``Index(params)`` copies (``recsvc.artifacts.hnsw_header.read_hnsw_file``
        reads it from the file, checking what hnswlib does not: the dimension, the count and
        every link)."""
        params = dict(hnsw_params, ef=search.ef, num_threads=os.cpu_count() or 1)
        index = hnswlib.Index(params)
        if index.get_current_count() != len(vectors) or index.dim != vectors.shape[1]:
            raise ValueError(
                f"HNSW graph of {index.get_current_count()} {index.dim}-d items, "
                f"expected {len(vectors)} {vectors.shape[1]}-d"
            )
        return cls._searched_with(vectors, metric, index, search)

    @classmethod
    def _searched_with(
        cls, vectors: FloatMatrix, metric: Metric, hnsw: hnswlib.Index, search: SearchParams
    ) -> ItemIndex:
        hnsw.set_ef(search.ef)  # ef is not saved with the index
        index = cls(vectors, metric, hnsw, search.exact_head_share)
        index.threads = search.threads
        return index

    def search(
        self, query: npt.NDArray[np.float32], k: int, exact: bool = False
    ) -> tuple[IntArray, npt.NDArray[np.float32]]:
        """Top-``k`` items for one query vector, best first.

        Returns (labels int64 shape (<=k,), scores float32 shape (<=k,)); ``k`` is clamped to the
        number of items.
        """
        labels, scores = self.search_many(np.asarray(query)[None, :], k, exact)
        return labels[0], scores[0]

    def search_many(
        self, queries: FloatMatrix, k: int, exact: bool = False
    ) -> tuple[npt.NDArray[np.int64], FloatMatrix]:
        """Top-``k`` items for each row of ``queries`` (shape (n, dim)), best first: one
        hnswlib call and one exact pass over the head for all of them.

        Returns (labels int64 shape (n, k), scores float32 shape (n, k)), ``k`` clamped to the
        number of items.
        """
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if k <= 0:
            return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32)
        if self.metric == "cosine":
            queries = normalise_rows(queries)
        if exact or self.hnsw is None:
            return _top_k_rows(queries @ self.vectors.T, np.arange(self.size), k)
        found, _ = self.hnsw.knn_query(queries, k=k, num_threads=self.threads)
        candidates = found.astype(np.int64)
        if len(self.head):
            head_scores = queries @ self.head_vectors.T
            if k < len(self.head):
                head_top = np.argpartition(-head_scores, k - 1, axis=1)[:, :k]
                head_labels = self.head[head_top]
            else:
                head_labels = np.broadcast_to(self.head, head_scores.shape)
            candidates = np.concatenate([candidates, head_labels], axis=1)
        # Exact scores for every candidate, ranked; an item found twice (graph and head) once.
        # (Row-wise fancy indexing: take_along_axis costs ~4x as much on arrays this small.)
        rows = np.arange(len(queries))[:, None]
        scores = np.matmul(self.vectors[candidates], queries[:, :, None])[..., 0]
        by_label = np.argsort(candidates, axis=1, kind="stable")
        candidates = candidates[rows, by_label]
        scores = scores[rows, by_label]
        scores[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return candidates[rows, best], scores[rows, best].astype(np.float32, copy=False)


def _top_k_rows(
    scores: FloatMatrix, labels: IntArray, k: int
) -> tuple[npt.NDArray[np.int64], FloatMatrix]:
    """The ``k`` best of each row of ``scores`` (columns named by ``labels``), best first."""
    if k < scores.shape[1]:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return (
        labels[np.take_along_axis(top, order, axis=1)].astype(np.int64),
        np.take_along_axis(top_scores, order, axis=1).astype(np.float32),
    )


def exact_top_k(
    vectors: FloatMatrix, query: npt.NDArray[np.float32], k: int
) -> tuple[IntArray, npt.NDArray[np.float32]]:
    """Exact top-``k`` rows of ``vectors`` by inner product with ``query``, best first."""
    k = min(k, len(vectors))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    labels, scores = _top_k_rows((vectors @ query)[None, :], np.arange(len(vectors)), k)
    return labels[0], scores[0]


def recall_at_k(index: ItemIndex, queries: FloatMatrix, k: int = 10) -> float:
    """Mean share of the exact top-``k`` that the HNSW search finds, over ``queries``."""
    if len(queries) == 0 or index.size == 0:
        return 1.0
    k = min(k, index.size)
    return _recall(index, queries, _exact_labels(index, queries, k))


def tune_ef(
    index: ItemIndex,
    queries: FloatMatrix,
    k: int = 10,
    ladder: tuple[int, ...] = EF_LADDER,
    target: float = RECALL_TARGET,
) -> tuple[int, float]:
    """The smallest ef of ``ladder`` at which the search (graph and exact head, as served)
    finds ``target`` of the exact top-``k`` of ``queries``, else the largest; returns it with
    its recall@k and leaves the index at it. An index without a graph: (0, 1.0)."""
    if index.hnsw is None:
        return 0, 1.0
    if len(queries) == 0 or index.size == 0:
        return int(index.hnsw.ef), 1.0
    truth = _exact_labels(index, queries, min(k, index.size))  # once for every ef
    for ef in ladder:
        index.hnsw.set_ef(ef)
        recall = _recall(index, queries, truth)
        if recall >= target:
            break
    return ef, recall


def _exact_labels(index: ItemIndex, queries: FloatMatrix, k: int) -> IntArray:
    """The exact top-``k`` of each query, a few queries at a time (a score row per item each)."""
    step = max(1, 4_000_000 // index.size)
    chunks = [queries[start : start + step] for start in range(0, len(queries), step)]
    return np.vstack([index.search_many(chunk, k, exact=True)[0] for chunk in chunks])


def _recall(index: ItemIndex, queries: FloatMatrix, truth: IntArray) -> float:
    """Share of ``truth`` (exact top-k per query) that the search at its current ef finds."""
    k = int(truth.shape[1])
    found, _ = index.search_many(queries, k)
    hits = sum(int(np.intersect1d(a, b).size) for a, b in zip(found, truth, strict=True))
    return hits / (k * len(queries))


def _prepare(vectors: FloatMatrix, metric: Metric) -> FloatMatrix:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"item vectors must be 2-D, got shape {vectors.shape}")
    return normalise_rows(vectors) if metric == "cosine" else vectors


def normalise_rows(vectors: npt.NDArray[np.floating]) -> FloatMatrix:
    """Each row scaled to unit length (zero rows stay zero), as float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: FloatMatrix = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised
