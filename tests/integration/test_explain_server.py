"""Explanations through a real `recsvc serve`: Recommend and RecommendBatch with `explain`
give every personalised item its reasons, and none without it; `recsvc call recommend
--explain` prints them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.client import RecsvcClient
from recsvc.core.explain import MAX_HISTORY_REASONS
from recsvc.core.model import Model
from recsvc.core.queries import ReasonKind, Strategy
from recsvc.testing import ServerProcess
from tests.helpers import run_recsvc

K = 10


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def test_recommend_with_explain_gives_every_item_its_history_reasons(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user_row = 450  # a user no other test of the shared server records for
    user = model.users.ids[user_row]
    history = {model.items.ids[r] for r in model.user_items[user_row].indices}
    plain = stub.Recommend(pb.RecommendRequest(user_id=user, k=K), timeout=10)
    explained = stub.Recommend(pb.RecommendRequest(user_id=user, k=K, explain=True), timeout=10)
    assert [i.item_id for i in explained.items] == [i.item_id for i in plain.items]
    assert all(not i.reasons for i in plain.items)
    for item in explained.items:
        assert 1 <= len(item.reasons) <= MAX_HISTORY_REASONS
        assert {r.kind for r in item.reasons} == {pb.Reason.KIND_HISTORY_ITEM}
        assert {r.item_id for r in item.reasons} <= history
        parts = [r.contribution for r in item.reasons]
        assert parts == sorted(parts, reverse=True)


def test_batch_explains_the_entries_that_ask(stub: pb_grpc.RecommenderStub, model: Model) -> None:
    recent = [model.items.ids[r] for r in (3, 50, 120)]
    requests = [
        pb.RecommendRequest(user_id=model.users.ids[451], k=K, explain=True),
        pb.RecommendRequest(user_id=model.users.ids[452], k=K),
        pb.RecommendRequest(recent_item_ids=recent, k=K, explain=True),
        pb.RecommendRequest(user_id="somebody-new", k=K, explain=True),
    ]
    response = stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=10)
    personal, off, session, popular = response.responses
    assert all(i.reasons for i in personal.items)
    assert all(not i.reasons for i in off.items)
    assert all(i.reasons for i in session.items)
    assert all({r.item_id for r in i.reasons} <= set(recent) for i in session.items)
    assert all(not i.reasons for i in popular.items)  # not personalised, no rule


def test_client_and_cli_show_the_reasons(server: ServerProcess, model: Model) -> None:
    user = model.users.ids[450]
    with RecsvcClient(server.target) as client:
        result = client.recommend(user, 3, explain=True)
        assert result.strategy is Strategy.PERSONALISED
        assert all(r.kind is ReasonKind.HISTORY_ITEM for i in result.items for r in i.reasons)
        assert all(i.reasons for i in result.items)
        assert all(not i.reasons for i in client.recommend(user, 3).items)
    shown = run_recsvc(
        "call", "recommend", "--target", server.target, "--user", user, "-k", "3", "--explain"
    )
    assert shown.returncode == 0, shown.stderr
    assert "strategy personalised" in shown.stdout
    for item in result.items:
        assert item.item_id in shown.stdout
        assert f"history item {item.reasons[0].item_id}" in shown.stdout
