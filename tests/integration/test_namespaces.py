"""Two namespaces in one real server (Redis mode) whose user and item ids overlap: each
answers from its own model and its own user state, and a model swap in one leaves the other
serving its own version."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.artifacts import ModelStore
from recsvc.data.demo import DemoData, generate_demo_data
from recsvc.store.names import event_stream_key
from recsvc.testing import ServerProcess, running_server, server_env
from recsvc.training.pipeline import train_from_files
from tests.conftest import SMALL_INDEX, SMALL_TRAIN
from tests.helpers import run_recsvc

NUM_ITEMS = 300
NAMESPACES = ("shop", "news")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoData]:
    """Same id scheme (u..., i...), different interactions: the ids overlap, the models
    differ."""
    root = tmp_path_factory.mktemp("ns-data")
    return {
        name: generate_demo_data(root / name, num_users=200, num_items=NUM_ITEMS, seed=seed)
        for name, seed in zip(NAMESPACES, (11, 12), strict=True)
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, data: dict[str, DemoData]) -> Path:
    """The deployment's model store: one directory per namespace under it."""
    root = tmp_path_factory.mktemp("ns-stores")
    for name in NAMESPACES:
        train_from_files(
            data[name].interactions,
            ModelStore(root / name),
            SMALL_TRAIN,
            SMALL_INDEX,
            items_path=data[name].items,
            progress=False,
        )
    return root


