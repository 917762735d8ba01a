"""Filter expressions through a real `recsvc serve`: attributes set by UpsertItems, filtered
Recommend, RecommendBatch and SimilarItems, and the errors that name the field and position."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.testing import running_server, server_env

K = 10


def attributes_of(position: int) -> dict[str, str]:
    """Item ``position``'s generated attributes: price 1..200, brand b0..b6, a few without a
    brand, in_stock on two items of three."""
    attributes = {"price": str(position % 200 + 1), "in_stock": str(position % 3 != 0).lower()}
    if position % 50:
        attributes["brand"] = f"b{position % 7}"
    return attributes


@pytest.fixture(scope="module")
def stub(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.RecommenderStub]:
    """A server of its own (the item log lives in its model store), every model item given
    the attributes above through UpsertItems."""
    store = tmp_path_factory.mktemp("filters") / "models"
    shutil.copytree(model_store, store)
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(store.parent / "events.jsonl"),
        RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS="0",  # HNSW search, as on a large catalogue
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    with (
        running_server(["serve", "--model-store", str(store), "--port", "0"], env) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.RecommenderStub(channel)
        yield stub


@pytest.fixture(scope="module")
def attributes(stub: pb_grpc.RecommenderStub, model: Model) -> dict[str, dict[str, str]]:
    by_id = {item_id: attributes_of(n) for n, item_id in enumerate(model.items.ids)}
    ids = list(by_id)
    for start in range(0, len(ids), 200):
        items = [pb.Item(item_id=i, attributes=by_id[i]) for i in ids[start : start + 200]]
        stub.UpsertItems(pb.UpsertItemsRequest(items=items), timeout=30)
    return by_id


def unseen(model: Model, user: str) -> set[str]:
    row = model.users.row(user)
    assert row is not None
    seen = {model.items.ids[i] for i in model.seen_items(row)}
    return set(model.items.ids) - seen


def price(values: dict[str, str]) -> float:
    return float(values["price"])


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # about 7% of the items: the graph search widens until k of them are found
        (
            'price < 50 and brand in ("b1", "b2")',
            lambda a: price(a) < 50 and a.get("brand") in ("b1", "b2"),
        ),
        # about 2%: served by an exact pass over the allowed items
        (
            'price <= 15 and in_stock == "true"',
            lambda a: price(a) <= 15 and a["in_stock"] == "true",
        ),
        # most items: the plain over-fetch
        ('not brand == "b3" and price != 7', lambda a: a.get("brand") != "b3" and price(a) != 7),
    ],
)
def test_filtered_recommend_returns_k_matching_items_when_enough_match(
    stub: pb_grpc.RecommenderStub,
    model: Model,
    attributes: dict[str, dict[str, str]],
    text: str,
    rule: object,
) -> None:
    for user in model.users.ids[:20]:
        matching = {i for i in unseen(model, user) if rule(attributes[i])}  # type: ignore[operator]
        response = stub.Recommend(pb.RecommendRequest(user_id=user, k=K, filter=text), timeout=10)
        ids = [item.item_id for item in response.items]
        assert len(ids) == len(set(ids)) == min(K, len(matching))
        assert set(ids) <= matching, text


def test_a_filter_that_leaves_fewer_than_k_returns_all_of_them(
    stub: pb_grpc.RecommenderStub, model: Model, attributes: dict[str, dict[str, str]]
) -> None:
    user = model.users.ids[3]
    matching = {i for i in unseen(model, user) if price(attributes[i]) == 42}
    assert 0 < len(matching) < K
    response = stub.Recommend(pb.RecommendRequest(user_id=user, k=K, filter="price == 42.0"))
    assert {item.item_id for item in response.items} == matching


def test_unknown_users_get_popular_items_that_match(
    stub: pb_grpc.RecommenderStub, attributes: dict[str, dict[str, str]]
) -> None:
    response = stub.Recommend(
        pb.RecommendRequest(user_id="nobody-at-all", k=K, filter='brand == "b4"'), timeout=10
    )
    assert response.strategy == pb.STRATEGY_POPULAR
    assert len(response.items) == K
    assert all(attributes[item.item_id].get("brand") == "b4" for item in response.items)


def test_similar_items_and_categories_combine_with_the_filter(
    stub: pb_grpc.RecommenderStub, model: Model, attributes: dict[str, dict[str, str]]
) -> None:
    source = model.items.ids[5]
    category = model.category_names[int(model.item_categories[5])]
    text = f'price > 100 and category == "{category}"'
    response = stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=source, k=K, filter=text), timeout=10
    )
    assert len(response.items) == K
    for item in response.items:
        row = model.items.row(item.item_id)
        assert row is not None and item.item_id != source
        assert price(attributes[item.item_id]) > 100
        assert model.category_names[int(model.item_categories[row])] == category


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("price < ", "filter: position 9: expected a number, found the end of the filter"),
        ('brand = "b1"', "filter: position 7: expected one of"),
        ("brand < 3", "filter: position 1: attribute 'brand' is not numeric"),
    ],
)
def test_a_bad_filter_is_invalid_argument_naming_the_field_and_position(
    stub: pb_grpc.RecommenderStub,
    model: Model,
    attributes: dict[str, dict[str, str]],
    text: str,
    message: str,
) -> None:
    user = model.users.ids[0]
    calls = [
        (stub.Recommend, pb.RecommendRequest(user_id=user, k=K, filter=text)),
        (stub.SimilarItems, pb.SimilarItemsRequest(item_id=model.items.ids[0], k=K, filter=text)),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(message)


@pytest.mark.parametrize("text", ["price <", "brand >= 2"])
def test_recommend_batch_names_the_request_whose_filter_is_bad(
    stub: pb_grpc.RecommenderStub, model: Model, attributes: dict[str, dict[str, str]], text: str
) -> None:
    good = pb.RecommendRequest(user_id=model.users.ids[0], k=K, filter="price < 100")
    bad = pb.RecommendRequest(user_id=model.users.ids[1], k=K, filter=text)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecommendBatch(pb.RecommendBatchRequest(requests=[good, good, bad]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("requests[2].filter: position ")


def test_recommend_batch_filters_each_request_by_its_own_filter(
    stub: pb_grpc.RecommenderStub, model: Model, attributes: dict[str, dict[str, str]]
) -> None:
    users = model.users.ids[:4]
    texts = ["price < 100", "", 'brand == "b0"', "price >= 100"]
    response = stub.RecommendBatch(
        pb.RecommendBatchRequest(
            requests=[
                pb.RecommendRequest(user_id=u, k=K, filter=t)
                for u, t in zip(users, texts, strict=True)
            ]
        ),
        timeout=10,
    )
    below, anything, brand, above = ([i.item_id for i in r.items] for r in response.responses)
    assert len(below) == len(anything) == len(brand) == len(above) == K
    assert all(price(attributes[i]) < 100 for i in below)
    assert all(attributes[i].get("brand") == "b0" for i in brand)
    assert all(price(attributes[i]) >= 100 for i in above)
