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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import hnswlib
import numpy as np
import numpy.typing as npt

Metric = Literal["ip", "cosine"]
FloatMatrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class IndexParams:
    """HNSW build and query parameters."""

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    similar_ef_search: int = 512
    seed: int = 42
    threads: int = 1
    exact_head_share: float = 0.02


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

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def build(cls, vectors: FloatMatrix, metric: Metric, params: IndexParams) -> ItemIndex:
        """Build the HNSW graph over ``vectors`` (float32, shape (n_items, dim))."""
        data = _prepare(vectors, metric)
        index = hnswlib.Index(space="ip", dim=data.shape[1])
        index.init_index(
            max_elements=max(1, len(data)),
            ef_construction=params.ef_construction,
            M=params.m,
            random_seed=params.seed,
        )
        if len(data):
            index.add_items(data, np.arange(len(data)), num_threads=params.threads)
        index.set_ef(params.ef_search)
        built = cls(vectors, metric, index, params.exact_head_share)
        built.threads = params.threads
        return built

    def save_hnsw(self, path: Path) -> None:
        """Write the HNSW graph to ``path`` (the caller makes it atomic and checksums it)."""
        if self.hnsw is None:
            raise ValueError("this index has no HNSW graph to save")
        self.hnsw.save_index(os.fspath(path))

    @classmethod
    def load(
        cls, vectors: FloatMatrix, metric: Metric, hnsw_path: Path, params: IndexParams
    ) -> ItemIndex:
        """Load a graph saved by :meth:`save_hnsw`. Verify the file's checksum before calling this:
        hnswlib checks neither the dimension nor the integrity of what it reads."""
        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.load_index(os.fspath(hnsw_path), max_elements=0)
        if index.get_current_count() != len(vectors):
            raise ValueError(
                f"HNSW file holds {index.get_current_count()} items, expected {len(vectors)}"
            )
        index.set_ef(params.ef_search)  # ef is not saved with the index
        loaded = cls(vectors, metric, index, params.exact_head_share)
        loaded.threads = params.threads
        return loaded

    def search(
        self, query: npt.NDArray[np.float32], k: int, exact: bool = False
    ) -> tuple[IntArray, npt.NDArray[np.float32]]:
        """Top-``k`` items for one query vector, best first.

        Returns (labels int64 shape (<=k,), scores float32 shape (<=k,)); ``k`` is clamped to the
        number of items.
        """
        k = min(k, self.size)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        query = np.ascontiguousarray(query, dtype=np.float32)
        if self.metric == "cosine":
            query = normalise_rows(query[None, :])[0]
        if exact or self.hnsw is None:
            return exact_top_k(self.vectors, query, k)
        labels, _ = self.hnsw.knn_query(query[None, :], k=k, num_threads=self.threads)
        candidates = labels[0].astype(np.int64)
        if len(self.head):
            head_labels, _ = exact_top_k(self.head_vectors, query, k)
            candidates = np.union1d(candidates, self.head[head_labels])
        scores = self.vectors[candidates] @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return candidates[order], scores[order].astype(np.float32)


def exact_top_k(
    vectors: FloatMatrix, query: npt.NDArray[np.float32], k: int
) -> tuple[IntArray, npt.NDArray[np.float32]]:
    """Exact top-``k`` rows of ``vectors`` by inner product with ``query``, best first."""
    scores = vectors @ query
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top].astype(np.float32)


def recall_at_k(index: ItemIndex, queries: FloatMatrix, k: int = 10) -> float:
    """Mean share of the exact top-``k`` that the HNSW search finds, over ``queries``."""
    if len(queries) == 0 or index.size == 0:
        return 1.0
    k = min(k, index.size)
    found = 0
    for query in queries:
        approx, _ = index.search(query, k)
        truth, _ = index.search(query, k, exact=True)
        found += len(np.intersect1d(approx, truth))
    return found / (k * len(queries))


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