@pytest.fixture(scope="module")
def server(stores: Path, redis_server_url: str) -> Iterator[ServerProcess]:
    with redis.Redis.from_url(redis_server_url) as client:
        client.flushdb()
    env = server_env(
        RECSVC_REDIS_URL=redis_server_url,
        RECSVC_NAMESPACES=json.dumps({"shop": {}, "news": {"serving": {"max_k": 50}}}),
        RECSVC_DEFAULT_NAMESPACE="shop",
        RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS="0",
        RECSVC_SERVING__MAX_K=str(NUM_ITEMS),
        RECSVC_SERVING__MODEL_POLL_SECONDS="0.2",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    with running_server(["serve", "--model-store", str(stores), "--port", "0"], env) as proc:
        yield proc


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def info(stub: pb_grpc.RecommenderStub, namespace: str = "") -> pb.ModelInfo:
    return stub.GetModelInfo(pb.GetModelInfoRequest(namespace=namespace), timeout=10)


def recommend(stub: pb_grpc.RecommenderStub, namespace: str, user: str, k: int) -> list[str]:
    request = pb.RecommendRequest(user_id=user, k=k, namespace=namespace)
    return [item.item_id for item in stub.Recommend(request, timeout=10).items]


def test_each_namespace_serves_its_own_model(stub: pb_grpc.RecommenderStub, stores: Path) -> None:
    shop, news = info(stub, "shop"), info(stub, "news")
    assert shop.namespace == "shop" and news.namespace == "news"
    assert shop.model_version == ModelStore(stores / "shop").latest_version()
    assert news.model_version == ModelStore(stores / "news").latest_version()
    assert shop.model_version != news.model_version
    assert shop.memory_bytes > 0 and news.memory_bytes > 0
    # No namespace: the default one.
    assert info(stub).namespace == "shop"
    # The same user, known to both models, gets each model's own list.
    user = "u1"
    lists = {name: recommend(stub, name, user, 10) for name in NAMESPACES}
    assert lists["shop"] != lists["news"]
    assert recommend(stub, "", user, 10) == lists["shop"]


def test_limits_are_per_namespace(stub: pb_grpc.RecommenderStub) -> None:
    assert len(recommend(stub, "shop", "u1", 60)) == 60
    with pytest.raises(grpc.RpcError) as caught:
        recommend(stub, "news", "u1", 60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("k")


def test_recorded_interactions_and_seen_filtering_stay_in_their_namespace(
    stub: pb_grpc.RecommenderStub, redis_server_url: str
) -> None:
    user = "ns-visitor"  # unknown to both models: only what is recorded makes it "seen"
    everything = {name: set(recommend(stub, name, user, 50)) for name in NAMESPACES}
    bought = sorted(everything["shop"] & everything["news"])[:3]
    assert bought, "the two catalogues share item ids"
    interactions = [
        pb.Interaction(
            user_id=user, item_id=item, event_type=pb.EVENT_TYPE_PURCHASE, event_id=f"ns-{item}"
        )
        for item in bought
    ]
    request = pb.RecordInteractionsRequest(interactions=interactions, namespace="shop")
    assert stub.RecordInteractions(request, timeout=10).accepted == len(bought)
    # Seen in shop: left out there; news never heard of it: still recommendable there.
    shop = recommend(stub, "shop", user, NUM_ITEMS)
    news = recommend(stub, "news", user, 50)
    assert not set(bought) & set(shop)
    assert set(news) == everything["news"]
    # The event went to shop's stream alone, and the same event id is new to news.
    with redis.Redis.from_url(redis_server_url) as client:
        assert client.xlen(event_stream_key("recsvc:shop")) == len(bought)
        assert client.xlen(event_stream_key("recsvc:news")) == 0
    again = pb.RecordInteractionsRequest(interactions=interactions[:1], namespace="news")
    assert stub.RecordInteractions(again, timeout=10).accepted == 1
    # Forgetting the user in news leaves shop's history alone.
    stub.ForgetUser(pb.ForgetUserRequest(user_id=user, namespace="news"), timeout=10)
    assert not set(bought) & set(recommend(stub, "shop", user, NUM_ITEMS))


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("Recommend", pb.RecommendRequest(user_id="u1", k=5, namespace="nope")),
        ("GetModelInfo", pb.GetModelInfoRequest(namespace="nope")),
        ("SimilarItems", pb.SimilarItemsRequest(item_id="i1", k=5, namespace="nope")),
        ("ForgetUser", pb.ForgetUserRequest(user_id="u1", namespace="nope")),
        ("DeleteItems", pb.DeleteItemsRequest(item_ids=["i1"], namespace="nope")),
        (
            "RecordInteractions",
            pb.RecordInteractionsRequest(
                interactions=[pb.Interaction(user_id="u", item_id="i1", event_id="e")],
                namespace="nope",
            ),
        ),
    ],
)
def test_an_unknown_namespace_is_not_found(
    stub: pb_grpc.RecommenderStub, method: str, request_message: object
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request_message, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details().startswith("namespace: ")
    assert "'nope'" in caught.value.details()


def test_a_batch_answers_in_its_own_namespace(stub: pb_grpc.RecommenderStub) -> None:
    batch = pb.RecommendBatchRequest(
        requests=[pb.RecommendRequest(user_id="u1", k=10)], namespace="news"
    )
    response = stub.RecommendBatch(batch, timeout=10)
    assert [i.item_id for i in response.responses[0].items] == recommend(stub, "news", "u1", 10)
    batch.requests.add(user_id="u2", k=5, namespace="shop")
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecommendBatch(batch, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("requests[1].namespace")


@pytest.mark.slow
def test_a_swap_in_one_namespace_leaves_the_other_serving(
    stub: pb_grpc.RecommenderStub, stores: Path, data: dict[str, DemoData]
) -> None:
    shop_before, news_before = info(stub, "shop"), info(stub, "news")
    expected = recommend(stub, "shop", "u2", 10)
    failures: list[BaseException] = []
    answers = 0
    done = threading.Event()

    def load_shop() -> None:
        nonlocal answers
        while not done.is_set():
            try:
                assert recommend(stub, "shop", "u2", 10) == expected
                answers += 1
            except BaseException as exc:  # reported below, not lost in the thread
                failures.append(exc)
                return

    loader = threading.Thread(target=load_shop)
    loader.start()
    try:
        # A new version for news only (news's data as shop's: a different model).
        train_from_files(
            data["shop"].interactions,
            ModelStore(stores / "news"),
            SMALL_TRAIN,
            SMALL_INDEX,
            items_path=data["shop"].items,
            progress=False,
        )
        latest = ModelStore(stores / "news").latest_version()
        deadline = time.monotonic() + 60
        while info(stub, "news").model_version != latest and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        loader.join()
    assert not failures, failures[0]
    assert answers > 0
    assert info(stub, "news").model_version == latest != news_before.model_version
    assert info(stub, "shop").model_version == shop_before.model_version


@pytest.mark.slow
def test_the_command_line_addresses_one_namespace(
    server: ServerProcess, stub: pb_grpc.RecommenderStub, stores: Path, redis_server_url: str
) -> None:
    settings = {
        "RECSVC_REDIS_URL": redis_server_url,
        "RECSVC_NAMESPACES": json.dumps({"shop": {}, "news": {}}),
        "RECSVC_DEFAULT_NAMESPACE": "shop",
    }
    news_latest = ModelStore(stores / "news").latest_version()
    assert news_latest is not None
    listed = run_recsvc(
        "models", "list", "--model-store", str(stores), "--namespace", "news", **settings
    )
    assert listed.returncode == 0, listed.stderr
    assert f"* {news_latest}" in listed.stdout.splitlines()[-1]
    called = run_recsvc(
        "call", "info", "--target", server.target, "--namespace", "news", **settings
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["version"] == info(stub, "news").model_version
    unknown = run_recsvc(
        "models", "list", "--model-store", str(stores), "--namespace", "nope", **settings
    )
    assert unknown.returncode == 2
    assert "namespace: no namespace 'nope'" in unknown.stderr
