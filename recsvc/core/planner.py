"""The Recommend planner: what each query searches for, which queries share one batched
graph search, and how a query's candidates become its answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.core.added import AddedItems
from recsvc.core.candidates import NO_ROWS, CandidateSearch, Extra, as_query
from recsvc.core.catalogue import Catalogue
from recsvc.core.explain import History, explain_items, explain_rules, history_of
from recsvc.core.foldin import fold_in_with_model
from recsvc.core.interests import Interests, find_interests, history_rows, merge_interests
from recsvc.core.model import Model
from recsvc.core.popularity import candidate_popularity, discount_order, discount_pool
from recsvc.core.queries import Recommendation, RecommendQuery, ScoredItem, Strategy
from recsvc.core.ranking import mmr
from recsvc.core.rule_effects import QueryEffects, apply_boosts, boost_pool, place_pins, resolve
from recsvc.core.rules import ActiveRules
from recsvc.core.state import UserState

# Larger fetches (long histories to exclude) are searched one by one.
_BATCH_FETCH_MAX = 256


@dataclass(frozen=True)
class Plan:
    """A query ready to search: its vector, what it must not return, what it may return."""

    query: RecommendQuery
    vector: npt.NDArray[np.float32]
    strategy: Strategy
    blocked: npt.NDArray[np.int64]
    allowed: npt.NDArray[np.bool_] | None
    extra: Extra | None
    added: AddedItems
    pool: int  # candidates wanted (k, or the pool diversity picks from)
    filtered: bool = False  # the query itself restricts what may be returned
    effects: QueryEffects | None = None  # what the business rules do to its candidates
    history: History | None = None  # what its vector came from (only when it asks to explain)
    discount: float = 0.0  # popularity discount (recsvc.core.popularity), resolved
    interests: Interests | None = None  # several interest vectors (recsvc.core.interests)

    @property
    def batchable(self) -> bool:
        """Served by the shared graph search: no filter of its own, no added items (hidden
        items are dropped from its results afterwards) and one vector."""
        return not self.filtered and self.extra is None and self.interests is None

    @property
    def fetch(self) -> int:
        """Graph results to ask for so that ``pool`` survive the exclusions."""
        return self.pool + len(self.blocked)


def plan_query(
    search: CandidateSearch,
    query: RecommendQuery,
    state: UserState,
    catalogue: Catalogue,
    matching: npt.NDArray[np.bool_] | None = None,
    rules: ActiveRules | None = None,
    discount: float = 0.0,
    default_interests: int = 1,
) -> Plan | Recommendation:
    """What a query searches for (its vector, what it excludes), or its answer when there
    is nothing to search with (popular items). The query is already validated.

    ``state`` is what the store knows beyond the model: interactions since training (excluded
    like the training history) and the user's folded-in vector, which wins over the model's
    own user factors. ``catalogue`` is the catalogue (and added-items table) the query started
    with; ``matching`` the mask of its filter expression, if it has one; ``rules`` the
    business rules in force (recsvc.core.rule_effects says how they apply); ``discount`` the
    popularity discount (the query's or the server's default), applied to personalised and
    session queries (the popular fallback is ranked by popularity, and stays so);
    ``default_interests`` the interest vectors of a query that leaves ``interests`` at 0.
    """
    model = search.model
    added = catalogue.added
    # A forgotten user (ForgetUser) is unknown to this model: neither its factors nor its
    # training history are used until a model trained without the user is loaded.
    user_row = model.users.row(query.user_id) if query.user_id and not state.forgotten else None
    recent_rows = search.rows(query.recent_item_ids, added)
    blocked = search.rows(query.exclude_item_ids, added)
    disliked = _disliked(search, query.user_id, state, catalogue)
    if query.exclude_seen:
        seen = model.seen_items(user_row) if user_row is not None else NO_ROWS
        history = search.rows(state.history, added)
        parts = [rows for rows in (blocked, seen, history, recent_rows, disliked) if len(rows)]
        if parts:  # most queries block nothing: no concatenation then
            blocked = np.concatenate(parts).astype(np.int64, copy=False)
    elif len(disliked):  # dislikes are blocked whatever exclude_seen says
        blocked = np.concatenate([blocked, disliked]).astype(np.int64, copy=False)
    allowed = search.allowed_mask(query.categories, catalogue, matching)
    filtered = matching is not None or query.categories.active
    effects = None
    if rules is not None and (for_query := rules.for_query(query.user_id, query.context)):
        effects = resolve(
            for_query, catalogue, lambda i: _label(search, i, added), blocked, allowed, query.k
        )
    boosted = effects is not None and bool(effects.boosts)

    if state.vector is not None and state.vector.shape == (model.item_factors.shape[1],):
        vector = state.vector
        strategy = Strategy.PERSONALISED
    elif user_row is not None:
        vector = model.user_factors[user_row]
        strategy = Strategy.PERSONALISED
    elif len(recent_model_rows := recent_rows[recent_rows < model.info.num_items]):
        rows = np.unique(recent_model_rows)
        ones = np.ones(len(rows), dtype=np.float32)
        vector = fold_in_with_model(model, rows, ones, np.array([len(rows)]))[0]
        strategy = Strategy.SESSION
    else:
        pool = boost_pool(query.k, model.info.num_items) if boosted else query.k
        labels, scores = search.popular(pool, blocked, allowed)
        if effects is None:
            return Recommendation(
                search.scored(labels, scores, added), model.version, Strategy.POPULAR
            )
        items = _ranked(
            search,
            query,
            labels,
            scores,
            added,
            effects,
            False,
            lambda label: _popularity(model, label),
        )
        if query.explain:  # popular items are not personalised: only rules give reasons
            explain_rules(items)
        return Recommendation(items, model.version, Strategy.POPULAR)
    # Diversity, boosts and the popularity discount re-rank a larger pool of the best
    # candidates.
    pool = query.k
    if query.diversity > 0:
        pool = min(model.info.num_items, max(3 * query.k, query.k + 50))
    if boosted:
        pool = max(pool, boost_pool(query.k, model.info.num_items))
    if discount > 0:
        pool = max(pool, discount_pool(query.k, model.info.num_items))
    extra = (added.factors, None) if len(added) else None
    explained = None
    if query.explain:
        explained = history_of(search, query, state, user_row, vector is state.vector, added)
    interests = None
    if (wanted := query.interests or default_interests) > 1:  # one vector: nothing more
        interests = _interests(model, strategy, user_row, recent_rows, state, wanted)
    return Plan(
        query,
        vector,
        strategy,
        blocked,
        allowed,
        extra,
        added,
        pool,
        filtered,
        effects,
        history=explained,
        discount=discount,
        interests=interests,
    )


def _interests(
    model: Model,
    strategy: Strategy,
    user_row: int | None,
    recent_rows: npt.NDArray[np.int64],
    state: UserState,
    wanted: int,
) -> Interests | None:
    """Up to ``wanted`` interest vectors: of the session's items, or of the user's history
    (training and since); None when it holds one interest only."""
    if strategy is Strategy.SESSION:
        rows = np.unique(recent_rows[recent_rows < model.info.num_items])
        weights = np.ones(len(rows), dtype=np.float32)
    else:
        rows, weights = history_rows(model, user_row, state.history, state.dislikes)
    return find_interests(model, rows, weights, wanted)


def search_interests(
    search: CandidateSearch, planned: Plan
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The candidates of a plan with several interests: each interest vector searched with the
    plan's exclusions and filters, the lists merged by recsvc.core.interests.merge_interests."""
    assert planned.interests is not None
    lists = [
        search.search(
            search.model.user_index,
            vector,
            planned.pool,
            planned.blocked,
            planned.allowed,
            extra=planned.extra,
        )
        for vector in planned.interests.vectors
    ]
    return merge_interests(lists, planned.interests.shares, planned.pool)


