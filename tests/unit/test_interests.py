"""Users with several tastes (recsvc.core.interests): the clustering, the merge, and the
Recommender on the real small demo model with its real HNSW index."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from recsvc.config import ServingSettings
from recsvc.core.interests import (
    MAX_HISTORY,
    MIN_INTEREST_ITEMS,
    cluster_directions,
    find_interests,
    history_rows,
    merge_interests,
)
from recsvc.core.model import Model
from recsvc.core.queries import (
    MAX_INTERESTS,
    CategoryFilter,
    Limits,
    RecommendQuery,
    Strategy,
    validate_batch,
)
from recsvc.core.recommender import Recommender
from recsvc.core.state import UserState
from recsvc.errors import InvalidArgument
from recsvc.server import build_recommender
from tests.conftest import TEST_SETTINGS

K = 10
# A user who is not in the model, known only by what the store recorded since training.
NEWCOMER = "interests-newcomer"


@pytest.fixture(scope="module")
def recommenders(model: Model) -> dict[int, Recommender]:
    """Recommenders wired as the server wires them (HNSW search), by their default number of
    interests (RECSVC_SERVING__INTERESTS): 1 and 3."""
    built = {}
    for default in (1, 3):
        serving = ServingSettings(exact_search_max_items=0, max_k=100, interests=default)
        built[default] = build_recommender(
            TEST_SETTINGS.model_copy(update={"serving": serving}), model
        )
    return built


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


def items_of(model: Model, category: str, count: int, skip: int = 0) -> list[str]:
    chosen = [i for i in model.items.ids if category_of(model, i) == category]
    return chosen[skip : skip + count]


@pytest.fixture(scope="module")
def two_tastes(model: Model) -> dict[str, float]:
    """A history (item -> weight) in two item groups of the demo data: 12 books, 5 toys."""
    return dict.fromkeys(items_of(model, "books", 12) + items_of(model, "toys", 5), 1.0)


def newcomer_state(recommender: Recommender, history: dict[str, float]) -> UserState:
    """The state the service would hold: the history recorded and its folded-in vector."""
    return UserState(history=history, vector=recommender.fold_in_user(NEWCOMER, history))


# ------------------------------------------------------------------ clustering


def two_groups(big: int, small: int, seed: int = 0) -> np.ndarray:
    """Unit vectors: ``big`` around one direction, then ``small`` around an orthogonal one."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8, dtype=np.float32)[[0, 1]]
    points = np.vstack(
        [
            centres[0] + 0.1 * rng.standard_normal((big, 8)),
            centres[1] + 0.1 * rng.standard_normal((small, 8)),
        ]
    ).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_two_groups_become_two_clusters_largest_first() -> None:
    unit = two_groups(9, 4)
    assignment = cluster_directions(unit, 2)
    assert assignment.tolist() == [0] * 9 + [1] * 4
    assert cluster_directions(unit, 2).tolist() == assignment.tolist()  # deterministic
    # Asking for more clusters than there are groups splits no group into specks.
    assert np.bincount(cluster_directions(unit, 4)).min() >= MIN_INTEREST_ITEMS


def test_a_cluster_too_small_joins_the_nearest() -> None:
    unit = two_groups(10, MIN_INTEREST_ITEMS - 1)
    assert not cluster_directions(unit, 2).any()
    assert not cluster_directions(unit[:5], 3).any()  # too few items for two interests


# ------------------------------------------------------------------ merging


def as_lists(*labels: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (np.asarray(one, dtype=np.int64), np.linspace(1, 0, len(one), dtype=np.float32))
        for one in labels
    ]


def test_merge_gives_each_interest_its_share_without_duplicates() -> None:
    lists = as_lists([1, 2, 3, 4, 5, 6, 7, 8], [2, 9, 10, 11, 12, 13, 14, 15])
    labels, scores = merge_interests(lists, np.array([0.75, 0.25]), 8)
    assert len(set(labels.tolist())) == 8
    first = {1, 2, 3, 4, 5, 6, 7, 8}
    assert sum(label in first for label in labels.tolist()) == 6
    assert labels[0] == 1  # the larger interest leads
    assert 9 in labels[:4]  # the smaller one is spread through the list, not left to the end
    assert 2 in labels.tolist() and labels.tolist().count(2) == 1
    assert scores.dtype == np.float32 and len(scores) == 8


def test_merge_fills_from_the_others_when_an_interest_runs_out() -> None:
    labels, _ = merge_interests(as_lists([1, 2, 3, 4, 5, 6], [7]), np.array([0.5, 0.5]), 6)
    assert sorted(labels.tolist()) == [1, 2, 3, 4, 5, 7]
    labels, _ = merge_interests(as_lists([1, 2], [2, 1]), np.array([0.5, 0.5]), 5)
    assert labels.tolist() == [1, 2]  # fewer than n distinct: all of them


# ------------------------------------------------------------------ history


def test_history_is_training_plus_recent_without_dislikes(model: Model) -> None:
    user_row = 5
    seen = set(model.seen_items(user_row).tolist())
    new = next(i for i in range(model.info.num_items) if i not in seen)
    disliked = min(seen)
    recent = {model.items.ids[new]: 2.0, "not-a-model-item": 1.0}
    rows, weights = history_rows(model, user_row, recent, {model.items.ids[disliked]})
    assert set(rows.tolist()) == (seen | {new}) - {disliked}
    assert weights[rows.tolist().index(new)] == 2.0
    assert rows.dtype == np.int64 and weights.dtype == np.float32
    assert history_rows(model, None, {})[0].size == 0


