"""The popularity discount over gRPC: the server's default (RECSVC_SERVING__POPULARITY_DISCOUNT),
the request's own value, and its validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.testing import running_server, server_env


@pytest.fixture(scope="module")
def stub(model_store: Path) -> Iterator[pb_grpc.RecommenderStub]:
    """A server whose default discount is 1 (exact search: the candidate pool is known)."""
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(model_store.parent / "bias-events.jsonl"),
        RECSVC_SERVING__POPULARITY_DISCOUNT="1",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    command = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(command, env) as proc, grpc.insecure_channel(proc.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def mean_popularity(model: Model, response: pb.RecommendResponse) -> float:
    rows = [model.items.row(item.item_id) for item in response.items]
    return float(np.mean([model.item_popularity[r] for r in rows if r is not None]))


def test_the_default_discount_applies_unless_the_request_sets_one(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user = model.users.ids[40]
    default = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
    plain = stub.Recommend(
        pb.RecommendRequest(user_id=user, k=10, popularity_discount=0.0), timeout=10
    )
    assert mean_popularity(model, default) < mean_popularity(model, plain)
    scores = [item.score for item in plain.items]
    assert scores == sorted(scores, reverse=True)  # discount 0: by score, as before
    batch = stub.RecommendBatch(
        pb.RecommendBatchRequest(
            requests=[
                pb.RecommendRequest(user_id=user, k=10),
                pb.RecommendRequest(user_id=user, k=10, popularity_discount=0.0),
            ]
        ),
        timeout=10,
    )
    ids = [[item.item_id for item in r.items] for r in batch.responses]
    assert ids == [[i.item_id for i in default.items], [i.item_id for i in plain.items]]


def test_a_bad_discount_is_invalid_argument_naming_the_field(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user = model.users.ids[40]
    for bad in (1.5, -0.25, float("nan")):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Recommend(
                pb.RecommendRequest(user_id=user, k=10, popularity_discount=bad), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("popularity_discount")
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecommendBatch(
            pb.RecommendBatchRequest(
                requests=[
                    pb.RecommendRequest(user_id=user, k=10),
                    pb.RecommendRequest(user_id=user, k=10, popularity_discount=2.0),
                ]
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("requests[1].popularity_discount")
