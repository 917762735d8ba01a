"""The Recommender: answers Recommend and SimilarItems for one loaded model version.

It is the facade over one job per module: the Recommend planner (``recsvc.core.planner``),
candidate search over the indexes plus the added items (``recsvc.core.candidates``),
item-to-item similarity (``recsvc.core.similarity``) and fold-in (``recsvc.core.foldin``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from recsvc.core import examples, similarity
from recsvc.core.added import AddedItems, NewItem
from recsvc.core.candidates import CandidateSearch, not_in
from recsvc.core.catalogue import Catalogue, ItemRecord, build_catalogue, update_catalogue
from recsvc.core.filters import FilterMasks
from recsvc.core.foldin import fold_in_histories
from recsvc.core.model import Model, VisualPart
from recsvc.core.planner import batches, finish, plan_query, search_interests
from recsvc.core.queries import (
    ImageQuery,
    Limits,
    Recommendation,
    RecommendQuery,
    SimilarItems,
    SimilarQuery,
)
from recsvc.core.rules import ActiveRules
from recsvc.core.state import UserState


class Recommender:
    """Answers queries against one immutable model version.

    A new model version means a new Recommender; callers swap the reference atomically.
    """

    def __init__(
        self,
        model: Model,
        limits: Limits,
        exact_search_max_items: int = 0,
        popularity_discount: float = 0.0,
        interests: int = 1,
    ) -> None:
        self.model = model
        self.limits = limits
        # The discount of queries that do not set one (RecommendQuery.popularity_discount).
        self.popularity_discount = popularity_discount
        self.interests = interests  # interest vectors of a query that leaves them at 0
        self.exact = model.info.num_items <= exact_search_max_items
        self._candidates = CandidateSearch(model, self.exact)
        self._filter_masks = FilterMasks()
        visual_dim = model.visual.dim if model.visual is not None else 0
        # Replaced (never mutated) by add_items: a query holds on to the catalogue it started
        # with, and the added-items table in it.
        self._records: Mapping[str, ItemRecord] = {}
        self.catalogue = build_catalogue(
            model, AddedItems.empty(model.item_factors.shape[1], visual_dim), self._records
        )

    @property
    def added(self) -> AddedItems:
        return self.catalogue.added

    @property
    def version(self) -> str:
        return self.model.version

    def recommend(
        self,
        query: RecommendQuery,
        state: UserState | None = None,
        rules: ActiveRules | None = None,
    ) -> Recommendation:
        """Top-k items for a user, a session, or everyone (popular), per ``query``.

        ``state`` is what the store knows beyond the model: interactions since training (they
        are excluded like the training history) and the user's folded-in vector, which wins
        over the model's own user factors. ``rules``: the business rules in force now.
        """
        return self.recommend_many([query], [state or UserState()], rules=rules)[0]

    def recommend_many(
        self,
        queries: list[RecommendQuery],
        states: list[UserState],
        validated: bool = False,
        first: int | None = None,
        rules: ActiveRules | None = None,
        positions: Sequence[int] | None = None,
    ) -> list[Recommendation]:
        """:meth:`recommend` for many queries. Their graph searches run as one hnswlib call
        (and one exact pass over the head) when they need no filter; the rest one by one.
        ``validated``: the caller has already checked every query against ``self.limits``.
        ``first``: the queries are ``requests[first:]`` of a RecommendBatch (errors name
        ``requests[i].filter``); None: separate calls (errors name ``filter``).
        ``rules``: the business rules in force now (boosts and pins, recsvc.core.rules).
        ``positions``: each query's index in the RecommendBatch, when they are not contiguous
        (an experiment's arms answered apart); it overrides ``first``."""
        if not validated:
            for query in queries:
                query.validate(self.limits)
        search = self._candidates
        catalogue = self.catalogue
        where: Sequence[int] | None = positions
        if where is None and first is not None:
            where = range(first, first + len(queries))
        masks = [
            self.filter_mask(
                query.filter,
                "filter" if where is None else f"requests[{where[n]}].filter",
                catalogue,
            )
            if query.filter  # the unfiltered path pays nothing
            else None
            for n, query in enumerate(queries)
        ]
        plans = [
            plan_query(
                search, query, state, catalogue, mask, rules, self._discount(query), self.interests
            )
            for query, state, mask in zip(queries, states, masks, strict=True)
        ]
        found: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = {}
        for group in batches(plans).values():
            fetch = max(plan.fetch for _, plan in group)
            vectors = np.stack([plan.vector for _, plan in group])
            labels, scores = self.model.user_index.search_many(vectors, fetch, self.exact)
            for row, (n, plan) in enumerate(group):
                if not len(plan.blocked) and plan.allowed is None:  # nothing to exclude
                    found[n] = labels[row][: plan.pool], scores[row][: plan.pool]
                    continue
                keep = not_in(labels[row], plan.blocked)
                if plan.allowed is not None:  # hidden items only: the plan has no filter
                    keep &= plan.allowed[labels[row]]
                if keep.sum() >= plan.pool or fetch >= self.model.info.num_items:
                    found[n] = labels[row][keep][: plan.pool], scores[row][keep][: plan.pool]
        results: list[Recommendation] = []
        for n, planned in enumerate(plans):
            if isinstance(planned, Recommendation):
                results.append(planned)
                continue
            labels, scores = found.get(n) or (
                search.search(
                    self.model.user_index,
                    planned.vector,
                    planned.pool,
                    planned.blocked,
                    planned.allowed,
                    extra=planned.extra,
                )
                if planned.interests is None
                else search_interests(search, planned)  # several interest vectors
            )
            results.append(finish(search, planned, labels, scores))
        return results

    def _discount(self, query: RecommendQuery) -> float:
        """The query's popularity discount, or the server's default when it sets none."""
        given = query.popularity_discount
        return self.popularity_discount if given is None else given

    def filter_mask(
        self, text: str, field: str = "filter", catalogue: Catalogue | None = None
    ) -> npt.NDArray[np.bool_] | None:
        """Which labels of ``catalogue`` (default: the current one) filter ``text`` lets
        through, shape (catalogue.size,), read-only; None for no filter. Cached per catalogue
        snapshot. InvalidArgument naming ``field`` for a bad filter (syntax, or a numeric
        comparison on an attribute that is not numeric)."""
        return self._filter_masks.mask(text, catalogue or self.catalogue, field)

    def add_items(
        self,
        items: list[NewItem],
        records: Mapping[str, ItemRecord] | None = None,
        changed: Iterable[ItemRecord] | None = None,
    ) -> tuple[int, int]:
        """Add or update items; returns (created, updated). A new item enters the collaborative
        search with the projection of its image embedding (no image and no projection: it is
        kept by the caller for the next training but cannot be ranked yet). An item the model
        already knows is counted as updated; its learned vectors stay. A deleted item leaves
        the added table.

        ``records``: everything the item log holds, by id (hidden, deleted, categories,
        attributes of any item); the catalogue is rebuilt from it. None: unchanged.
        ``changed``: the records among them that are new since the last call: when the added
        table stays as it was, only their catalogue entries are rewritten."""
        model, added = self.model, self.added
        visual = model.visual
        created = updated = 0
        ids: list[str] = []
        categories: list[str] = []
        raws: list[npt.NDArray[np.float32]] = []
        gone = [item.item_id for item in items if item.deleted and item.item_id in added.rows]
        if gone:
            added = added.without(gone)
        for item in items:
            if item.deleted:
                continue
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
            added = added.with_items(
                ids,
                categories,
                visual.projection.apply(raw),
                visual.to_visual_space(raw),
                np.ones(len(ids), dtype=bool),
            )
        if records is not None:
            self._records = records
        if added is not self.added or (records is not None and changed is None):
            self.catalogue = build_catalogue(model, added, self._records)
        elif changed is not None:
            self.catalogue = update_catalogue(self.catalogue, model, changed)
        return created, updated

    def fold_in_user(
        self,
        user_id: str,
        history: dict[str, float],
        dislikes: Collection[str] = (),
        forgotten: bool = False,
    ) -> npt.NDArray[np.float32] | None:
        """The user's vector from the training history plus ``history`` (item -> weight of
        interactions since), by the model's own rule; None when no known item is involved.
        ``dislikes`` count with zero confidence; ``forgotten``: the training history is not
        used (ForgetUser)."""
        return self.fold_in_users(
            {user_id: history},
            {user_id: dislikes} if dislikes else None,
            (user_id,) if forgotten else (),
        ).get(user_id)

    def fold_in_users(
        self,
        histories: dict[str, dict[str, float]],
        dislikes: Mapping[str, Collection[str]] | None = None,
        forgotten: Collection[str] = (),
    ) -> dict[str, npt.NDArray[np.float32]]:
        """:meth:`fold_in_user` for many users, solved in one batch (users without any known
        item are left out); see :func:`recsvc.core.foldin.fold_in_histories`."""
        return fold_in_histories(self.model, histories, dislikes, forgotten)

    def similar_items(self, query: SimilarQuery, visual_weight: float = 0.5) -> SimilarItems:
        """Items most similar to ``query.item_id`` (never the item itself), by the query's mode:
        item factors (collaborative), image embeddings (visual) or a blend of both (hybrid,
        ``visual_weight`` on the visual cosine)."""
        query.validate(self.limits)
        catalogue = self.catalogue
        matching = self.filter_mask(query.filter, catalogue=catalogue)
        return similarity.similar_items(self._candidates, query, catalogue, visual_weight, matching)

    def search_by_image(
        self, embedding: npt.NDArray[np.float32], query: ImageQuery
    ) -> SimilarItems:
        """Items whose images are closest to ``embedding``, the raw embedding of a picture made
        by the model's backbone."""
        query.validate(self.limits)
        catalogue = self.catalogue
        matching = self.filter_mask(query.filter, catalogue=catalogue)
        return similarity.search_by_image(self._candidates, embedding, query, catalogue, matching)

    def check_examples(self, query: examples.ExamplesQuery) -> None:
        """What RecommendFromExamples can check before the photos are embedded: the query,
        its filter, the example items, and that the model has the spaces the mode needs."""
        query.validate(self.limits)
        catalogue = self.catalogue
        self.filter_mask(query.filter, catalogue=catalogue)
        examples.check_examples(self._candidates, query, catalogue)

    def recommend_from_examples(
        self,
        query: examples.ExamplesQuery,
        images: Mapping[str, npt.NDArray[np.float32]],
        visual_weight: float = 0.5,
    ) -> SimilarItems:
        """Items like the positive examples and unlike the negative ones (recsvc.core.examples
        says how); ``images``: the raw backbone embedding of each photo in the query, by field
        name (``positives[0].image``)."""
        query.validate(self.limits)
        catalogue = self.catalogue
        matching = self.filter_mask(query.filter, catalogue=catalogue)
        return examples.recommend_from_examples(
            self._candidates, query, catalogue, images, visual_weight, matching
        )

    def visual_part(self, field: str) -> VisualPart:
        """The model's image part; FailedPrecondition (naming ``field``) when it has none."""
        return similarity.visual_part(self.model, field)
