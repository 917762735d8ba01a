"""Hidden and deleted items, categories and attributes as the serving catalogue holds them."""

from __future__ import annotations

import numpy as np

from recsvc.core.catalogue import CATEGORY, AttributeColumn
from recsvc.core.model import Model
from recsvc.core.queries import CategoryFilter, RecommendQuery, SimilarQuery, Strategy
from recsvc.core.state import StoredItem, UserState
from recsvc.server import build_recommender
from tests.conftest import TEST_SETTINGS


def record(item_id: str, **changes: object) -> StoredItem:
    fields: dict[str, object] = {"category": "", "attributes": {}, "available": True}
    fields.update(changes)
    return StoredItem(item_id, backbone="", embedding=None, **fields)  # type: ignore[arg-type]


def ids(items: list) -> list[str]:  # type: ignore[type-arg]
    return [item.item_id for item in items]


def test_hidden_and_deleted_items_leave_every_strategy(model: Model) -> None:
    recommender = build_recommender(TEST_SETTINGS, model)
    users = model.users.ids[:6]
    queries = [RecommendQuery(user, 10) for user in users]
    before = [ids(r.items) for r in recommender.recommend_many(queries, [UserState()] * 6)]
    popular = ids(recommender.recommend(RecommendQuery("nobody", 5, recent_item_ids=("x",))).items)
    gone = {before[0][0], before[1][0], popular[0]}
    records = {i: record(i, available=False) for i in list(gone)[:2]}
    records.update({i: record(i, deleted=True) for i in list(gone)[2:]})
    assert recommender.catalogue.servable is None  # nothing hidden: nothing to check
    recommender.add_items([], records)
    after = [ids(r.items) for r in recommender.recommend_many(queries, [UserState()] * 6)]
    one_by_one = [ids(recommender.recommend(q).items) for q in queries]
    popular_after = recommender.recommend(RecommendQuery("nobody", 5, recent_item_ids=("x",)))
    similar = recommender.similar_items(SimilarQuery(before[0][1], 30))
    assert recommender.catalogue.servable is not None
    assert int((~recommender.catalogue.servable).sum()) == len(gone)
    for listed in after + one_by_one + [ids(popular_after.items), ids(similar.items)]:
        assert not gone & set(listed)
    assert all(len(listed) == 10 for listed in after)
    assert after == one_by_one  # the batched path drops them as the single path does
    assert popular_after.strategy is Strategy.POPULAR and len(popular_after.items) == 5
    # Shown again: back where they were.
    recommender.add_items([], {i: record(i) for i in gone})
    assert recommender.catalogue.servable is None
    assert [ids(r.items) for r in recommender.recommend_many(queries, [UserState()] * 6)] == before


def test_logged_categories_and_attributes_become_columns(model: Model) -> None:
    recommender = build_recommender(TEST_SETTINGS, model)
    first, second = model.items.ids[0], model.items.ids[1]
    recommender.add_items(
        [],
        {
            first: record(first, category="campaign", attributes={"price": "12.5", "brand": "a"}),
            second: record(second, attributes={"price": "40", "brand": "b"}),
        },
    )
    columns = recommender.catalogue.columns
    price, brand = columns["price"], columns["brand"]
    assert price.numeric and not brand.numeric
    assert price.numbers[0] == 12.5 and price.numbers[1] == 40.0
    assert np.isnan(price.numbers[2:]).all() and (brand.codes[2:] == -1).all()
    assert brand.values[brand.codes[1]] == "b"
    user = model.users.ids[0]
    only = recommender.recommend(
        RecommendQuery(user, 5, exclude_seen=False, categories=CategoryFilter(("campaign",)))
    )
    assert ids(only.items) == [first]
    assert columns[CATEGORY].values[columns[CATEGORY].codes[0]] == "campaign"


def test_an_attribute_with_one_non_number_is_text() -> None:
    column = AttributeColumn.from_texts(["1", None, "2.5", "n/a"])
    assert not column.numeric
    assert column.codes.tolist() == [0, -1, 1, 2]
    assert np.isnan(column.numbers[[1, 3]]).all() and column.numbers[2] == 2.5
    assert AttributeColumn.from_texts(["3", None, "1e3"]).numeric


def test_an_update_of_some_records_gives_the_catalogue_a_full_build_gives(model: Model) -> None:
    rng = np.random.default_rng(3)
    ids_ = model.items.ids
    records = {
        i: record(i, attributes={"price": str(int(rng.integers(1, 99))), "brand": f"b{n % 4}"})
        for n, i in enumerate(ids_[:40])
    }
    changed = [
        record(ids_[0], available=False, attributes={"price": "n/a"}),
        record(ids_[1], deleted=True),
        record(ids_[2], category="campaign", attributes={"colour": "red"}),
        record(ids_[50], attributes={"price": "7"}),
    ]
    full = build_recommender(TEST_SETTINGS, model)
    step = build_recommender(TEST_SETTINGS, model)
    step.add_items([], records)
    after = {**records, **{r.item_id: r for r in changed}}
    step.add_items([], after, changed=changed)
    full.add_items([], after)
    a, b = step.catalogue, full.catalogue
    assert a.deleted == b.deleted == frozenset({ids_[1]})
    assert a.servable is not None and b.servable is not None
    assert np.array_equal(a.servable, b.servable)
    assert set(a.columns) == set(b.columns) == {CATEGORY, "price", "brand", "colour"}
    for name in b.columns:
        assert a.columns[name].texts() == b.columns[name].texts(), name
        assert np.array_equal(a.columns[name].numbers, b.columns[name].numbers, equal_nan=True)
        assert a.columns[name].numeric == b.columns[name].numeric, name
    assert not a.columns["price"].numeric  # "n/a" made it text
