"""Hiding and deleting items: out of every replica's answers once the call returns."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.store.item_log import FileItemLog
from recsvc.store.names import ITEM_LOG_FILE
from recsvc.testing import free_port, redis_server, running_server, server_env


class Load:
    """Recommend calls sent over and over to one replica from a thread; every answer is kept
    with the time its request was sent."""

    def __init__(self, target: str, request: pb.RecommendRequest) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.request = request
        self.answers: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            response = self.stub.Recommend(self.request, timeout=10)
            self.answers.append((sent, [item.item_id for item in response.items]))

    @contextmanager
    def running(self) -> Iterator[Load]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)
            self.channel.close()

    def containing(self, item_id: str, sent_after: float) -> int:
        return sum(1 for sent, ids in self.answers if sent > sent_after and item_id in ids)

    def sent_after(self, moment: float) -> int:
        return sum(1 for sent, _ in self.answers if sent > moment)


def wait_for_answers(loads: list[Load], moment: float, count: int) -> None:
    deadline = time.monotonic() + 60
    while any(load.sent_after(moment) < count for load in loads):
        assert time.monotonic() < deadline, "the replicas stopped answering"
        time.sleep(0.05)


@pytest.mark.redis
@pytest.mark.slow
def test_a_hidden_item_is_out_of_every_replica_when_the_call_returns(
    model_store: Path, model: Model
) -> None:
    user = model.users.ids[0]
    request = pb.RecommendRequest(user_id=user, k=10)
    with redis_server() as url, ExitStack() as stack:
        env = server_env(
            RECSVC_REDIS_URL=url,
            RECSVC_SERVING__MODEL_POLL_SECONDS="0",
            RECSVC_SERVER__DRAIN_SECONDS="0",
        )
        replicas = [
            stack.enter_context(
                running_server(
                    ["serve", "--model-store", str(model_store), "--port", str(free_port())], env
                )
            )
            for _ in range(2)
        ]
        writer = stack.enter_context(grpc.insecure_channel(replicas[0].target))
        stub = pb_grpc.RecommenderStub(writer)
        top = stub.Recommend(request, timeout=10).items[0].item_id
        loads = [stack.enter_context(Load(r.target, request).running()) for r in replicas]
        start = time.monotonic()
        wait_for_answers(loads, start, 20)
        stub.UpsertItems(
            pb.UpsertItemsRequest(items=[pb.Item(item_id=top, available=False)]), timeout=30
        )
        hidden_at = time.monotonic()
        wait_for_answers(loads, hidden_at, 50)
        shown = [load.containing(top, start) for load in loads]
        leaked = [load.containing(top, hidden_at) for load in loads]
        stub.UpsertItems(
            pb.UpsertItemsRequest(items=[pb.Item(item_id=top, available=True)]), timeout=30
        )
        back = [pb_grpc.RecommenderStub(grpc.insecure_channel(r.target)) for r in replicas]
        again = [top in [i.item_id for i in s.Recommend(request, timeout=10).items] for s in back]
    assert all(count > 0 for count in shown)  # the item was there before
    assert leaked == [0, 0]
    assert again == [True, True]


@contextmanager
def private_server(model_store: Path, tmp_path: Path) -> Iterator[pb_grpc.RecommenderStub]:
    """An embedded-mode server with its own event and item logs (the item log lives in the
    model store: a copy of it)."""
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    args = ["serve", "--model-store", str(store), "--port", "0"]
    with running_server(args, env) as proc, grpc.insecure_channel(proc.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


@pytest.mark.slow
def test_deleted_items_are_gone_and_counted(
    model_store: Path, model: Model, tmp_path: Path
) -> None:
    with private_server(model_store, tmp_path) as stub:
        _delete_and_check(stub, model)


def _delete_and_check(stub: pb_grpc.RecommenderStub, model: Model) -> None:
    user = model.users.ids[1]
    request = pb.RecommendRequest(user_id=user, k=5)
    doomed = stub.Recommend(request, timeout=10).items[0].item_id
    response = stub.DeleteItems(
        pb.DeleteItemsRequest(item_ids=[doomed, "never-existed", doomed]), timeout=30
    )
    after = [item.item_id for item in stub.Recommend(request, timeout=10).items]
    similar_to_others = stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=after[0], k=50), timeout=10
    )
    with pytest.raises(grpc.RpcError) as gone:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id=doomed, k=5), timeout=10)
    with pytest.raises(grpc.RpcError) as empty:
        stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[""]), timeout=10)
    assert (response.deleted, response.not_found) == (1, 2)
    assert doomed not in after and len(after) == 5
    assert doomed not in [item.item_id for item in similar_to_others.items]
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "item_ids[0]" in (empty.value.details() or "")


def test_upserts_merge_attributes_and_keep_what_they_do_not_send(
    model_store: Path, model: Model, tmp_path: Path
) -> None:
    item = model.items.ids[3]
    with private_server(model_store, tmp_path) as stub:
        first = stub.UpsertItems(
            pb.UpsertItemsRequest(
                items=[pb.Item(item_id=item, category="promo", attributes={"a": "1", "b": "x"})]
            ),
            timeout=30,
        )
        stub.UpsertItems(
            pb.UpsertItemsRequest(items=[pb.Item(item_id=item, attributes={"b": "", "c": "2"})]),
            timeout=30,
        )
        stub.UpsertItems(
            pb.UpsertItemsRequest(items=[pb.Item(item_id=item, available=False)]), timeout=30
        )
        promoted = pb.RecommendRequest(
            user_id=model.users.ids[0],
            k=5,
            exclude_seen=False,
            categories=pb.CategoryFilter(include=["promo"]),
        )
        hidden = stub.Recommend(promoted, timeout=10)
        stub.UpsertItems(
            pb.UpsertItemsRequest(items=[pb.Item(item_id=item, available=True)]), timeout=30
        )
        shown = stub.Recommend(promoted, timeout=10)
    logged = FileItemLog.read_path(tmp_path / "store" / ITEM_LOG_FILE)[item]
    assert (first.created, first.updated) == (0, 1)  # the model knows it
    assert logged.category == "promo" and logged.attributes == {"a": "1", "c": "2"}
    assert logged.available
    assert list(hidden.items) == []
    assert [i.item_id for i in shown.items] == [item]