def test_history_keeps_the_recent_items_first_when_capped(model: Model) -> None:
    recent = dict.fromkeys(model.items.ids[: MAX_HISTORY + 50], 1.0)
    rows, _ = history_rows(model, 0, recent)
    assert len(rows) == MAX_HISTORY
    assert set(rows.tolist()) <= set(range(MAX_HISTORY + 50))


def test_one_taste_gives_no_interests(model: Model) -> None:
    books = np.asarray(model.items.rows(items_of(model, "books", 12)))
    assert find_interests(model, books, np.ones(len(books), np.float32), 3) is None


# ------------------------------------------------------------------ recommending


def test_several_interests_reach_both_groups_one_vector_the_nearer(
    model: Model, two_tastes: dict[str, float], recommenders: dict[int, Recommender]
) -> None:
    history = two_tastes
    recommender = recommenders[1]
    state = newcomer_state(recommender, history)
    one = recommender.recommend(RecommendQuery(NEWCOMER, K), state)
    two = recommender.recommend(RecommendQuery(NEWCOMER, K, interests=2), state)
    assert one.strategy is two.strategy is Strategy.PERSONALISED
    one_kinds = [category_of(model, i.item_id) for i in one.items]
    two_kinds = [category_of(model, i.item_id) for i in two.items]
    assert "toys" not in one_kinds and one_kinds.count("books") >= K // 2, one_kinds
    assert two_kinds.count("toys") >= 2 and two_kinds.count("books") >= K // 2, two_kinds
    ids = [i.item_id for i in two.items]
    assert len(ids) == K == len(set(ids))
    assert not set(ids) & set(history)  # the history is still excluded


def test_a_session_with_two_tastes_splits_too(
    model: Model, two_tastes: dict[str, float], recommenders: dict[int, Recommender]
) -> None:
    history = two_tastes
    query = RecommendQuery("", K, recent_item_ids=tuple(history), interests=2)
    result = recommenders[1].recommend(query)
    kinds = [category_of(model, i.item_id) for i in result.items]
    assert result.strategy is Strategy.SESSION
    assert "toys" in kinds and "books" in kinds, kinds
    assert not {i.item_id for i in result.items} & set(history)


def test_exclusions_and_filters_hold_with_several_interests(
    model: Model, two_tastes: dict[str, float], recommenders: dict[int, Recommender]
) -> None:
    history = two_tastes
    recommender = recommenders[3]  # the server default: 3 interests
    first = recommender.recommend(RecommendQuery(NEWCOMER, K), newcomer_state(recommender, history))
    banned = tuple(i.item_id for i in first.items[:3])
    disliked = first.items[3].item_id
    state = replace(newcomer_state(recommender, history), dislikes=frozenset({disliked}))
    again = recommender.recommend(RecommendQuery(NEWCOMER, K, exclude_item_ids=banned), state)
    ids = {i.item_id for i in again.items}
    assert len(ids) == K
    assert not ids & (set(banned) | {disliked} | set(history))
    no_toys = CategoryFilter(exclude=("toys",))
    filtered = recommender.recommend(RecommendQuery(NEWCOMER, K, categories=no_toys), state)
    assert len(filtered.items) == K
    assert all(category_of(model, i.item_id) != "toys" for i in filtered.items)
    matching = recommender.recommend(
        RecommendQuery(NEWCOMER, K, filter='category == "books"'), state
    )
    assert matching.items and all(category_of(model, i.item_id) == "books" for i in matching.items)


def test_one_interest_is_the_single_vector(
    model: Model, two_tastes: dict[str, float], recommenders: dict[int, Recommender]
) -> None:
    """interests=1 (or 0 on a server whose default is 1) answers exactly as before the option
    existed, also inside a batch that mixes in queries with several interests."""
    history = two_tastes
    plain, split = recommenders[1], recommenders[3]
    state = newcomer_state(plain, history)
    users = [model.users.ids[n] for n in range(0, 60, 6)]
    for user in users:
        before = plain.recommend(RecommendQuery(user, K))
        assert plain.recommend(RecommendQuery(user, K, interests=1)) == before
        assert split.recommend(RecommendQuery(user, K, interests=1)) == before
    assert split.recommend(RecommendQuery(NEWCOMER, K, interests=1), state) == plain.recommend(
        RecommendQuery(NEWCOMER, K), state
    )
    queries = [RecommendQuery(user, K, interests=1 + n % 2 * 2) for n, user in enumerate(users)]
    mixed = split.recommend_many(queries, [UserState()] * len(queries))
    for query, result in zip(queries, mixed, strict=True):
        assert result == split.recommend(query)
    assert any(
        r != plain.recommend(replace(q, interests=1)) for q, r in zip(queries, mixed, strict=True)
    ), "three interests changed no list: the option does nothing"


@pytest.mark.parametrize("interests", [-1, MAX_INTERESTS + 1])
def test_interests_out_of_range_are_refused(interests: int) -> None:
    limits = Limits.from_settings(ServingSettings())
    with pytest.raises(InvalidArgument) as caught:
        RecommendQuery("u1", K, interests=interests).validate(limits)
    assert caught.value.field == "interests"
    batch = [RecommendQuery("u1", K), RecommendQuery("u1", K, interests=interests)]
    with pytest.raises(InvalidArgument) as caught:
        validate_batch(batch, limits)
    assert caught.value.field == "requests[1].interests"
    RecommendQuery("u1", K, interests=MAX_INTERESTS).validate(limits)  # the limit itself is fine


def test_the_setting_has_the_requests_bounds() -> None:
    assert ServingSettings().interests == 1  # off by default
    ServingSettings(interests=MAX_INTERESTS)
    for bad in (0, MAX_INTERESTS + 1):
        with pytest.raises(ValidationError):
            ServingSettings(interests=bad)
