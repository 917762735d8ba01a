"""RecommendRequest.interests through a real `recsvc serve`: a user recorded with two tastes
gets both with several interests and the nearer one with one vector; out-of-range values are
refused with INVALID_ARGUMENT naming the field (and its position in a batch)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.core.queries import MAX_INTERESTS
from recsvc.testing import ServerProcess

K = 10
USER = "interests-two-tastes"


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


@pytest.fixture(scope="module")
def recorded(stub: pb_grpc.RecommenderStub, model: Model) -> set[str]:
    """USER's history, recorded through RecordInteractions: 12 books and 5 toys."""
    books = [i for i in model.items.ids if category_of(model, i) == "books"][:12]
    toys = [i for i in model.items.ids if category_of(model, i) == "toys"][:5]
    now = int(time.time() * 1000)
    events = [
        pb.Interaction(
            user_id=USER,
            item_id=item,
            event_type=pb.EVENT_TYPE_VIEW,
            event_id=f"interests-{item}",
            timestamp_ms=now,
        )
        for item in books + toys
    ]
    request = pb.RecordInteractionsRequest(interactions=events)
    assert stub.RecordInteractions(request, timeout=10).accepted == len(events)
    return set(books + toys)


def kinds(model: Model, response: pb.RecommendResponse) -> list[str]:
    return [category_of(model, item.item_id) for item in response.items]


def test_interests_per_request(
    stub: pb_grpc.RecommenderStub, model: Model, recorded: set[str]
) -> None:
    one = stub.Recommend(pb.RecommendRequest(user_id=USER, k=K), timeout=10)
    two = stub.Recommend(pb.RecommendRequest(user_id=USER, k=K, interests=2), timeout=10)
    assert one.strategy == two.strategy == pb.STRATEGY_PERSONALISED
    assert "toys" not in kinds(model, one), kinds(model, one)
    assert kinds(model, two).count("toys") >= 2 and "books" in kinds(model, two)
    ids = [item.item_id for item in two.items]
    assert len(ids) == K == len(set(ids)) and not set(ids) & recorded
    batch = stub.RecommendBatch(
        pb.RecommendBatchRequest(
            requests=[
                pb.RecommendRequest(user_id=USER, k=K, interests=1),
                pb.RecommendRequest(user_id=USER, k=K, interests=2),
            ]
        ),
        timeout=10,
    )
    assert "toys" not in kinds(model, batch.responses[0])
    assert [item.item_id for item in batch.responses[1].items] == ids  # searched alone both times


@pytest.mark.parametrize("interests", [-1, MAX_INTERESTS + 1])
def test_interests_out_of_range_are_invalid(stub: pb_grpc.RecommenderStub, interests: int) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(pb.RecommendRequest(user_id=USER, k=K, interests=interests), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("interests:")
    batch = pb.RecommendBatchRequest(
        requests=[
            pb.RecommendRequest(user_id=USER, k=K),
            pb.RecommendRequest(user_id=USER, k=K, interests=interests),
        ]
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecommendBatch(batch, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].interests" in caught.value.details()
