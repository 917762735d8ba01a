"""The Recommender: answers Recommend and SimilarItems for one loaded model version."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc.core.added import AddedItems, NewItem
from recsvc.core.foldin import fold_in_segments
from recsvc.core.model import Model, VisualPart
from recsvc.core.queries import (
    CategoryFilter,
    ImageQuery,
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
from recsvc.errors import FailedPrecondition, InvalidArgument, NotFound
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
        visual_dim = model.visual.dim if model.visual is not None else 0
        # Replaced (never mutated) by add_items: a query holds on to the table it started with.
        self.added = AddedItems.empty(model.item_factors.shape[1], visual_dim)

    @property
    def version(self) -> str:
        return self.model.version

    def recommend(self, query: RecommendQuery, state: UserState | None = None) -> Recommendation:
        """Top-k items for a user, a session, or everyone (popular), per ``query``.

        ``state`` is what the store knows beyond the model: interactions since training (they
        are excluded like the training history) and the user's folded-in vector, which wins
        over the model's own user factors.
        """
        return self.recommend_many([query], [state or UserState()])[0]

    def recommend_many(
        self, queries: list[RecommendQuery], states: list[UserState], validated: bool = False
    ) -> list[Recommendation]:
        """:meth:`recommend` for many queries. Their graph searches run as one hnswlib call
        (and one exact pass over the head) when they need no filter; the rest one by one.
        ``validated``: the caller has already checked every query against ``self.limits``."""
        if not validated:
            for query in queries:
                query.validate(self.limits)
        plans = [self._plan(query, state) for query, state in zip(queries, states, strict=True)]
        found: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = {}
        for group in _batches(plans).values():
            fetch = max(plan.fetch for _, plan in group)
            vectors = np.stack([plan.vector for _, plan in group])
            labels, scores = self.model.user_index.search_many(vectors, fetch, self.exact)
            for row, (n, plan) in enumerate(group):
                if not len(plan.blocked):  # nothing to exclude: skip isin (~10 us a query)
                    found[n] = labels[row][: plan.pool], scores[row][: plan.pool]
                    continue
                keep = ~np.isin(labels[row], plan.blocked)
                if keep.sum() >= plan.pool or fetch >= self.model.info.num_items:
                    found[n] = labels[row][keep][: plan.pool], scores[row][keep][: plan.pool]
        results: list[Recommendation] = []
        for n, planned in enumerate(plans):
            if isinstance(planned, Recommendation):
                results.append(planned)
                continue
            labels, scores = found.get(n) or self._search(
                self.model.user_index,
                planned.vector,
                planned.pool,
                planned.blocked,
                planned.allowed,
                extra=planned.extra,
            )
            results.append(self._finish(planned, labels, scores))
        return results

    def _plan(self, query: RecommendQuery, state: UserState) -> _Plan | Recommendation:
        """What a query searches for (its vector, what it excludes), or its answer when there
        is nothing to search with (popular items). The query is already validated."""
        model, added = self.model, self.added
        user_row = model.users.row(query.user_id) if query.user_id else None
        recent_rows = self._rows(query.recent_item_ids, added)
        blocked = self._rows(query.exclude_item_ids, added)
        if query.exclude_seen:
            seen = model.seen_items(user_row) if user_row is not None else _NO_ROWS
            history = self._rows(state.history, added)
            parts = [rows for rows in (blocked, seen, history, recent_rows) if len(rows)]
            if parts:  # most queries block nothing: no concatenation then
                blocked = np.concatenate(parts).astype(np.int64, copy=False)
        allowed = self._allowed_mask(query.categories, added)

        if state.vector is not None and state.vector.shape == (model.item_factors.shape[1],):
            vector = state.vector
            strategy = Strategy.PERSONALISED
        elif user_row is not None:
            vector = model.user_factors[user_row]
            strategy = Strategy.PERSONALISED
        elif len(recent_model_rows := recent_rows[recent_rows < model.info.num_items]):
            rows = np.unique(recent_model_rows)
            ones = np.ones(len(rows), dtype=np.float32)
            vector = self._fold_in_segments(rows, ones, np.array([len(rows)]))[0]
            strategy = Strategy.SESSION
        else:
            labels, scores = self._popular(query.k, blocked, allowed)
            return Recommendation(
                self._scored(labels, scores, added), model.version, Strategy.POPULAR
            )
        # Diversity re-ranks a larger pool of the best candidates.
        pool = query.k
        if query.diversity > 0:
            pool = min(model.info.num_items, max(3 * query.k, query.k + 50))
        extra = (added.factors, None) if len(added) else None
        return _Plan(query, vector, strategy, blocked, allowed, extra, added, pool)

    def _finish(
        self, plan: _Plan, labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]
    ) -> Recommendation:
        if plan.query.diversity > 0:
            unit = self._unit_factors(labels, plan.added)
            picked, scores = mmr(
                np.arange(len(labels)), scores, unit, plan.query.k, plan.query.diversity
            )
            labels = labels[picked]
        return Recommendation(
            self._scored(labels, scores, plan.added), self.model.version, plan.strategy
        )

    def add_items(self, items: list[NewItem]) -> tuple[int, int]:
        """Add or update items; returns (created, updated). A new item enters the collaborative
        search with the projection of its image embedding (no image and no projection: it is
        kept by the caller for the next training but cannot be ranked yet). An item the model
        already knows is counted as updated; its learned vectors stay."""
        model, added = self.model, self.added
        visual = model.visual
        created = updated = 0
        ids: list[str] = []
        categories: list[str] = []
        raws: list[npt.NDArray[np.float32]] = []
        for item in items:
            if item.item_id in model.items:
                updated += 1
                continue
            if item.item_id in added.rows:
                updated += 1
            else:
                created += 1
            if item.embedding is not None and visual is not None and visual.projection is not None:
                ids.append(item.item_id)
                categories.append(item.category)
                raws.append(item.embedding)
        if ids and visual is not None and visual.projection is not None:
            raw = np.stack(raws).astype(np.float32)
            self.added = added.with_items(
                ids,
                categories,
                visual.projection.apply(raw),
                visual.to_visual_space(raw),
                np.ones(len(ids), dtype=bool),
            )
        return created, updated

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
        item are left out).

        The training histories and the new ones are merged for all users at once, by one
        sparse conversion, instead of a merge per user: this runs in every RecordInteractions
        call (docs/BENCHMARKS.md, ingestion).
        """
        if not histories:
            return {}
        model = self.model
        n_items = model.info.num_items
        user_ids = list(histories)
        # Every (user position, item row, weight) of the new histories, flattened once.
        sizes = np.fromiter(map(len, histories.values()), np.int64, len(histories))
        items = list(chain.from_iterable(histories.values()))
        new_rows = model.items.rows_or_missing(items)
        new_weights = np.fromiter(
            chain.from_iterable(h.values() for h in histories.values()), np.float32, len(items)
        )
        new_positions = np.repeat(np.arange(len(user_ids), dtype=np.int64), sizes)
        found = new_rows >= 0
        user_rows = model.users.rows_or_missing(user_ids)
        known = np.flatnonzero(user_rows >= 0)
        training = model.user_items[user_rows[known]]
        # Training rows and new interactions summed per (user, item) by one sparse conversion
        # (duplicates summed, items sorted within each user).
        merged = sp.csr_matrix(
            (
                np.concatenate([training.data, new_weights[found]]),
                (
                    np.concatenate(
                        [np.repeat(known, np.diff(training.indptr)), new_positions[found]]
                    ),
                    np.concatenate([training.indices, new_rows[found]]),
                ),
            ),
            shape=(len(user_ids), n_items),
            dtype=np.float32,
        )
        merged.sum_duplicates()
        lengths = np.diff(merged.indptr)
        with_items = np.flatnonzero(lengths)
        if len(with_items) == 0:
            return {}
        vectors = self._fold_in_segments(
            merged.indices.astype(np.int64), merged.data, lengths[with_items]
        )
        return {user_ids[p]: vectors[n] for n, p in enumerate(with_items)}

    def similar_items(self, query: SimilarQuery, visual_weight: float = 0.5) -> SimilarItems:
        """Items most similar to ``query.item_id`` (never the item itself), by the query's mode:
        item factors (collaborative), image embeddings (visual) or a blend of both (hybrid,
        ``visual_weight`` on the visual cosine)."""
        query.validate(self.limits)
        if query.mode is not SimilarityMode.COLLABORATIVE:
            self.visual_part("mode")
        model, added = self.model, self.added
        label = self._rows([query.item_id], added)
        if len(label) == 0:
            raise NotFound("item_id", f"unknown item {query.item_id!r}")
        row = int(label[0])
        blocked = label
        allowed = self._allowed_mask(query.categories, added)
        n = model.info.num_items
        factors = model.item_factors[row] if row < n else added.factors[row - n]
        if query.mode is SimilarityMode.COLLABORATIVE:
            labels, scores = self._search(
                model.similar_index,
                factors,
                query.k,
                blocked,
                allowed,
                extra=(added.unit_factors, None) if len(added) else None,
            )
            return SimilarItems(self._scored(labels, scores, added), model.version)
        visual = self.visual_part("mode")
        embedding = visual.embedding_of(row) if row < n else added.visual[row - n]
        if embedding is None:
            if query.mode is SimilarityMode.VISUAL:
                raise NotFound("item_id", f"item {query.item_id!r} has no image embedding")
            visual_weight = 0.0  # hybrid without an image: collaborative only
        if query.mode is SimilarityMode.VISUAL:
            assert embedding is not None
            labels, scores = self._search_visual(embedding, query.k, blocked, allowed, added)
            return SimilarItems(self._scored(labels, scores, added), model.version)
        labels, scores = self._hybrid(
            factors, embedding, query.k, blocked, allowed, visual_weight, added
        )
        return SimilarItems(self._scored(labels, scores, added), model.version)

    def search_by_image(
        self, embedding: npt.NDArray[np.float32], query: ImageQuery
    ) -> SimilarItems:
        """Items whose images are closest to ``embedding``, the raw embedding of a picture made
        by the model's backbone."""
        query.validate(self.limits)
        visual = self.visual_part("image")
        if embedding.shape != (visual.backbone_dim,):
            raise InvalidArgument(
                "image",
                f"embedding has shape {embedding.shape}, expected ({visual.backbone_dim},)",
            )
        embedding = visual.to_visual_space(embedding[None, :])[0]
        added = self.added
        allowed = self._allowed_mask(query.categories, added)
        blocked = np.empty(0, dtype=np.int64)
        labels, scores = self._search_visual(embedding, query.k, blocked, allowed, added)
        return SimilarItems(self._scored(labels, scores, added), self.model.version)

    def _search_visual(
        self,
        embedding: npt.NDArray[np.float32],
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
        added: AddedItems,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        visual = self.visual_part("mode")
        extra = (added.visual, added.has_image) if len(added) else None
        return self._search(
            visual.index, embedding, k, blocked, allowed, rows=visual.rows, extra=extra
        )

    def visual_part(self, field: str) -> VisualPart:
        """The model's image part; FailedPrecondition (naming ``field``) when it has none."""
        if self.model.visual is None:
            raise FailedPrecondition(
                f"{field}: model {self.model.version} has no image embeddings; train it with "
                "`recsvc train --images`"
            )
        return self.model.visual

    def _hybrid(
        self,
        factors: npt.NDArray[np.float32],
        embedding: npt.NDArray[np.float32] | None,
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
        visual_weight: float,
        added: AddedItems,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Candidates from both indexes, rescored by the blend of both cosines (an item without
        an image has visual similarity 0)."""
        model = self.model
        pool = max(3 * k, k + 20)
        extra = (added.unit_factors, None) if len(added) else None
        candidates, _ = self._search(
            model.similar_index, factors, pool, blocked, allowed, extra=extra
        )
        if embedding is not None:
            visual_labels, _ = self._search_visual(embedding, pool, blocked, allowed, added)
            candidates = np.union1d(candidates, visual_labels)
        query = _as_query(model.similar_index, factors)
        scores = (1 - visual_weight) * (self._unit_factors(candidates, added) @ query)
        if embedding is not None:
            scores += visual_weight * (self._visual_vectors(candidates, added) @ embedding)
        order = np.argsort(-scores, kind="stable")[:k]
        return candidates[order].astype(np.int64), scores[order].astype(np.float32)

    def _rows(self, ids: Collection[str], added: AddedItems) -> npt.NDArray[np.int64]:
        """Labels of the known ids among ``ids`` (model items, then added items)."""
        if not ids:
            return _NO_ROWS
        if not len(added):
            return self.model.items.rows(ids)
        n = self.model.info.num_items
        found = [
            row if (row := self.model.items.row(i)) is not None else n + added.rows[i]
            for i in ids
            if i in self.model.items or i in added.rows
        ]
        return np.asarray(found, dtype=np.int64)

    def _unit_factors(
        self, labels: npt.NDArray[np.int64], added: AddedItems
    ) -> npt.NDArray[np.float32]:
        """L2-normalised item factors of ``labels`` (model or added items)."""
        n = self.model.info.num_items
        base = self.model.similar_index.vectors
        if not len(added) or labels.max(initial=-1) < n:
            return base[labels]
        return np.vstack([base, added.unit_factors])[labels]

    def _visual_vectors(
        self, labels: npt.NDArray[np.int64], added: AddedItems
    ) -> npt.NDArray[np.float32]:
        """Visual-space vectors of ``labels``; zero for items without an image."""
        visual = self.visual_part("mode")
        n = self.model.info.num_items
        out = np.zeros((len(labels), visual.dim), dtype=np.float32)
        own = labels < n
        positions = visual.position[labels[own]]
        rows_with_image = np.flatnonzero(own)[positions >= 0]
        out[rows_with_image] = visual.embeddings[positions[positions >= 0]]
        if len(added):
            extra = np.flatnonzero(~own)
            out[extra] = added.visual[labels[extra] - n]
        return out

    def _fold_in_segments(
        self,
        rows: npt.NDArray[np.int64],
        weights: npt.NDArray[np.float32],
        lengths: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """User vectors from consecutive runs of (distinct item rows, weights), by the model's
        own rule (see :func:`fold_in_segments`). The weights get the training's weighting
        where it is per-entry (binary); for bm25/tf-idf, which need corpus statistics, raw
        weights are an approximation."""
        model = self.model
        if model.info.parameters.get("weighting") == "binary":
            weights = np.ones_like(weights)
        yty = model.yty if model.info.algorithm == "als" else None
        return fold_in_segments(
            model.item_factors, yty, rows, weights, lengths, model.regularization, model.alpha
        )

    def _allowed_mask(
        self, categories: CategoryFilter, added: AddedItems
    ) -> npt.NDArray[np.bool_] | None:
        """Boolean mask (model items, then added items) of what the category filter lets
        through; None when there is no filter."""
        if not categories.active:
            return None
        codes = self.model.item_categories
        mask = np.ones(len(codes), dtype=bool)
        if categories.include:
            mask &= np.isin(codes, self.model.category_codes(categories.include))
        if categories.exclude:
            mask &= ~np.isin(codes, self.model.category_codes(categories.exclude))
        if len(added):
            names = np.asarray(added.categories)
            extra = np.ones(len(names), dtype=bool)
            if categories.include:
                extra &= np.isin(names, categories.include)
            if categories.exclude:
                extra &= ~np.isin(names, categories.exclude)
            mask = np.concatenate([mask, extra])
        return mask

    def _search(
        self,
        index: ItemIndex,
        vector: npt.NDArray[np.float32],
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
        rows: npt.NDArray[np.int64] | None = None,
        extra: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None] | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k labels and scores that are not blocked and are allowed.

        ``rows`` maps the index's labels to item rows when they differ (the visual index covers
        only the items that have an image). ``extra``: the added items' vectors in the index's
        space (and which of them may be returned), searched exactly and merged.
        """
        labels, scores = self._search_index(index, vector, k, blocked, allowed, rows)
        if extra is None or not len(extra[0]):
            return labels, scores
        vectors, usable = extra
        extra_labels = self.model.info.num_items + np.arange(len(vectors), dtype=np.int64)
        extra_scores = vectors @ _as_query(index, vector)
        keep = ~np.isin(extra_labels, blocked)
        if usable is not None:
            keep &= usable
        if allowed is not None:
            keep &= allowed[extra_labels]
        labels = np.concatenate([labels, extra_labels[keep]])
        scores = np.concatenate([scores, extra_scores[keep].astype(np.float32)])
        order = np.argsort(-scores, kind="stable")[:k]
        return labels[order], scores[order]

    def _search_index(
        self,
        index: ItemIndex,
        vector: npt.NDArray[np.float32],
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
        rows: npt.NDArray[np.int64] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if rows is not None:
            labels, scores = self._search_index(
                index,
                vector,
                k,
                np.flatnonzero(np.isin(rows, blocked)),
                allowed[rows] if allowed is not None else None,
                None,
            )
            return rows[labels], scores
        if allowed is not None:
            allowed = allowed[: index.size]
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
        self,
        labels: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        added: AddedItems,
    ) -> list[ScoredItem]:
        ids = self.model.items.ids
        n = len(ids)
        # Python ints and floats first: iterating numpy arrays makes a scalar object per element.
        return [
            ScoredItem(ids[label] if label < n else added.ids[label - n], score)
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
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
    return recommender.recommend_many(queries, [UserState() for _ in queries])


@dataclass(frozen=True)
class _Plan:
    """A query ready to search: its vector, what it must not return, what it may return."""

    query: RecommendQuery
    vector: npt.NDArray[np.float32]
    strategy: Strategy
    blocked: npt.NDArray[np.int64]
    allowed: npt.NDArray[np.bool_] | None
    extra: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None] | None
    added: AddedItems
    pool: int  # candidates wanted (k, or the pool diversity picks from)

    @property
    def fetch(self) -> int:
        """Graph results to ask for so that ``pool`` survive the exclusions."""
        return self.pool + len(self.blocked)


def _batches(plans: list[_Plan | Recommendation]) -> dict[int, list[tuple[int, _Plan]]]:
    """The plans that the plain graph search serves (no filter, no added items), grouped by
    how many results they fetch (rounded up to a power of two, at least 32), so that each group
    shares one batched search without making the smaller ones fetch much more."""
    groups: dict[int, list[tuple[int, _Plan]]] = {}
    for n, plan in enumerate(plans):
        if isinstance(plan, _Plan) and plan.allowed is None and plan.extra is None:
            width = max(32, 1 << (plan.fetch - 1).bit_length())
            if width <= _BATCH_FETCH_MAX:
                groups.setdefault(width, []).append((n, plan))
    return groups


_NO_ROWS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False  # shared by every query that lists no ids

# Larger fetches (long histories to exclude) are searched one by one.
_BATCH_FETCH_MAX = 256
