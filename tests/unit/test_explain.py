"""Explanations (RecommendQuery.explain) on real small models: the exact ALS decomposition
(its parts sum to the score), nearest history items for BPR, visual neighbours of items that
entered by their image, and rule reasons."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import numpy as np
import pytest

from recsvc.artifacts import ModelStore
from recsvc.cli.explained import format_explained
from recsvc.config import TrainSettings
from recsvc.core.added import NewItem
from recsvc.core.explain import MAX_HISTORY_REASONS, als_contributions, closed_form_vector
from recsvc.core.model import Model
from recsvc.core.queries import ReasonKind, RecommendQuery, ScoredItem, Strategy
from recsvc.core.recommender import Recommender
from recsvc.core.rules import parse_rules
from recsvc.core.state import UserState
from recsvc.data.demo import DemoData
from recsvc.server import build_recommender
from recsvc.testing import KINDS, ProductImages, product_picture
from recsvc.training.pipeline import train_from_files
from recsvc.vision.embedder import ImageEmbedder
from tests.conftest import SEARCH, SMALL_INDEX, TEST_SETTINGS

K = 10
SUM_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def recommender(model: Model) -> Recommender:
    return build_recommender(TEST_SETTINGS, model)


def training_history(model: Model, user_row: int) -> tuple[np.ndarray, np.ndarray]:
    """The user's training items (rows) and their raw weights."""
    row = model.user_items[user_row]
    return row.indices.astype(np.int64), row.data.astype(np.float32)


def factors_of(model: Model, items: list[ScoredItem]) -> np.ndarray:
    return model.item_factors[model.items.rows(i.item_id for i in items)]


def assert_history_reasons(model: Model, items: list[ScoredItem], history: set[str]) -> None:
    for item in items:
        kinds = [r.kind for r in item.reasons]
        assert kinds and set(kinds) == {ReasonKind.HISTORY_ITEM}, item
        assert len(item.reasons) <= MAX_HISTORY_REASONS
        assert {r.item_id for r in item.reasons} <= history
        parts = [r.contribution for r in item.reasons]
        assert parts == sorted(parts, reverse=True), "strongest first"


def test_als_parts_of_a_model_user_sum_to_the_score(recommender: Recommender, model: Model) -> None:
    user_row = 5
    user = model.users.ids[user_row]
    plain = recommender.recommend(RecommendQuery(user, K)).items
    explained = recommender.recommend(RecommendQuery(user, K, explain=True)).items
    assert [i.item_id for i in explained] == [i.item_id for i in plain], "explain never reorders"
    assert all(not i.reasons for i in plain)
    rows, weights = training_history(model, user_row)
    assert_history_reasons(model, explained, {model.items.ids[r] for r in rows})
    parts = als_contributions(model, rows, weights, factors_of(model, explained))
    assert parts.shape == (len(rows), K)
    scores = np.array([i.score for i in explained])
    np.testing.assert_allclose(parts.sum(axis=0), scores, atol=SUM_TOLERANCE, rtol=0)
    # The shown reasons are the largest parts.
    for n, item in enumerate(explained):
        strongest = np.sort(parts[:, n])[::-1][: len(item.reasons)]
        np.testing.assert_allclose([r.contribution for r in item.reasons], strongest, rtol=1e-5)
    # The closed form is what the model's factors approximate: same scale, same taste.
    off = np.array([i.score for i in plain])
    assert np.corrcoef(off, scores)[0, 1] > 0.5
    assert np.all(np.abs(off - scores) < 0.5 * np.abs(off).max())


def test_the_decomposed_vector_is_the_folded_in_vector(
    recommender: Recommender, model: Model
) -> None:
    user_row = 7
    rows, weights = training_history(model, user_row)
    folded = recommender.fold_in_user(model.users.ids[user_row], {})
    assert folded is not None
    exact = closed_form_vector(model, rows, weights)
    np.testing.assert_allclose(folded, exact, rtol=1e-4, atol=1e-5)


