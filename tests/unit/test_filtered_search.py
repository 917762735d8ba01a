"""Filtered search through the domain Recommender on a real small model with real HNSW:
k matching items, recall against the exact filtered top-k, errors naming the request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings
from recsvc.core.model import Model
from recsvc.core.queries import RecommendQuery, SimilarQuery
from recsvc.core.recommender import Recommender
from recsvc.core.state import StoredItem, UserState
from recsvc.errors import InvalidArgument
from recsvc.server import build_recommender
from recsvc.testing import clustered_model_data
from recsvc.training.pipeline import build_model
from tests.conftest import BUILD, SEARCH
from tests.unit.test_recommender import SETTINGS

K = 10


def skewed_model(root: Path, n_items: int = 4000, n_users: int = 400, dim: int = 32) -> Model:
    """bench/serve.py's synthetic model, small: clustered factors with lognormal norms, on
    which the inner-product graph alone finds few of a narrow filter's best items."""
    data, factors = clustered_model_data(n_items, n_users, dim)
    store = ModelStore(root)
    model = build_model(data, factors, TrainSettings(factors=dim), IndexSettings(), "v1")
    store.publish(model, BUILD)
    return store.load_latest(SEARCH)


@pytest.fixture(scope="module", params=["demo", "skewed"])
def recommender(
    request: pytest.FixtureRequest, model: Model, tmp_path_factory: pytest.TempPathFactory
) -> Recommender:
    """A Recommender of its own (attributes change its catalogue) on the demo model or the
    skewed one: price 1..100 and one of ten brands on every model item."""
    if request.param == "skewed":
        model = skewed_model(tmp_path_factory.mktemp("skewed"))
    recommender = build_recommender(SETTINGS, model)
    model = recommender.model
    rng = np.random.default_rng(11)
    records = {
        item_id: StoredItem(
            item_id,
            "",
            {"price": str(rng.integers(1, 101)), "brand": f"b{rng.integers(10)}"},
            "",
            None,
        )
        for item_id in model.items.ids
    }
    recommender.add_items([], records)
    assert not recommender.exact  # the graph search is what is under test
    return recommender


def exact_top_k(model: Model, user_row: int, allowed: np.ndarray) -> set[int]:
    allowed = allowed.copy()
    allowed[model.seen_items(user_row)] = False
    candidates = np.flatnonzero(allowed)
    scores = model.item_factors[candidates] @ model.user_factors[user_row]
    return set(candidates[np.argsort(-scores, kind="stable")[:K]].tolist())


@pytest.mark.parametrize(
    "text",
    [
        'price <= 5 and brand in ("b1", "b2", "b3")',  # ~1.5%: exact over the allowed items
        "price <= 10",  # ~10%: graph search plus the allowed head
        'brand not in ("b0", "b1") and price > 30',  # ~55%
    ],
)
def test_filtered_recommend_finds_the_exact_filtered_top_k(
    recommender: Recommender, text: str
) -> None:
    model = recommender.model
    mask = recommender.filter_mask(text)
    assert mask is not None
    recalls = []
    for user_row in range(0, 300, 10):
        user = model.users.ids[user_row]
        result = recommender.recommend(RecommendQuery(user, K, filter=text))
        labels = [model.items.row(item.item_id) for item in result.items]
        assert all(label is not None and mask[label] for label in labels)
        exact = exact_top_k(model, user_row, mask)
        assert len(labels) == len(exact)
        recalls.append(len(exact.intersection(labels)) / len(exact))
    assert np.mean(recalls) >= 0.95


def test_similar_items_keep_to_the_filter(recommender: Recommender) -> None:
    model = recommender.model
    result = recommender.similar_items(SimilarQuery(model.items.ids[3], K, filter="price > 50"))
    assert len(result.items) == K
    mask = recommender.filter_mask("price > 50")
    assert mask is not None
    for item in result.items:
        row = model.items.row(item.item_id)
        assert row is not None and mask[row]


def test_a_type_error_in_a_batch_slice_names_the_request(recommender: Recommender) -> None:
    model = recommender.model
    queries = [
        RecommendQuery(model.users.ids[0], K, filter="price < 50"),
        RecommendQuery(model.users.ids[1], K, filter="brand < 50"),
    ]
    states = [UserState(), UserState()]
    with pytest.raises(InvalidArgument, match=r"^requests\[4\]\.filter: position 1: "):
        recommender.recommend_many(queries, states, first=3)
    with pytest.raises(InvalidArgument, match=r"^filter: position 1: attribute 'brand'"):
        recommender.recommend_many(queries, states)


def test_a_syntax_error_is_found_by_validation_before_any_search(
    recommender: Recommender,
) -> None:
    model = recommender.model
    query = RecommendQuery(model.users.ids[0], K, filter="price <")
    with pytest.raises(InvalidArgument, match=r"^requests\[7\]\.filter: position 8: "):
        query.validate(recommender.limits, prefix="requests[7].")
