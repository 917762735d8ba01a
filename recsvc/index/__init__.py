"""Nearest-neighbour search over item vectors: HNSW (hnswlib) with an exact fallback."""

from recsvc.index.item_index import (
    IndexParams,
    ItemIndex,
    Metric,
    exact_top_k,
    normalise_rows,
    recall_at_k,
    tune_ef,
)

__all__ = [
    "IndexParams",
    "ItemIndex",
    "Metric",
    "exact_top_k",
    "normalise_rows",
    "recall_at_k",
    "tune_ef",
]