def test_als_parts_of_a_folded_in_user_sum_to_the_unchanged_score(
    recommender: Recommender, model: Model
) -> None:
    """A folded-in vector is the closed form already: explain leaves every score as it is,
    and the parts (training history less a dislike, plus new items) add up to it."""
    user_row = 11
    user = model.users.ids[user_row]
    rows, weights = training_history(model, user_row)
    disliked = model.items.ids[rows[0]]
    new = {model.items.ids[r]: 3.0 for r in range(40) if r not in set(rows.tolist())}
    vector = recommender.fold_in_user(user, new, dislikes=(disliked,))
    state = UserState(history=new, vector=vector, dislikes=frozenset({disliked}))
    plain = recommender.recommend(RecommendQuery(user, K), state).items
    explained = recommender.recommend(RecommendQuery(user, K, explain=True), state).items
    assert [(i.item_id, i.score) for i in explained] == [(i.item_id, i.score) for i in plain]
    history = {model.items.ids[r]: float(w) for r, w in zip(rows, weights, strict=True)}
    del history[disliked]
    for item_id, weight in new.items():
        history[item_id] = history.get(item_id, 0.0) + weight
    assert_history_reasons(model, explained, set(history))
    parts = als_contributions(
        model,
        model.items.rows(history),
        np.array(list(history.values()), dtype=np.float32),
        factors_of(model, explained),
    )
    np.testing.assert_allclose(
        parts.sum(axis=0), [i.score for i in plain], atol=SUM_TOLERANCE, rtol=0
    )


def test_a_session_is_explained_by_its_items(recommender: Recommender, model: Model) -> None:
    recent = tuple(model.items.ids[r] for r in (3, 50, 120))
    result = recommender.recommend(RecommendQuery("", K, recent_item_ids=recent, explain=True))
    assert result.strategy is Strategy.SESSION
    assert_history_reasons(model, result.items, set(recent))
    parts = als_contributions(
        model, model.items.rows(recent), np.ones(3, np.float32), factors_of(model, result.items)
    )
    np.testing.assert_allclose(
        parts.sum(axis=0), [i.score for i in result.items], atol=SUM_TOLERANCE, rtol=0
    )


def test_popular_answers_have_no_reasons_and_rules_give_theirs(
    recommender: Recommender, model: Model
) -> None:
    popular = recommender.recommend(RecommendQuery("nobody", K, explain=True))
    assert popular.strategy is Strategy.POPULAR
    assert all(not i.reasons for i in popular.items)

    user_row = 5
    user = model.users.ids[user_row]
    ranked = recommender.recommend(RecommendQuery(user, 3 * K)).items
    hero = ranked[-1].item_id  # not in the top K without the pin
    document = {
        "version": "1",
        "rules": [{"name": "hero", "pin": {"item_id": hero, "position": 1}}],
    }
    rules = parse_rules(json.dumps(document)).active(datetime.now(UTC))
    assert rules is not None
    items = recommender.recommend(RecommendQuery(user, K, explain=True), rules=rules).items
    assert items[0].item_id == hero and items[0].rule == "hero"
    assert items[0].reasons[0].kind is ReasonKind.RULE and items[0].reasons[0].rule == "hero"
    assert [r.kind for r in items[0].reasons[1:]] == [ReasonKind.HISTORY_ITEM] * MAX_HISTORY_REASONS
    assert all(ReasonKind.RULE not in {r.kind for r in i.reasons} for i in items[1:])
    pinned_popular = recommender.recommend(RecommendQuery("nobody", K, explain=True), rules=rules)
    assert [r.rule for r in pinned_popular.items[0].reasons] == ["hero"]
    assert all(not i.reasons for i in pinned_popular.items[1:])


def test_a_batch_explains_only_the_queries_that_ask(recommender: Recommender, model: Model) -> None:
    users = model.users.ids[20:24]
    queries = [RecommendQuery(u, K, explain=n % 2 == 0) for n, u in enumerate(users)]
    results = recommender.recommend_many(queries, [UserState() for _ in queries])
    for query, result in zip(queries, results, strict=True):
        assert all(bool(i.reasons) == query.explain for i in result.items)


def test_cli_text_names_every_reason(recommender: Recommender, model: Model) -> None:
    user = model.users.ids[5]
    text = format_explained(recommender.recommend(RecommendQuery(user, 3, explain=True)))
    assert "strategy personalised" in text
    assert text.count("history item ") == 3 * MAX_HISTORY_REASONS


