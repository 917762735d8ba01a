"""A real `recsvc serve` process, called over TCP with real gRPC stubs."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.client import RecsvcClient
from recsvc.core.model import Model
from recsvc.testing import ServerProcess, running_server, server_env


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


def call_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)  # type: ignore[operator]
    return caught.value


def test_health_is_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "recsvc.v1.Recommender"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"recsvc.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_recommend_returns_k_distinct_unseen_items(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user = model.users.ids[10]
    response = stub.Recommend(pb.RecommendRequest(user_id=user, k=25), timeout=10)
    ids = [item.item_id for item in response.items]
    assert len(ids) == 25 == len(set(ids))
    row = model.users.row(user)
    assert row is not None
    seen = {model.items.ids[i] for i in model.seen_items(row)}
    assert not seen & set(ids)
    assert response.strategy == pb.STRATEGY_PERSONALISED
    assert response.model_version == model.version


def test_exclude_seen_false_is_honoured(stub: pb_grpc.RecommenderStub, model: Model) -> None:
    user = model.users.ids[10]
    row = model.users.row(user)
    assert row is not None
    seen = {model.items.ids[i] for i in model.seen_items(row)}
    response = stub.Recommend(
        pb.RecommendRequest(user_id=user, k=25, exclude_seen=False), timeout=10
    )
    assert seen & {item.item_id for item in response.items}


def test_unknown_user_gets_popular_fallback(stub: pb_grpc.RecommenderStub) -> None:
    response = stub.Recommend(pb.RecommendRequest(user_id="never-seen", k=5), timeout=10)
    assert response.strategy == pb.STRATEGY_POPULAR
    assert len(response.items) == 5


def test_batch_and_model_info(stub: pb_grpc.RecommenderStub, model: Model) -> None:
    batch = pb.RecommendBatchRequest(
        requests=[pb.RecommendRequest(user_id=u, k=3) for u in model.users.ids[:4]]
    )
    response = stub.RecommendBatch(batch, timeout=10)
    assert [len(r.items) for r in response.responses] == [3, 3, 3, 3]
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.model_version == model.version
    assert (info.num_users, info.num_items) == (model.info.num_users, model.info.num_items)
    assert info.factors == 32 and info.parameters["iterations"] == "10"
    assert info.index_recall_at_10 > 0.9
    assert info.engine == "implicit"
    assert info.user_index.m == model.info.index_m > 0
    assert info.user_index.ef_search == model.info.index_ef_search > 0
    assert info.user_index.recall_at_10 == pytest.approx(info.index_recall_at_10)
    assert model.info.similar_index is not None
    assert info.similar_index.m == model.info.similar_index.m > 0
    assert info.similar_index.ef_search == model.info.similar_index.ef_search > 0
    assert info.similar_index.recall_at_10 == pytest.approx(model.info.similar_index.recall_at_10)


def test_similar_items(stub: pb_grpc.RecommenderStub, model: Model) -> None:
    item = model.items.ids[3]
    response = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=7), timeout=10)
    ids = [i.item_id for i in response.items]
    assert len(ids) == 7 == len(set(ids)) and item not in ids


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (pb.RecommendRequest(user_id="u", k=0), "k"),
        (pb.RecommendRequest(user_id="u", k=-3), "k"),
        (pb.RecommendRequest(user_id="u", k=101), "k"),
        (pb.RecommendRequest(user_id="", k=5), "user_id"),
        (pb.RecommendRequest(user_id="u", k=5, exclude_item_ids=["ok", ""]), "exclude_item_ids[1]"),
        (pb.RecommendRequest(user_id="u", k=5, recent_item_ids=["x"] * 1001), "recent_item_ids"),
    ],
)
def test_recommend_rejects_bad_input_naming_the_field(
    stub: pb_grpc.RecommenderStub, request_message: pb.RecommendRequest, field: str
) -> None:
    error = call_error(stub.Recommend, request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field)


def test_similar_items_rejects_bad_input(stub: pb_grpc.RecommenderStub) -> None:
    error = call_error(stub.SimilarItems, pb.SimilarItemsRequest(item_id="nope", k=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "item_id" in error.details()
    error = call_error(stub.SimilarItems, pb.SimilarItemsRequest(item_id="", k=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(
        "item_id"
    )
    error = call_error(stub.SimilarItems, pb.SimilarItemsRequest(item_id="x", k=0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("k")
    error = call_error(stub.SimilarItems, pb.SimilarItemsRequest(item_id="x", k=5, mode=42))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("mode")


def test_batch_rejects_bad_entries_by_position(stub: pb_grpc.RecommenderStub) -> None:
    batch = pb.RecommendBatchRequest(
        requests=[pb.RecommendRequest(user_id="a", k=3), pb.RecommendRequest(user_id="b", k=0)]
    )
    error = call_error(stub.RecommendBatch, batch)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("requests[1].k")
    error = call_error(stub.RecommendBatch, pb.RecommendBatchRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("method", "request_message", "code", "field"),
    [
        (
            "SearchByImage",
            pb.SearchByImageRequest(image=b"x", k=3),
            grpc.StatusCode.FAILED_PRECONDITION,
            "image",
        ),
        ("SearchByImage", pb.SearchByImageRequest(k=3), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        ("UpsertItems", pb.UpsertItemsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "items"),
    ],
)
def test_image_rpcs_on_a_model_without_images(
    stub: pb_grpc.RecommenderStub,
    method: str,
    request_message: object,
    code: grpc.StatusCode,
    field: str,
) -> None:
    error = call_error(getattr(stub, method), request_message)
    assert error.code() == code
    assert error.details().startswith(f"{field}:")


def test_python_client(server: ServerProcess, model: Model) -> None:
    with RecsvcClient(server.target) as client:
        assert client.health() == "SERVING"
        result = client.recommend(model.users.ids[0], k=4)
        assert len(result.items) == 4 and result.strategy.value == "personalised"
        assert client.model_info().version == model.version
        assert len(client.similar_items(model.items.ids[0], k=3).items) == 3
        with pytest.raises(grpc.RpcError) as caught:
            client.recommend("u", k=0)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_sigterm_turns_not_serving_then_drains_and_exits(model_store: Path) -> None:
    env = server_env(RECSVC_SERVER__DRAIN_SECONDS="1.5", RECSVC_SERVER__GRACE_SECONDS="1")
    with running_server(["serve", "--model-store", str(model_store), "--port", "0"], env) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.RecommenderStub(channel)
            proc.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Still answering while draining.
            stub.Recommend(pb.RecommendRequest(user_id="x", k=1), timeout=5)
        assert proc.process.wait(timeout=20) == 0


def test_made_request_ids_are_echoed_when_asked(model_store: Path) -> None:
    env = server_env(
        RECSVC_SERVER__ECHO_GENERATED_REQUEST_IDS="true", RECSVC_SERVER__DRAIN_SECONDS="0"
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as proc, grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        _, call = stub.Recommend.with_call(pb.RecommendRequest(user_id="x", k=1), timeout=5)
        assert any(key == "x-request-id" and value for key, value in call.trailing_metadata())


def test_request_ids_are_echoed_and_json_logs_are_json(model_store: Path) -> None:
    env = server_env(RECSVC_LOG_FORMAT="json", RECSVC_SERVER__DRAIN_SECONDS="0")
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as proc, grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        _, call = stub.Recommend.with_call(
            pb.RecommendRequest(user_id="x", k=1),
            metadata=(("x-request-id", "abc-123"),),
            timeout=5,
        )
        assert ("x-request-id", "abc-123") in call.trailing_metadata()
        _, call = stub.Recommend.with_call(pb.RecommendRequest(user_id="x", k=1), timeout=5)
        # An id made here stays in the logs unless echo_generated_request_ids is on.
        assert not any(key == "x-request-id" for key, _ in call.trailing_metadata() or ())
    lines = [line for line in proc.output if line.startswith("{")]
    assert lines, proc.output
    assert json.loads(lines[0])["level"] in {"INFO", "WARNING"}
