"""Exposure metrics on hand-computed cases, the popularity discount rule, its validation, and
the discount in the Recommender (a real small ALS model, searched exactly)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.core.model import Model
from recsvc.core.popularity import (
    candidate_popularity,
    discount_order,
    discount_pool,
    popularity_adjusted,
)
from recsvc.core.queries import Limits, RecommendQuery, Strategy
from recsvc.core.recommender import Recommender
from recsvc.errors import InvalidArgument
from recsvc.evaluation import exposure as bias
from recsvc.evaluation.holdout import Split, discount_curve, ranking_metrics

LIMITS = Limits(max_k=500, max_batch=10, max_id_list=20)

# ------------------------------------------------------------------ metrics


def test_gini_is_zero_for_equal_exposure_and_near_one_for_a_single_item() -> None:
    assert bias.gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert bias.gini(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 10])) == pytest.approx(0.9)
    assert bias.gini(np.array([0, 1000] + [0] * 998)) == pytest.approx(0.999)
    # [1, 3]: sorted, sum((2i - n - 1) x_i) / (n sum x) = (-1 * 1 + 1 * 3) / (2 * 4)
    assert bias.gini(np.array([3, 1])) == pytest.approx(0.25)
    assert bias.gini(np.zeros(5)) == 0.0


def test_long_tail_is_outside_the_top_fifth_by_popularity() -> None:
    popularity = np.array([50, 1, 9, 2, 3, 4, 5, 6, 7, 8])  # head (2 of 10): items 0 and 2
    tail = bias.long_tail_mask(popularity)
    assert tail.tolist() == [False, True, False, True, True, True, True, True, True, True]
    exposure = np.array([6, 1, 2, 0, 0, 0, 0, 0, 0, 1])  # 10 slots, 2 in the tail
    assert bias.long_tail_share(exposure, tail) == pytest.approx(0.2)
    assert bias.long_tail_share(np.zeros(10), tail) == 0.0


def test_novelty_is_the_mean_self_information_of_the_slots() -> None:
    popularity = np.array([8, 2, 0])  # of 8 users: shares 1, 1/4, and 1/8 (0 counts as 1)
    information = bias.self_information(popularity, 8)
    assert information.tolist() == pytest.approx([0.0, 2.0, 3.0])
    # 2 slots of item 0 (0 bits), 1 of item 1 (2 bits), 1 of item 2 (3 bits)
    assert bias.novelty(np.array([2, 1, 1]), information) == pytest.approx(5 / 4)


def test_category_exposure_splits_multi_category_items_equally() -> None:
    categories = [("a",), ("a", "b"), ("b",), ()]  # the last item has none: left out
    exposure = np.array([2, 2, 0, 5])
    shares = bias.category_exposure(exposure, categories)
    # slots: a = 2 + 1 = 3, b = 1 (of 4); catalogue: a = 1.5, b = 1.5 (of 3)
    assert shares["a"] == {"exposure": 0.75, "catalogue": 0.5, "ratio": 1.5}
    assert shares["b"] == {"exposure": 0.25, "catalogue": 0.5, "ratio": 0.5}


# ------------------------------------------------------------------ the discount rule


def test_discount_zero_keeps_the_score_order_whatever_the_sign() -> None:
    scores = np.array([0.5, -0.1, -0.2, -3.0], dtype=np.float32)
    popularity = np.array([100, 0, 5, 1], dtype=np.float32)
    order, values = discount_order(scores, popularity, 0.0)
    assert order.tolist() == [0, 1, 2, 3]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.0)


def test_discount_one_puts_the_least_popular_candidate_first() -> None:
    scores = np.array([-0.5, -0.6, -0.7, -0.8], dtype=np.float32)  # all negative (ALS can)
    popularity = np.array([100, 3, 0, 3], dtype=np.float32)
    order, _ = discount_order(scores, popularity, 1.0)
    assert order.tolist() == [2, 1, 3, 0]  # equal popularity: the better score first


def test_discount_trades_score_range_against_log_popularity_range() -> None:
    scores = np.array([10.0, 9.0, 0.0])
    popularity = np.array([math.e**2 - 1, math.e - 1, 0.0])  # log(1 + p) = 2, 1, 0
    values = popularity_adjusted(scores, popularity, 0.5)
    # relevance 1, 0.9, 0; unpopularity 0, 0.5, 1
    assert values.tolist() == pytest.approx([0.5, 0.7, 0.5])


def test_discount_leaves_excluded_candidates_last_and_scales_each_row() -> None:
    scores = np.array([[3.0, -np.inf, 1.0], [100.0, 50.0, 0.0]])
    popularity = np.array([[9.0, 0.0, 9.0], [0.0, 0.0, 0.0]])
    values = popularity_adjusted(scores, popularity, 0.25)
    assert values[0, 1] == -np.inf
    assert values[0].tolist()[::2] == pytest.approx([0.75 + 0.0, 0.0 + 0.0])
    # all equally popular: no item is less popular than another, only the scores count
    assert values[1].tolist() == pytest.approx([0.75, 0.375, 0.0])


def test_pool_and_added_items_popularity() -> None:
    assert discount_pool(10, 10_000) == 60
    assert discount_pool(100, 10_000) == 300
    assert discount_pool(10, 40) == 40
    popularity = np.array([5, 7], dtype=np.float32)
    assert candidate_popularity(popularity, np.array([1, 2, 0])).tolist() == [7, 0, 5]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_a_discount_outside_zero_to_one_is_rejected_naming_the_field(bad: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RecommendQuery("u1", 10, popularity_discount=bad).validate(LIMITS)
    assert caught.value.field == "popularity_discount"
    with pytest.raises(InvalidArgument) as caught:
        RecommendQuery("u1", 10, popularity_discount=bad).validate(LIMITS, "requests[3].")
    assert caught.value.field == "requests[3].popularity_discount"
    RecommendQuery("u1", 10, popularity_discount=None).validate(LIMITS)
    RecommendQuery("u1", 10, popularity_discount=1.0).validate(LIMITS)


def test_the_setting_is_bounded() -> None:
    from pydantic import ValidationError

    from recsvc.config import ServingSettings

    assert ServingSettings().popularity_discount == 0.0
    for bad in (-0.5, 2.0, float("nan")):
        with pytest.raises(ValidationError, match="popularity_discount"):
            ServingSettings(popularity_discount=bad)


# ------------------------------------------------------------------ the metrics of a run


def test_ranking_metrics_report_exposure_and_rerank_by_the_discount() -> None:
    # 4 items; training popularity 3, 2, 1, 0 (users 0-2); user 3 is evaluated.
    train = sp.csr_matrix(
        np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    )
    test = sp.csr_matrix(np.array([[0, 0, 0, 0]] * 3 + [[0, 0, 0, 1]], dtype=np.float32))
    scores = np.array([[4.0, 3.0, 2.0, 1.0]] * 4, dtype=np.float32)
    split = Split(train, test, None)
    plain = ranking_metrics(lambda users: scores[users], split, k=1)
    assert plain["ndcg@1"] == 0.0  # item 0 first: a miss
    assert plain["gini@1"] == pytest.approx(0.75)  # one slot, on one item of 4
    assert plain["long_tail_share@1"] == 0.0  # item 0 is the head (top 1 of 4, rounded)
    assert plain["novelty@1"] == pytest.approx(-math.log2(3 / 4), abs=1e-6)
    # Discount 1: the least popular of the pool (every item here) first: item 3, a hit.
    discounted = ranking_metrics(lambda users: scores[users], split, k=1, discount=1.0)
    assert discounted["ndcg@1"] == 1.0 and discounted["long_tail_share@1"] == 1.0
    # popularity 0 counts as 1 user of 4
    assert discounted["novelty@1"] == pytest.approx(-math.log2(1 / 4), abs=1e-6)
    curve = discount_curve(lambda users: scores[users], split, 1, (0.0, 1.0), plain)
    assert [point["popularity_discount"] for point in curve] == [0.0, 1.0]
    assert curve[1]["ndcg@1"] == 1.0
    with_categories = ranking_metrics(
        lambda users: scores[users], split, k=1, categories=[("x",), ("x",), ("y",), ("y",)]
    )
    assert with_categories["category_exposure@1"]["x"]["exposure"] == 1.0


# ------------------------------------------------------------------ the Recommender


@pytest.fixture(scope="module")
def exact(model: Model) -> Recommender:
    """Searched exactly, so that the candidate pool is known from outside."""
    return Recommender(model, LIMITS, exact_search_max_items=10**9)


def pool_of(recommender: Recommender, user: str, k: int) -> list[tuple[str, float]]:
    pool = discount_pool(k, recommender.model.info.num_items)
    items = recommender.recommend(RecommendQuery(user, pool, popularity_discount=0.0)).items
    return [(item.item_id, item.score) for item in items]


def popularity_of(model: Model, item_ids: list[str]) -> np.ndarray:
    rows = [model.items.row(i) for i in item_ids]
    return np.array([model.item_popularity[r] for r in rows if r is not None])


def test_recommend_with_discount_zero_is_the_plain_answer(exact: Recommender, model: Model) -> None:
    user = model.users.ids[7]
    plain = exact.recommend(RecommendQuery(user, 10)).items
    zero = exact.recommend(RecommendQuery(user, 10, popularity_discount=0.0)).items
    assert [(i.item_id, i.score) for i in zero] == [(i.item_id, i.score) for i in plain]


@pytest.mark.parametrize("discount", [0.3, 1.0])
def test_recommend_reranks_its_pool_by_the_rule(
    exact: Recommender, model: Model, discount: float
) -> None:
    user, k = model.users.ids[11], 10
    pool = pool_of(exact, user, k)
    ids = [item_id for item_id, _ in pool]
    scores = np.array([score for _, score in pool], dtype=np.float32)
    order, _ = discount_order(scores, popularity_of(model, ids), discount)
    expected = [pool[i] for i in order[:k].tolist()]
    got = exact.recommend(RecommendQuery(user, k, popularity_discount=discount))
    assert got.strategy is Strategy.PERSONALISED
    assert [i.item_id for i in got.items] == [item_id for item_id, _ in expected]
    # the items keep their own scores: the discount orders, it does not rescore
    assert [i.score for i in got.items] == pytest.approx([score for _, score in expected])
    plain = [item_id for item_id, _ in pool[:k]]
    assert popularity_of(model, [i.item_id for i in got.items]).mean() < (
        popularity_of(model, plain).mean()
    )


def test_the_server_default_applies_unless_the_query_sets_one(model: Model) -> None:
    user = model.users.ids[11]
    default_one = Recommender(model, LIMITS, 10**9, popularity_discount=1.0)
    exact = Recommender(model, LIMITS, 10**9)
    unset = [i.item_id for i in default_one.recommend(RecommendQuery(user, 10)).items]
    one = exact.recommend(RecommendQuery(user, 10, popularity_discount=1.0)).items
    assert unset == [i.item_id for i in one]
    zero = default_one.recommend(RecommendQuery(user, 10, popularity_discount=0.0)).items
    assert [i.item_id for i in zero] == [
        i.item_id for i in exact.recommend(RecommendQuery(user, 10)).items
    ]
    assert unset != [i.item_id for i in zero]


def test_discount_with_diversity_picks_from_the_pool_and_popular_fallback_is_unchanged(
    exact: Recommender, model: Model
) -> None:
    user, k = model.users.ids[3], 10
    pool = {item_id for item_id, _ in pool_of(exact, user, k)}
    both = exact.recommend(RecommendQuery(user, k, diversity=0.5, popularity_discount=0.5))
    ids = [item.item_id for item in both.items]
    assert len(ids) == k == len(set(ids)) and set(ids) <= pool
    cold = exact.recommend(RecommendQuery("nobody-knows-me", k, popularity_discount=1.0))
    assert cold.strategy is Strategy.POPULAR
    assert [i.item_id for i in cold.items] == [
        i.item_id for i in exact.recommend(RecommendQuery("nobody-knows-me", k)).items
    ]


def test_the_most_popular_candidate_leaves_the_list_at_discount_one(model: Model) -> None:
    # The plain answer's first item made the most popular of all: with discount 1 it ranks
    # last of the pool.
    user, k = model.users.ids[11], 10
    recommender = Recommender(model, LIMITS, 10**9)
    first = recommender.recommend(RecommendQuery(user, k)).items[0].item_id
    row = model.items.row(first)
    assert row is not None
    popular = model.item_popularity.copy()
    popular[row] = popular.max() * 10
    skewed = Recommender(replace(model, item_popularity=popular), LIMITS, 10**9)
    top = skewed.recommend(RecommendQuery(user, k, popularity_discount=1.0)).items
    assert first not in [item.item_id for item in top]


# ------------------------------------------------------------------ eval's inputs and plot


def test_movielens_genres_are_read_from_u_item(tmp_path: Path) -> None:
    from recsvc.data.movielens_items import read_genres

    flags = ["0"] * 19
    toy = flags.copy()
    toy[3] = toy[4] = "1"  # Animation, Children's
    (tmp_path / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(toy) + "\n"
        "2|Broken row|01-Jan-1995||http://x|0|1\n"
        "3|Caf\xe9 (1990)|||http://x|" + "|".join(flags) + "\n",
        encoding="latin-1",
    )
    assert read_genres(tmp_path / "u.item") == {"1": ("Animation", "Children's"), "3": ()}
    (tmp_path / "u.genre").write_text("\n".join(f"g{i}|{i}" for i in range(19)) + "\n")
    assert read_genres(tmp_path / "u.item")["1"] == ("g3", "g4")


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsvc.errors import ConfigError
    from recsvc.evaluation.tradeoff_plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    with pytest.raises(ConfigError, match=r"recsvc\[plot\]"):
        require_matplotlib()


def test_boosts_then_discount_then_pins(exact: Recommender, model: Model) -> None:
    from recsvc.core.rules import parse_rules

    def category(item_id: str) -> str:
        row = model.items.row(item_id)
        assert row is not None
        return model.category_names[model.item_categories[row]]

    user, k = model.users.ids[4], 10
    ranked = exact.recommend(RecommendQuery(user, 120)).items
    target, pinned = category(ranked[40].item_id), ranked[110].item_id
    text = json.dumps(
        {
            "version": "1",
            "rules": [
                {"name": "lift", "boost": {"items": f'category == "{target}"', "factor": 50.0}},
                {"name": "top", "pin": {"item_id": pinned, "position": 1}},
            ],
        }
    )
    rules = parse_rules(text).active(datetime.now(UTC))
    query = RecommendQuery(user, k, popularity_discount=0.5)
    items = exact.recommend(query, rules=rules).items
    assert items[0].item_id == pinned and items[0].rule == "top"  # pins come last
    rest = items[1:]
    assert len({i.item_id for i in rest}) == k - 1
    # each boosted item keeps its rule name through the discount's re-ordering
    assert all((i.rule == "lift") == (category(i.item_id) == target) for i in rest)
    assert any(i.rule == "lift" for i in rest)