# ------------------------------------------------------------------------------------- BPR


@pytest.fixture(scope="module")
def bpr_model(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> Model:
    root = tmp_path_factory.mktemp("bpr-store")
    train_from_files(
        demo_data.interactions,
        ModelStore(root),
        TrainSettings(algorithm="bpr", factors=16, iterations=30, threads=2),
        SMALL_INDEX,
        items_path=demo_data.items,
        progress=False,
    )
    return ModelStore(root).load_latest(SEARCH)


def test_bpr_reasons_are_the_nearest_history_items(bpr_model: Model) -> None:
    recommender = build_recommender(TEST_SETTINGS, bpr_model)
    user_row = 5
    user = bpr_model.users.ids[user_row]
    plain = recommender.recommend(RecommendQuery(user, K)).items
    explained = recommender.recommend(RecommendQuery(user, K, explain=True)).items
    assert [(i.item_id, i.score) for i in explained] == [(i.item_id, i.score) for i in plain]
    rows = bpr_model.user_items[user_row].indices
    history = {bpr_model.items.ids[r] for r in rows}
    assert_history_reasons(bpr_model, explained, history)
    unit = bpr_model.similar_index.vectors
    for item in explained:
        row = bpr_model.items.row(item.item_id)
        assert row is not None
        cosines = np.sort(unit[rows] @ unit[row])[::-1][:MAX_HISTORY_REASONS]
        np.testing.assert_allclose([r.contribution for r in item.reasons], cosines, rtol=1e-5)


# ------------------------------------------------------------------ items that came by image


def test_items_that_entered_by_image_name_their_visual_neighbour(
    image_model: Model, products: ProductImages, cold_ids: list[str], embedder: ImageEmbedder
) -> None:
    recommender = build_recommender(TEST_SETTINGS, image_model)
    photo = embedder.embed_images([product_picture("shirts", random.Random(5))])[0]
    recommender.add_items([NewItem("new-shirt", "shirts", {}, photo)])
    user = "u000"
    everything = recommender.recommend(RecommendQuery(user, 61, explain=True)).items
    by_image = [i for i in everything if i.item_id in {*cold_ids, "new-shirt"}]
    assert {i.item_id for i in by_image} == {*cold_ids, "new-shirt"}
    row = image_model.users.row(user)
    assert row is not None
    history = {image_model.items.ids[r] for r in image_model.user_items[row].indices}
    for item in by_image:
        visual = [r for r in item.reasons if r.kind is ReasonKind.VISUAL_NEIGHBOUR]
        assert len(visual) == 1, item
        neighbour = visual[0].item_id
        assert neighbour != item.item_id
        assert neighbour in history or neighbour not in {*cold_ids, "new-shirt"}
        assert -1.0 <= visual[0].contribution <= 1.0 + 1e-6
    # Looks alike: the image-driven items of the kind the user buys (all their history is of
    # that kind) mostly have a neighbour of that kind.
    kinds = {**products.kinds, "new-shirt": "shirts"}
    same = [
        kinds[i.item_id] == kinds[r.item_id]
        for i in by_image
        for r in i.reasons
        if r.kind is ReasonKind.VISUAL_NEIGHBOUR and kinds[i.item_id] == KINDS[0]
    ]
    assert len(same) >= 4 and np.mean(same) >= 0.75
    warm = [i for i in everything if i.item_id not in {*cold_ids, "new-shirt"}]
    assert all(ReasonKind.VISUAL_NEIGHBOUR not in {r.kind for r in i.reasons} for i in warm)
    assert all(i.reasons for i in everything)


def test_explained_models_without_images_are_unaffected(model: Model) -> None:
    """Model of the demo data has no visual part: no visual reasons, no error."""
    assert model.visual is None
    recommender = build_recommender(TEST_SETTINGS, model)
    items = recommender.recommend(RecommendQuery(model.users.ids[1], K, explain=True)).items
    assert all(ReasonKind.VISUAL_NEIGHBOUR not in {r.kind for r in i.reasons} for i in items)
