"""Real-time serving over gRPC, embedded (in-process + file log) and with a real Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.store.clients import sync_client
from recsvc.store.file_log import read_columns_from
from recsvc.testing import free_port, recsvc_command, redis_server, running_server, server_env
from workers.ingest import logged_stream_keys

NOW_MS = int(time.time() * 1000)


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


def event(user: str, item: str, n: str, kind: int = pb.EVENT_TYPE_PURCHASE) -> pb.Interaction:
    return pb.Interaction(
        user_id=user,
        item_id=item,
        event_type=kind,
        event_id=f"{user}-{item}-{n}",
        timestamp_ms=NOW_MS,
    )


@pytest.fixture(
    scope="module",
    params=[
        "embedded",
        pytest.param("redis", marks=pytest.mark.redis),
        # A 3-master Redis Cluster, the event log in 3 partitions (one per master).
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.slow]),
    ],
)
def live(
    request: pytest.FixtureRequest, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path | None]]:
    """(mode, target, event log path or None): a server with user state, per backend."""
    store = tmp_path_factory.mktemp("live-store")
    shutil.copytree(model_store, store, dirs_exist_ok=True)
    log_path = store / "events-live.jsonl"
    env = {
        "RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS": "0",
        "RECSVC_SERVER__DRAIN_SECONDS": "0",
        "RECSVC_STORE__EVENT_LOG_PATH": str(log_path),
        "RECSVC_SERVING__MODEL_POLL_SECONDS": "0",
    }
    if request.param == "embedded":
        with running_server(
            ["serve", "--model-store", str(store), "--port", "0"], server_env(**env)
        ) as proc:
            yield "embedded", proc.target, log_path
    elif request.param == "redis":
        with (
            redis_server() as url,
            running_server(
                ["serve", "--model-store", str(store), "--port", "0"],
                server_env(RECSVC_REDIS_URL=url, **env),
            ) as proc,
        ):
            yield url, proc.target, None
    else:
        url = request.getfixturevalue("redis_cluster_server_url")
        with sync_client(url) as client:
            client.flushall()
        with running_server(
            ["serve", "--model-store", str(store), "--port", "0"],
            server_env(RECSVC_REDIS_URL=url, RECSVC_STORE__EVENT_PARTITIONS="3", **env),
        ) as proc:
            yield url, proc.target, None


@pytest.fixture(scope="module")
def stub(live: tuple[str, str, Path | None]) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(live[1]) as channel:
        yield pb_grpc.RecommenderStub(channel)


def recommend(stub: pb_grpc.RecommenderStub, user: str, k: int = 10) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=10)


def test_next_recommend_reflects_recorded_interactions(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user = model.users.ids[20]
    before = [i.item_id for i in recommend(stub, user).items]
    bought = before[:3]
    response = stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[event(user, i, "a") for i in bought]), timeout=10
    )
    assert response.accepted == 3 and response.duplicates == 0
    after = [i.item_id for i in recommend(stub, user).items]
    assert not set(bought) & set(after), "bought items are now history and excluded"
    assert len(after) == 10


def test_concurrent_recommend_calls_answer_as_sequential_ones(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    """Calls that arrive together are answered in micro-batches (one store round trip, one
    index search); each must still get its own answer, the same as when asked alone."""
    users = [model.users.ids[n] for n in range(100, 160)] + ["somebody-new"]
    requests = [pb.RecommendRequest(user_id=u, k=7) for u in users]
    alone = [stub.Recommend(r, timeout=10) for r in requests]
    futures = [stub.Recommend.future(r, timeout=10) for r in requests * 3]
    together = [f.result() for f in futures]
    for n, response in enumerate(together):
        expected = alone[n % len(requests)]
        assert [i.item_id for i in response.items] == [i.item_id for i in expected.items]
        assert response.strategy == expected.strategy


def test_a_new_user_gets_personal_results_after_interacting(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user = f"brand-new-{time.monotonic_ns()}"
    assert recommend(stub, user).strategy == pb.STRATEGY_POPULAR
    toys = [i for i in model.items.ids if category_of(model, i) == "toys"][:6]
    stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[event(user, i, "b") for i in toys]), timeout=10
    )
    response = recommend(stub, user)
    assert response.strategy == pb.STRATEGY_PERSONALISED
    ids = [i.item_id for i in response.items]
    assert not set(ids) & set(toys)
    assert sum(category_of(model, i) == "toys" for i in ids) >= 6


def test_retries_with_the_same_event_id_are_counted_once(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    request = pb.RecordInteractionsRequest(
        interactions=[
            event("retry-user", model.items.ids[0], "c"),
            event("retry-user", model.items.ids[1], "c"),
        ]
    )
    first = stub.RecordInteractions(request, timeout=10)
    second = stub.RecordInteractions(request, timeout=10)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (second.accepted, second.duplicates) == (0, 2)


def test_recorded_events_are_in_the_durable_log(
    stub: pb_grpc.RecommenderStub, live: tuple[str, str, Path | None], model: Model
) -> None:
    item = model.items.ids[2]
    stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[event("log-user", item, "d")]), timeout=10
    )
    mode, _, log_path = live
    if log_path is not None:
        logged, _ = read_columns_from(log_path, 0, sys.maxsize)  # as the ingest worker reads it
        lines = [
            {"event_id": event_id, "item_id": item_id}
            for event_id, item_id in zip(logged["event_id"], logged["item_id"], strict=True)
        ]
    else:
        client = sync_client(mode)
        lines = [
            json.loads(fields[b"event"])
            for stream in logged_stream_keys(client, "recsvc")
            for _, fields in client.xrange(stream)
        ]
    assert {"event_id": "log-user-" + item + "-d", "item_id": item}.items() <= next(
        e for e in lines if e["event_id"] == f"log-user-{item}-d"
    ).items()


@pytest.mark.parametrize(
    ("interactions", "field"),
    [
        ([], "interactions"),
        (
            [pb.Interaction(user_id="u", item_id="i", timestamp_ms=NOW_MS)],
            "interactions[0].event_id",
        ),
        ([pb.Interaction(user_id="", item_id="i", event_id="e")], "interactions[0].user_id"),
        (
            [
                pb.Interaction(user_id="u", item_id="i", event_id="e1"),
                pb.Interaction(user_id="u", item_id="i", event_id="e2", weight=-1),
            ],
            "interactions[1].weight",
        ),
        (
            [pb.Interaction(user_id="u", item_id="i", event_id="e", timestamp_ms=1_700_000_000)],
            "interactions[0].timestamp_ms",
        ),
        (
            [pb.Interaction(user_id="u", item_id="i", event_id="e", event_type=99)],
            "interactions[0].event_type",
        ),
        (
            [pb.Interaction(user_id="u", item_id="i", event_id="x" * 200)],
            "interactions[0].event_id",
        ),
    ],
)
def test_bad_interactions_are_rejected_by_field(
    stub: pb_grpc.RecommenderStub, interactions: list[pb.Interaction], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)


def test_diversity_is_validated_and_changes_the_list(
    stub: pb_grpc.RecommenderStub, model: Model
) -> None:
    user = model.users.ids[30]
    plain = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
    diverse = stub.Recommend(pb.RecommendRequest(user_id=user, k=10, diversity=0.9), timeout=10)
    assert [i.item_id for i in plain.items] != [i.item_id for i in diverse.items]
    categories = lambda r: len({category_of(model, i.item_id) for i in r.items})  # noqa: E731
    assert categories(diverse) >= categories(plain)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(pb.RecommendRequest(user_id=user, k=10, diversity=1.5), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("diversity")


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.redis
def test_redis_outage_degrades_and_recovers(model_store: Path, model: Model) -> None:
    port = free_port()
    user = model.users.ids[7]
    env = server_env(
        RECSVC_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as proc, grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status(name: str) -> int:
            request = health_pb2.HealthCheckRequest(service=name)
            return int(health.Check(request, timeout=5).status)

        def record(n: str) -> pb.RecordInteractionsResponse:
            request = pb.RecordInteractionsRequest(interactions=[event(user, "i00001", n)])
            return stub.RecordInteractions(request, timeout=5)

        with redis_server(port):
            assert record("before").accepted == 1
            assert status("store") == health_pb2.HealthCheckResponse.SERVING
        # Redis is gone: recommendations still answer; recording cannot be durable.
        for _ in range(5):
            response = stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5)
            assert len(response.items) == 5 and response.strategy == pb.STRATEGY_PERSONALISED
        assert status("") == health_pb2.HealthCheckResponse.SERVING
        assert status("store") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            record("during")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # Redis is back: normal service within 5 s, with no traffic needed to notice.
        with redis_server(port):
            deadline = time.monotonic() + 5
            while status("store") != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "store health did not recover within 5 s"
                time.sleep(0.2)
            assert record("after").accepted == 1


@pytest.mark.fault
@pytest.mark.slow
def test_hot_swap_and_rejection_of_a_corrupted_version(
    model_store: Path, tmp_path: Path, demo_data_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    metrics_port = free_port()
    env = server_env(
        RECSVC_SERVING__MODEL_POLL_SECONDS="0.2",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVER__METRICS_PORT=str(metrics_port),
    )
    with (
        running_server(["serve", "--model-store", str(store), "--port", "0"], env) as proc,
        grpc.insecure_channel(proc.target) as channel,
    ):
        stub = pb_grpc.RecommenderStub(channel)
        old = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
        subprocess.run(
            recsvc_command(
                "train",
                "--interactions",
                str(demo_data_path),
                "--out",
                str(store),
                "--factors",
                "8",
                "--iterations",
                "3",
                "--no-progress",
            ),
            env=server_env(),
            check=True,
            capture_output=True,
            timeout=120,
        )
        new = (store / "LATEST").read_text().strip()
        _wait_for_version(stub, new)
        assert new != old
        # A damaged version pointed at by LATEST is rejected; the current model keeps serving.
        damaged = store / "versions" / "v99999999-000000-000000"
        shutil.copytree(store / "versions" / new, damaged)
        factors = damaged / "item_factors.npy"
        factors.write_bytes(factors.read_bytes()[:-16])
        (store / "LATEST").write_text(damaged.name + "\n")
        time.sleep(1.0)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version == new
        assert len(stub.Recommend(pb.RecommendRequest(user_id="u00001", k=3), timeout=5).items) == 3
        page = _metrics_page(metrics_port)
        assert 'recsvc_rpc_seconds_count{code="OK",method="Recommend"}' in page
        assert "recsvc_model_swaps_total 1.0" in page
        assert "recsvc_model_rejections_total 1.0" in page
        assert f'recsvc_model_info{{algorithm="als",version="{new}"}} 1.0' in page
        # Back to the first version: the second swap finds the models swapped out before
        # gone (none kept alive by the server), so it collects no more than the new model.
        (store / "LATEST").write_text(old + "\n")
        _wait_for_version(stub, old)
        page = _metrics_page(metrics_port)
        assert "recsvc_model_swaps_total 2.0" in page
        assert "recsvc_model_swap_full_collections_total 0.0" in page


def _wait_for_version(stub: pb_grpc.RecommenderStub, version: str) -> None:
    """Call until the server answers with ``version`` (at most 10 s)."""
    deadline = time.monotonic() + 10
    while stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version != version:
        assert time.monotonic() < deadline, f"model {version} not swapped in"
        stub.Recommend(pb.RecommendRequest(user_id="u00001", k=3), timeout=5)
        time.sleep(0.1)


def _metrics_page(port: int) -> str:
    page: bytes = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return page.decode()
