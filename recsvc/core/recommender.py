"""The Recommender: answers Recommend and SimilarItems for one loaded model version."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsvc.core.foldin import als_fold_in, least_squares_fold_in
from recsvc.core.model import Model
from recsvc.core.queries import (
    CategoryFilter,
    Limits,
    Recommendation,
    RecommendQuery,
    ScoredItem,
    SimilarItems,
    SimilarityMode,
    SimilarQuery,
    Strategy,
    check_batch_size,
)
from recsvc.errors import NotFound, NotImplementedYet
from recsvc.index import ItemIndex

# Below this share of allowed items, a category filter is served by exact search over the
# allowed items: over-fetching from HNSW would have to read most of the graph to find k.
_EXACT_FILTER_SHARE = 0.05


class Recommender:
    """Answers queries against one immutable model version.

    A new model version means a new Recommender; callers swap the reference atomically.
    """

    def __init__(self, model: Model, limits: Limits, exact_search_max_items: int = 0) -> None:
        self.model = model
        self.limits = limits
        self.exact = model.info.num_items <= exact_search_max_items

    @property
    def version(self) -> str:
        return self.model.version

    def recommend(self, query: RecommendQuery) -> Recommendation:
        """Top-k items for a user, a session, or everyone (popular), per ``query``."""
        query.validate(self.limits)
        model = self.model
        user_row = model.users.row(query.user_id) if query.user_id else None
        recent_rows = model.items.rows(query.recent_item_ids)
        blocked = model.items.rows(query.exclude_item_ids)
        if query.exclude_seen:
            seen = model.seen_items(user_row) if user_row is not None else np.empty(0, np.int64)
            blocked = np.concatenate([blocked, seen, recent_rows])
        allowed = self._allowed_mask(query.categories)

        if user_row is not None:
            vector = model.user_factors[user_row]
            strategy = Strategy.PERSONALISED
        elif len(recent_rows):
            vector = self._fold_in(np.unique(recent_rows))
            strategy = Strategy.SESSION
        else:
            labels, scores = self._popular(query.k, blocked, allowed)
            return Recommendation(self._scored(labels, scores), model.version, Strategy.POPULAR)

        labels, scores = self._search(model.user_index, vector, query.k, blocked, allowed)
        return Recommendation(self._scored(labels, scores), model.version, strategy)

    def similar_items(self, query: SimilarQuery) -> SimilarItems:
        """Items most similar to ``query.item_id`` (never the item itself)."""
        query.validate(self.limits)
        if query.mode is not SimilarityMode.COLLABORATIVE:
            raise NotImplementedYet(f"mode: {query.mode.value} similarity is not implemented yet")
        model = self.model
        row = model.items.row(query.item_id)
        if row is None:
            raise NotFound("item_id", f"unknown item {query.item_id!r}")
        blocked = np.asarray([row], dtype=np.int64)
        allowed = self._allowed_mask(query.categories)
        vector = model.item_factors[row]
        labels, scores = self._search(model.similar_index, vector, query.k, blocked, allowed)
        return SimilarItems(self._scored(labels, scores), model.version)

    def _fold_in(self, item_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """A user vector from interacted items (weight 1 each), by the model's own rule."""
        model = self.model
        weights = np.ones(len(item_rows), dtype=np.float32)
        if model.info.algorithm == "als":
            return als_fold_in(
                model.item_factors, model.yty, item_rows, weights, model.regularization, model.alpha
            )
        return least_squares_fold_in(model.item_factors, item_rows, weights, model.regularization)

    def _allowed_mask(self, categories: CategoryFilter) -> npt.NDArray[np.bool_] | None:
        """Boolean mask of items the category filter lets through; None when there is no filter."""
        if not categories.active:
            return None
        codes = self.model.item_categories
        mask = np.ones(len(codes), dtype=bool)
        if categories.include:
            mask &= np.isin(codes, self.model.category_codes(categories.include))
        if categories.exclude:
            mask &= ~np.isin(codes, self.model.category_codes(categories.exclude))
        return mask

    def _search(
        self,
        index: ItemIndex,
        vector: npt.NDArray[np.float32],
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k labels and scores that are not blocked and are allowed."""
        if allowed is not None and allowed.mean() < _EXACT_FILTER_SHARE:
            candidates = np.flatnonzero(allowed)
            candidates = candidates[~np.isin(candidates, blocked)]
            scores = index.vectors[candidates] @ _as_query(index, vector)
            order = np.argsort(-scores, kind="stable")[:k]
            return candidates[order].astype(np.int64), scores[order].astype(np.float32)
        # Over-fetch enough to survive the exclusions; widen while too few remain.
        fetch = k + len(blocked)
        while True:
            labels, scores = index.search(vector, fetch, exact=self.exact)
            keep = ~np.isin(labels, blocked)
            if allowed is not None:
                keep &= allowed[labels]
            if keep.sum() >= k or fetch >= index.size:
                return labels[keep][:k], scores[keep][:k]
            fetch = min(index.size, fetch * 4)

    def _popular(
        self, k: int, blocked: npt.NDArray[np.int64], allowed: npt.NDArray[np.bool_] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        order = self.model.popular_order
        keep = ~np.isin(order, blocked)
        if allowed is not None:
            keep &= allowed[order]
        labels = order[keep][:k]
        return labels, self.model.item_popularity[labels]

    def _scored(
        self, labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]
    ) -> list[ScoredItem]:
        ids = self.model.items.ids
        return [
            ScoredItem(ids[label], float(score))
            for label, score in zip(labels, scores, strict=True)
        ]


def _as_query(index: ItemIndex, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The query as the index scores it: normalised for a cosine index."""
    if index.metric == "cosine":
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
    return vector


def recommend_batch(
    recommender: Recommender, queries: list[RecommendQuery]
) -> list[Recommendation]:
    """Recommend for each query; every query is validated first, so a bad one fails the whole
    batch with a message naming it (``requests[i].field``) before any work is done."""
    check_batch_size(len(queries), recommender.limits, "requests")
    for position, query in enumerate(queries):
        query.validate(recommender.limits, prefix=f"requests[{position}].")
    return [recommender.recommend(query) for query in queries]