def _label(search: CandidateSearch, item_id: str, added: AddedItems) -> int | None:
    rows = search.rows((item_id,), added)
    return int(rows[0]) if len(rows) else None


def _disliked(
    search: CandidateSearch, user_id: str, state: UserState, catalogue: Catalogue
) -> npt.NDArray[np.int64]:
    """Rows of the items the user disliked: in the model's training data (unless the user was
    forgotten since) and recorded since (the store's history)."""
    from_model = () if state.forgotten or not user_id else search.model.dislikes.get(user_id, ())
    if not from_model and not state.dislikes:
        return NO_ROWS
    return search.rows([*from_model, *state.dislikes], catalogue.added)


def batches(plans: list[Plan | Recommendation]) -> dict[int, list[tuple[int, Plan]]]:
    """The plans that the plain graph search serves (no filter, no added items), grouped by
    how many results they fetch (rounded up to a power of two, at least 32), so that each group
    shares one batched search without making the smaller ones fetch much more."""
    groups: dict[int, list[tuple[int, Plan]]] = {}
    for n, planned in enumerate(plans):
        if isinstance(planned, Plan) and planned.batchable:
            width = max(32, 1 << (planned.fetch - 1).bit_length())
            if width <= _BATCH_FETCH_MAX:
                groups.setdefault(width, []).append((n, planned))
    return groups


