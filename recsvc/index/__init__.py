"""Nearest-neighbour search over item vectors: HNSW (hnswlib) with an exact fallback."""

from recsvc.index.item_index import (
    ItemIndex,
    Metric,
    exact_top_k,
    normalise_rows,
    recall_at_k,
    tune_ef,
)
from recsvc.index.params import (
    DEFAULT_EF_SEARCH,
    DEFAULT_EXACT_HEAD_SHARE,
    DEFAULT_SIMILAR_EF_SEARCH,
    SIMILAR_EF_LADDER,
    SIMILAR_RECALL_TARGET,
    GraphParams,
    IndexBuildParams,
    IndexSearchParams,
    SearchParams,
)

__all__ = [
    "DEFAULT_EF_SEARCH",
    "DEFAULT_EXACT_HEAD_SHARE",
    "DEFAULT_SIMILAR_EF_SEARCH",
    "SIMILAR_EF_LADDER",
    "SIMILAR_RECALL_TARGET",
    "GraphParams",
    "IndexBuildParams",
    "IndexSearchParams",
    "ItemIndex",
    "Metric",
    "SearchParams",
    "exact_top_k",
    "normalise_rows",
    "recall_at_k",
    "tune_ef",
]
