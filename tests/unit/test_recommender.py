"""The domain Recommender on a real small ALS model with real HNSW indexes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.config import ServingSettings
from recsvc.core.holder import RecommenderHolder
from recsvc.core.model import Model
from recsvc.core.queries import (
    CategoryFilter,
    Limits,
    RecommendQuery,
    SimilarityMode,
    SimilarQuery,
    Strategy,
)
from recsvc.core.recommender import Recommender
from recsvc.core.state import UserState
from recsvc.data.demo import DemoData
from recsvc.errors import FailedPrecondition, InvalidArgument, NotFound
from recsvc.server import build_recommender, build_service
from tests.conftest import TEST_SETTINGS

# Tight limits, so that the tests can reach them; otherwise wired as the server wires it.
SETTINGS = TEST_SETTINGS.model_copy(
    update={
        "serving": ServingSettings(
            max_k=100, max_batch=10, max_id_list=20, exact_search_max_items=0
        )
    }
)
LIMITS = Limits.from_settings(SETTINGS.serving)


@pytest.fixture(scope="module")
def recommender(model: Model) -> Recommender:
    return build_recommender(SETTINGS, model)


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


def test_known_user_gets_k_distinct_unseen_items(recommender: Recommender, model: Model) -> None:
    user = model.users.ids[5]
    result = recommender.recommend(RecommendQuery(user, 20))
    ids = [item.item_id for item in result.items]
    assert result.strategy is Strategy.PERSONALISED
    assert len(ids) == 20 == len(set(ids))
    seen = {model.items.ids[i] for i in model.seen_items(5)}
    assert not seen & set(ids)
    scores = [item.score for item in result.items]
    assert scores == sorted(scores, reverse=True)


def test_exclude_seen_off_can_return_history(recommender: Recommender, model: Model) -> None:
    user = model.users.ids[5]
    ids = {
        i.item_id for i in recommender.recommend(RecommendQuery(user, 10, exclude_seen=False)).items
    }
    seen = {model.items.ids[i] for i in model.seen_items(5)}
    assert ids & seen, "a user's strongest items are usually in their own history"


def test_recommendations_follow_the_users_taste(
    recommender: Recommender, model: Model, demo_data: DemoData
) -> None:
    """Demo users prefer two categories; the model must have learned that."""
    shares = []
    for user in model.users.ids[:100]:
        favourites = set(demo_data.favourite_categories[user])
        items = recommender.recommend(RecommendQuery(user, 10)).items
        shares.append(np.mean([category_of(model, i.item_id) in favourites for i in items]))
    assert np.mean(shares) >= 0.6  # chance is 2/12


def test_unknown_user_gets_popular_items(recommender: Recommender, model: Model) -> None:
    result = recommender.recommend(RecommendQuery("someone-new", 5))
    assert result.strategy is Strategy.POPULAR
    expected = [model.items.ids[i] for i in model.popular_order[:5]]
    assert [i.item_id for i in result.items] == expected


def test_session_items_drive_an_anonymous_user(recommender: Recommender, model: Model) -> None:
    books = [i for i in model.items.ids if category_of(model, i) == "books"][:5]
    result = recommender.recommend(RecommendQuery("", 10, recent_item_ids=tuple(books)))
    assert result.strategy is Strategy.SESSION
    ids = [i.item_id for i in result.items]
    assert not set(ids) & set(books)
    assert sum(category_of(model, i) == "books" for i in ids) >= 5


def test_excluded_items_and_category_filters(recommender: Recommender, model: Model) -> None:
    user = model.users.ids[0]
    first = recommender.recommend(RecommendQuery(user, 5)).items
    banned = tuple(i.item_id for i in first[:3])
    again = recommender.recommend(RecommendQuery(user, 5, exclude_item_ids=banned)).items
    assert not {i.item_id for i in again} & set(banned)

    only_toys = CategoryFilter(include=("toys",))
    items = recommender.recommend(RecommendQuery(user, 10, categories=only_toys)).items
    assert len(items) == 10 and all(category_of(model, i.item_id) == "toys" for i in items)

    no_books = CategoryFilter(exclude=("books", "music"))
    items = recommender.recommend(RecommendQuery(user, 30, categories=no_books)).items
    assert all(category_of(model, i.item_id) not in {"books", "music"} for i in items)

    nothing = CategoryFilter(include=("no-such-category",))
    assert recommender.recommend(RecommendQuery(user, 5, categories=nothing)).items == []


def test_similar_items_exclude_the_item_and_prefer_its_category(
    recommender: Recommender, model: Model
) -> None:
    item = model.items.ids[int(model.popular_order[0])]
    result = recommender.similar_items(SimilarQuery(item, 10))
    ids = [i.item_id for i in result.items]
    assert item not in ids and len(set(ids)) == 10
    same = sum(category_of(model, i) == category_of(model, item) for i in ids)
    assert same >= 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RecommendQuery("u", 0), "k"),
        (RecommendQuery("u", 101), "k"),
        (RecommendQuery("", 5), "user_id"),
        (RecommendQuery("x" * 300, 5), "user_id"),
        (RecommendQuery("u", 5, exclude_item_ids=("a", "")), "exclude_item_ids[1]"),
        (RecommendQuery("u", 5, recent_item_ids=("a",) * 21), "recent_item_ids"),
        (RecommendQuery("u", 5, categories=CategoryFilter(include=("",))), "categories.include[0]"),
    ],
)
def test_bad_queries_name_the_field(
    recommender: Recommender, query: RecommendQuery, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        recommender.recommend(query)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_similar_items_errors(recommender: Recommender) -> None:
    with pytest.raises(NotFound, match="item_id"):
        recommender.similar_items(SimilarQuery("no-such-item", 5))
    with pytest.raises(InvalidArgument, match=r"^item_id"):
        recommender.similar_items(SimilarQuery("", 5))
    with pytest.raises(FailedPrecondition, match=r"^mode: .*no image embeddings"):
        recommender.similar_items(SimilarQuery("x", 5, SimilarityMode.VISUAL))


async def test_batch_validates_everything_first(
    recommender: Recommender, model: Model, tmp_path: Path
) -> None:
    """RecommendBatch's own path: a bad query fails the whole batch, named by its position,
    before any work is done."""
    service = build_service(
        SETTINGS.model_copy(update={"model_store": tmp_path}), RecommenderHolder(recommender)
    )
    good = RecommendQuery(model.users.ids[0], 3)
    results = await service.recommend_batch([good, RecommendQuery("new", 3)])
    assert [r.strategy for r in results] == [Strategy.PERSONALISED, Strategy.POPULAR]
    with pytest.raises(InvalidArgument, match=r"^requests\[1\]\.k"):
        await service.recommend_batch([good, RecommendQuery("u", 0)])
    with pytest.raises(InvalidArgument, match=r"^requests"):
        await service.recommend_batch([good] * 11)
    with pytest.raises(InvalidArgument, match=r"^requests"):
        await service.recommend_batch([])


def test_many_queries_answered_together_as_each_alone(
    recommender: Recommender, model: Model
) -> None:
    """recommend_many batches the plain graph searches; filters, diversity, sessions and
    popular answers take their own paths. Every answer equals the one-query answer."""
    users = model.users.ids
    category = category_of(model, model.items.ids[0])
    queries = [
        *(RecommendQuery(users[n], 10) for n in range(12)),
        RecommendQuery(users[3], 5, exclude_item_ids=tuple(model.items.ids[:15])),
        RecommendQuery(users[4], 10, categories=CategoryFilter(include=(category,))),
        RecommendQuery(users[5], 10, diversity=0.5),
        RecommendQuery("newcomer", 10, recent_item_ids=tuple(model.items.ids[:3])),
        RecommendQuery("nobody", 10),
        RecommendQuery(users[6], 60),
    ]
    together = recommender.recommend_many(queries, [UserState() for _ in queries])
    for query, answer in zip(queries, together, strict=True):
        alone = recommender.recommend(query)
        assert answer.strategy is alone.strategy
        assert [i.item_id for i in answer.items] == [i.item_id for i in alone.items], query