def finish(
    search: CandidateSearch,
    planned: Plan,
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
) -> Recommendation:
    """The answer from a plan's candidates: boosted, popularity-discounted and diversified
    when the query asks for it, and pinned."""
    query, added = planned.query, planned.added
    if planned.effects is None:  # no rules: as before rules existed
        if query.diversity > 0 or planned.discount > 0:
            labels, scores = _reordered(search, planned, labels, scores)
        items = search.scored(labels, scores, added)
    else:
        vector = as_query(search.model.user_index, planned.vector)
        items = _ranked(
            search,
            query,
            labels,
            scores,
            added,
            planned.effects,
            query.diversity > 0,
            lambda label: _score(search, vector, label, added),
            planned.discount,
        )
    if planned.history is not None:  # the query asked to explain (after ranking: final k only)
        explain_items(search, planned.history, items, added)
    return Recommendation(items, search.model.version, planned.strategy)


def _reordered(
    search: CandidateSearch,
    planned: Plan,
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """k of the pool (no rules): popularity-discounted, then diversified, as asked."""
    query = planned.query
    relevance = scores
    if planned.discount > 0:
        order, relevance = _discounted(search, labels, scores, planned.discount)
        labels, scores = labels[order], scores[order]
    if query.diversity > 0:
        unit = search.unit_factors(labels, planned.added)
        picked, _ = mmr(np.arange(len(labels)), relevance, unit, query.k, query.diversity)
        return labels[picked], scores[picked]
    return labels[: query.k], scores[: query.k]


def _discounted(
    search: CandidateSearch,
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    discount: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The candidates' order under the popularity discount, and their discounted values in
    that order (what diversity then weighs as relevance; the items keep their own scores)."""
    popularity = candidate_popularity(search.model.item_popularity, labels)
    order, adjusted = discount_order(scores, popularity, discount)
    return order, adjusted.astype(np.float32)


def _ranked(
    search: CandidateSearch,
    query: RecommendQuery,
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    added: AddedItems,
    effects: QueryEffects,
    diversify: bool,
    score_of: Callable[[int], float],
    discount: float = 0.0,
) -> list[ScoredItem]:
    """The candidates boosted, popularity-discounted, cut to k (or diversified), pinned: the
    order of recsvc.core.rule_effects. ``score_of`` is the query's score of a pinned label."""
    names: list[str] = []
    if effects.boosts:
        labels, scores, names = apply_boosts(labels, scores, effects.boosts)
    relevance = scores
    if discount > 0:  # after boosts: the discount weighs the boosted scores
        order, relevance = _discounted(search, labels, scores, discount)
        labels, scores = labels[order], scores[order]
        names = [names[i] for i in order.tolist()] if names else names
    if diversify:
        unit = search.unit_factors(labels, added)
        picked, _ = mmr(np.arange(len(labels)), relevance, unit, query.k, query.diversity)
        labels, scores = labels[picked], scores[picked]
        names = [names[i] for i in picked.tolist()] if names else names
    else:
        labels, scores, names = labels[: query.k], scores[: query.k], names[: query.k]
    items = search.scored(labels, scores, added)
    for item, name in zip(items, names, strict=False):
        if name:
            item.rule = name
    if not effects.pins:
        return items

    def new_item(label: int) -> ScoredItem:
        one = np.asarray([label], dtype=np.int64)
        return search.scored(one, np.asarray([score_of(label)], dtype=np.float32), added)[0]

    return place_pins(items, labels.tolist(), effects.pins, query.k, new_item)


def _popularity(model: Model, label: int) -> float:
    """A pinned label's score on the popular path: its popularity (added items have none)."""
    return float(model.item_popularity[label]) if label < model.info.num_items else 0.0


def _score(
    search: CandidateSearch, query: npt.NDArray[np.float32], label: int, added: AddedItems
) -> float:
    """The query's score of one label, as the search scores it (``query`` as the user
    index takes it); added items by their raw factors, as the search merges them."""
    index = search.model.user_index
    n = search.model.info.num_items
    vector = index.vectors[label] if label < n else added.factors[label - n]
    return float(vector @ query)
