"""ForgetUser, dislikes and impressions end to end: a real server (embedded, and with a real
Redis), the real ingest worker round, compaction and the train worker on the small demo data;
the server swaps to the new model and is asked again."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pyarrow.compute as pc
import pytest
import redis

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.artifacts import ModelStore
from recsvc.core.queries import RecommendQuery
from recsvc.core.state import UserState
from recsvc.data.demo import DemoData
from recsvc.data.interaction_files import read_interactions
from recsvc.data.interaction_store import InteractionStore, file_sha256, import_interactions
from recsvc.server import build_recommender
from recsvc.store.names import event_stream_key
from recsvc.testing import recsvc_command, redis_server, running_server, server_env
from tests.conftest import SEARCH, SMALL_INDEX, SMALL_TRAIN, TEST_SETTINGS
from workers.ingest import FileLogIngester, RedisStreamIngester, maintain_store
from workers.retrain import RetrainPolicy, TrainWorker

FORGOTTEN, DISLIKER, SHOWN = "u00010", "u00020", "u00030"


@dataclass(frozen=True)
class Served:
    mode: str  # "embedded" or "redis"
    target: str
    models: Path
    event_log: Path
    redis_url: str | None


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def served(
    request: pytest.FixtureRequest, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    models = tmp_path_factory.mktemp(f"forget-{request.param}")
    shutil.copytree(model_store, models, dirs_exist_ok=True)
    log_path = models.parent / f"{models.name}-events.jsonl"
    env = {
        "RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS": "0",
        "RECSVC_SERVER__DRAIN_SECONDS": "0",
        "RECSVC_STORE__EVENT_LOG_PATH": str(log_path),
        "RECSVC_SERVING__MODEL_POLL_SECONDS": "0.2",
    }
    args = ["serve", "--model-store", str(models), "--port", "0"]
    if request.param == "embedded":
        with running_server(args, server_env(**env)) as proc:
            yield Served("embedded", proc.target, models, log_path, None)
    else:
        with (
            redis_server() as url,
            running_server(args, server_env(RECSVC_REDIS_URL=url, **env)) as proc,
        ):
            yield Served("redis", proc.target, models, log_path, url)


@pytest.fixture(scope="module")
def stub(served: Served) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(served.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def recommend(
    stub: pb_grpc.RecommenderStub, user: str, exclude_seen: bool = True, k: int = 10
) -> pb.RecommendResponse:
    request = pb.RecommendRequest(user_id=user, k=k, exclude_seen=exclude_seen)
    return stub.Recommend(request, timeout=10)


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def record(stub: pb_grpc.RecommenderStub, user: str, items: list[str], kind: int, tag: str) -> int:
    events = [
        pb.Interaction(
            user_id=user,
            item_id=item,
            event_type=kind,
            event_id=f"{tag}-{user}-{item}",
            timestamp_ms=int(time.time() * 1000),
        )
        for item in items
    ]
    request = pb.RecordInteractionsRequest(interactions=events)
    return int(stub.RecordInteractions(request, timeout=10).accepted)


# ------------------------------------------------------------------ at once


@pytest.mark.parametrize("user_id", ["", "u" * 300])
def test_forget_user_refuses_a_bad_user_id(stub: pb_grpc.RecommenderStub, user_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ForgetUser(pb.ForgetUserRequest(user_id=user_id), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in (caught.value.details() or "")


def test_a_disliked_item_is_excluded_at_once(stub: pb_grpc.RecommenderStub) -> None:
    first = ids(recommend(stub, DISLIKER, exclude_seen=False))[0]
    assert record(stub, DISLIKER, [first], pb.EVENT_TYPE_DISLIKE, "dislike") == 1
    assert first not in ids(recommend(stub, DISLIKER, exclude_seen=False))
    assert first not in ids(recommend(stub, DISLIKER, exclude_seen=False, k=100))
    assert first not in ids(recommend(stub, DISLIKER))


def test_impressions_do_not_change_the_recommendations(stub: pb_grpc.RecommenderStub) -> None:
    before = recommend(stub, SHOWN)
    assert record(stub, SHOWN, ids(before)[:3], pb.EVENT_TYPE_IMPRESSION, "shown") == 3
    after = recommend(stub, SHOWN)
    assert ids(after) == ids(before)  # neither seen (excluded) nor folded in
    assert [i.score for i in after.items] == pytest.approx([i.score for i in before.items])


def test_forget_user_stops_serving_the_users_factors_at_once_and_is_idempotent(
    stub: pb_grpc.RecommenderStub, served: Served
) -> None:
    assert recommend(stub, FORGOTTEN).strategy == pb.STRATEGY_PERSONALISED
    item = ids(recommend(stub, FORGOTTEN))[0]
    assert record(stub, FORGOTTEN, [item], pb.EVENT_TYPE_PURCHASE, "bought") == 1
    found = stub.ForgetUser(pb.ForgetUserRequest(user_id=FORGOTTEN), timeout=10).found
    assert found
    answer = recommend(stub, FORGOTTEN)
    assert answer.strategy == pb.STRATEGY_POPULAR  # neither model factors nor history
    # Again (here through `recsvc call`): the same effect, the same answer.
    if served.mode == "embedded":
        called = subprocess.run(
            recsvc_command("call", "forget-user", FORGOTTEN, "--target", served.target),
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == {"found": True}  # the model still has factors
    else:
        assert stub.ForgetUser(pb.ForgetUserRequest(user_id=FORGOTTEN), timeout=10).found
    assert recommend(stub, FORGOTTEN).strategy == pb.STRATEGY_POPULAR
    assert ids(recommend(stub, FORGOTTEN)) == ids(answer)


# ------------------------------------------------------------------ after retraining


def test_retraining_forgets_the_user_and_keeps_the_dislike(
    stub: pb_grpc.RecommenderStub,
    served: Served,
    demo_data: DemoData,
    tmp_path: Path,
) -> None:
    """After the calls above: ingest (the server's log or stream), the demo history imported
    into the store, compaction, retraining. The forgotten user has no event left in the store
    (only their tombstone) and is absent from the new model; the disliked item stays excluded
    by the new model itself; impressions are not in its training matrix."""
    disliked = _disliked_item(served)
    shown = _shown_items(served)
    store = InteractionStore(tmp_path / "store")
    import_interactions(
        store,
        demo_data.interactions,
        lambda: read_interactions(demo_data.interactions),
        file_sha256(demo_data.interactions),
    )
    if served.redis_url is None:
        FileLogIngester(served.event_log, store, batch_size=1000).run_once()
    else:
        client = redis.Redis.from_url(served.redis_url)
        RedisStreamIngester(client, event_stream_key("recsvc"), store, 1000).run_once()
    before = store.read()
    assert pc.sum(pc.equal(before.column("user_id"), FORGOTTEN)).as_py() > 2
    maintain_store(store, min_parts=1000, retention_days=0)  # the tombstone makes it rewrite
    table = store.read()
    kinds = table.filter(pc.equal(table.column("user_id"), FORGOTTEN)).column("event_type")
    assert kinds.to_pylist() == ["forget", "forget"]

    models = ModelStore(served.models)
    worker = TrainWorker(
        store,
        models,
        SMALL_TRAIN,
        SMALL_INDEX,
        RetrainPolicy(
            min_new_events=1,
            max_age_seconds=0,
            tolerance=1.0,  # never refused: this test is about what the model holds
            keep_versions=5,
            warm_start=False,
            warm_start_iterations=1,
        ),
    )
    version = worker.run_once(force=True)
    assert version is not None
    model = models.load(version, SEARCH)
    assert FORGOTTEN not in model.users and DISLIKER in model.users
    assert disliked in model.dislikes[DISLIKER]
    shown_row = model.users.row(SHOWN)
    assert shown_row is not None
    trained_on = {model.items.ids[i] for i in model.seen_items(shown_row)}
    assert not trained_on & set(shown)
    # The new model blocks the dislike by itself (no user state at all).
    alone = build_recommender(TEST_SETTINGS, model).recommend(
        RecommendQuery(DISLIKER, 100, exclude_seen=False), UserState()
    )
    assert disliked not in [item.item_id for item in alone.items]

    deadline = time.monotonic() + 30
    while stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version != version:
        assert time.monotonic() < deadline, "the server did not swap to the new model"
        time.sleep(0.2)
    assert disliked not in ids(recommend(stub, DISLIKER, exclude_seen=False, k=100))
    assert recommend(stub, FORGOTTEN).strategy == pb.STRATEGY_POPULAR


def _disliked_item(served: Served) -> str:
    return _logged_items(served, "dislike-")[0]


def _shown_items(served: Served) -> list[str]:
    return _logged_items(served, "shown-")


def _logged_items(served: Served, tag: str) -> list[str]:
    """Items of the events this module recorded under ``tag`` (their ids say it)."""
    prefix = tag + (DISLIKER if tag == "dislike-" else SHOWN) + "-"
    if served.redis_url is None:
        from recsvc.store.file_log import read_columns_from

        columns, _ = read_columns_from(served.event_log, 0, 100_000)
        event_ids = columns["event_id"]
    else:
        from recsvc.store.codec import interaction_from_json

        client = redis.Redis.from_url(served.redis_url)
        entries = client.xrange(event_stream_key("recsvc"))
        event_ids = [interaction_from_json(fields[b"event"]).event_id for _, fields in entries]
    found = [event_id[len(prefix) :] for event_id in event_ids if event_id.startswith(prefix)]
    assert found, f"no {tag} events logged"
    return found
