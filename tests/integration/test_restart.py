"""Embedded mode survives a restart: the event log's recent events come back into the
in-process store at start-up (issue 15), so what a user bought is still excluded after a crash."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.core.state import EventType, Interaction
from recsvc.store.codec import interactions_to_columns_json
from recsvc.store.file_log import read_events_since
from recsvc.testing import running_server, server_env

HOUR_MS = 3_600_000


def purchase(user: str, item: str, timestamp_ms: int) -> pb.Interaction:
    return pb.Interaction(
        user_id=user,
        item_id=item,
        event_type=pb.EVENT_TYPE_PURCHASE,
        event_id=f"{user}-{item}",
        timestamp_ms=timestamp_ms,
    )


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


def recommended(stub: pb_grpc.RecommenderStub, user: str) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


@pytest.mark.slow
def test_a_killed_embedded_server_restarts_with_its_users_histories(
    model_store: Path, model: Model, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    args = ["serve", "--model-store", str(store), "--port", "0"]
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_STORE__HISTORY_TTL_SECONDS="3600",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    buyer, old_buyer = model.users.ids[20], model.users.ids[21]
    newcomer = "restart-newcomer"
    now_ms = int(time.time() * 1000)
    toys = [i for i in model.items.ids if category_of(model, i) == "toys"][:6]

    with running_server(args, env) as first, grpc.insecure_channel(first.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        bought = ids(recommended(stub, buyer))[:3]
        old_top = ids(recommended(stub, old_buyer))[0]
        events = [purchase(buyer, item, now_ms) for item in bought]
        events += [purchase(newcomer, item, now_ms) for item in toys]
        # Bought two hours ago: outside the one-hour history window, so not replayed.
        events.append(purchase(old_buyer, old_top, now_ms - 2 * HOUR_MS))
        response = stub.RecordInteractions(
            pb.RecordInteractionsRequest(interactions=events), timeout=10
        )
        assert response.accepted == len(events)
        assert not set(bought) & set(ids(recommended(stub, buyer)))
        assert old_top not in ids(recommended(stub, old_buyer))
        first.process.kill()  # SIGKILL: no shutdown path runs
        first.process.wait(timeout=10)

    with running_server(args, env) as second, grpc.insecure_channel(second.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        after = ids(recommended(stub, buyer))
        assert len(after) == 10
        assert not set(bought) & set(after), "bought before the restart: still excluded"
        fresh = recommended(stub, newcomer)
        assert fresh.strategy == pb.STRATEGY_PERSONALISED, "known only from replayed events"
        assert not set(ids(fresh)) & set(toys)
        assert old_top in ids(recommended(stub, old_buyer)), "older than the TTL: not replayed"
        replayed = re.search(r"replayed (\d+) events of (\d+) users", "".join(second.output))
        assert replayed is not None and replayed.groups() == ("9", "2")


def test_the_replay_reader_keeps_the_window_and_skips_what_is_not_an_event(
    tmp_path: Path,
) -> None:
    def at(n: int, timestamp_ms: int) -> Interaction:
        return Interaction(f"u{n}", f"i{n}", EventType.CART, 2.0, timestamp_ms, f"e{n}")

    path = tmp_path / "events.jsonl"
    lines = [
        interactions_to_columns_json([at(1, 1_000), at(2, 5_000)]),
        "not json",
        interactions_to_columns_json([at(3, 500)]),
        interactions_to_columns_json([at(4, 9_000)]),
    ]
    path.write_text("\n".join(lines) + "\n" + '{"event_id": ["torn')
    assert list(read_events_since(path, 1_000)) == [[at(1, 1_000), at(2, 5_000)], [at(4, 9_000)]]
    assert list(read_events_since(tmp_path / "missing.jsonl", 0)) == []
