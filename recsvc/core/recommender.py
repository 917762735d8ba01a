"""The Recommender: answers Recommend and SimilarItems for one loaded model version."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsvc.core.foldin import fold_in_many
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
    validate_batch,
)
from recsvc.core.ranking import mmr
from recsvc.core.state import UserState
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

    def recommend(self, query: RecommendQuery, state: UserState | None = None) -> Recommendation:
        """Top-k items for a user, a session, or everyone (popular), per ``query``.

        ``state`` is what the store knows beyond the model: interactions since training (they
        are excluded like the training history) and the user's folded-in vector, which wins
        over the model's own user factors.
        """
        query.validate(self.limits)
        state = state or UserState()
        model = self.model
        user_row = model.users.row(query.user_id) if query.user_id else None
        recent_rows = model.items.rows(query.recent_item_ids)
        blocked = model.items.rows(query.exclude_item_ids)
        if query.exclude_seen:
            seen = model.seen_items(user_row) if user_row is not None else np.empty(0, np.int64)
            history = model.items.rows(state.history)
            blocked = np.concatenate([blocked, seen, history, recent_rows])
        allowed = self._allowed_mask(query.categories)

        if state.vector is not None and state.vector.shape == (model.item_factors.shape[1],):
            vector = state.vector
            strategy = Strategy.PERSONALISED
        elif user_row is not None:
            vector = model.user_factors[user_row]
            strategy = Strategy.PERSONALISED
        elif len(recent_rows):
            rows = np.unique(recent_rows)
            vector = self._fold_in_many([(rows, np.ones(len(rows), dtype=np.float32))])[0]
            strategy = Strategy.SESSION
        else:
            labels, scores = self._popular(query.k, blocked, allowed)
            return Recommendation(self._scored(labels, scores), model.version, Strategy.POPULAR)

        if query.diversity > 0:
            pool = min(model.info.num_items, max(3 * query.k, query.k + 50))
            labels, scores = self._search(model.user_index, vector, pool, blocked, allowed)
            labels, scores = mmr(
                labels, scores, model.similar_index.vectors, query.k, query.diversity
            )
        else:
            labels, scores = self._search(model.user_index, vector, query.k, blocked, allowed)
        return Recommendation(self._scored(labels, scores), model.version, strategy)

    def fold_in_user(
        self, user_id: str, history: dict[str, float]
    ) -> npt.NDArray[np.float32] | None:
        """The user's vector from the training history plus ``history`` (item -> weight of
        interactions since), by the model's own rule; None when no known item is involved."""
        return self.fold_in_users({user_id: history}).get(user_id)

    def fold_in_users(
        self, histories: dict[str, dict[str, float]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """:meth:`fold_in_user` for many users, solved in one batch (users without any known
        item are left out)."""
        users: list[str] = []
        inputs: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = []
        for user_id, history in histories.items():
            rows, weights = self._combined_history(user_id, history)
            if len(rows):
                users.append(user_id)
                inputs.append((rows, weights))
        if not users:
            return {}
        return dict(zip(users, self._fold_in_many(inputs), strict=True))

    def _combined_history(
        self, user_id: str, history: dict[str, float]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Distinct item rows and summed weights: training history plus ``history``."""
        model = self.model
        new_rows = model.items.rows(history)
        new_weights = np.fromiter(
            (w for item, w in history.items() if item in model.items), np.float32, len(new_rows)
        )
        user_row = model.users.row(user_id)
        if user_row is not None:
            start, end = model.user_items.indptr[user_row], model.user_items.indptr[user_row + 1]
            new_rows = np.concatenate([model.user_items.indices[start:end], new_rows])
            new_weights = np.concatenate([model.user_items.data[start:end], new_weights])
        rows, inverse = np.unique(new_rows.astype(np.int64), return_inverse=True)
        weights = np.bincount(inverse, weights=new_weights, minlength=len(rows))
        return rows, weights.astype(np.float32)

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

    def _fold_in_many(
        self, inputs: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
    ) -> npt.NDArray[np.float32]:
        """User vectors from (distinct item rows, weights) pairs, by the model's own rule. The
        weights get the training's weighting where it is per-entry (binary); for bm25/tf-idf,
        which need corpus statistics, raw weights are an approximation."""
        model = self.model
        if model.info.parameters.get("weighting") == "binary":
            inputs = [(rows, np.ones_like(weights)) for rows, weights in inputs]
        yty = model.yty if model.info.algorithm == "als" else None
        return fold_in_many(model.item_factors, yty, inputs, model.regularization, model.alpha)

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
    validate_batch(queries, recommender.limits)
    return [recommender.recommend(query) for query in queries]
