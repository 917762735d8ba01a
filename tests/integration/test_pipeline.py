"""Continuous learning: ingest and the train worker, end to end (their SIGKILL crash tests are
in tests/fault/test_crash_loops.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings, WorkerSettings
from recsvc.data.interaction_store import InteractionStore
from recsvc.testing import recsvc_command, redis_server, running_server, server_env
from tests.helpers import events, write_log
from workers.ingest import FileLogIngester, RedisStreamIngester
from workers.retrain import RetrainPolicy, TrainWorker


def test_file_ingest_is_incremental_and_idempotent(tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    store = InteractionStore(tmp_path / "store")
    write_log(log_path, events(250))
    ingester = FileLogIngester(log_path, store, batch_size=100)
    assert ingester.run_once() == 250
    assert ingester.run_once() == 0
    write_log(log_path, events(30, start=250))
    assert ingester.run_once() == 30
    table = store.read()
    assert table.num_rows == 280 == store.count()
    assert len(store.parts()) == 4


@pytest.mark.redis
def test_redis_ingest_acknowledges_after_writing_and_reclaims_pending(tmp_path: Path) -> None:
    import redis as redis_lib

    from recsvc.store.redis_backend import RedisEventLog, connect

    # A sync test: the ingesters under test are synchronous, as in the worker process, and the
    # asynchronous log only writes the events they read.
    with redis_server() as url:

        async def record() -> None:
            client = connect(url, 1.0, 1.0)
            await RedisEventLog(client, "recsvc", 600).append(events(120))
            await client.aclose()

        asyncio.run(record())
        client = redis_lib.Redis.from_url(url)
        stream = "recsvc:{ev}:stream"
        store = InteractionStore(tmp_path / "store")
        crashed = RedisStreamIngester(client, stream, store, batch_size=50, consumer="a")
        # A consumer that read a batch and died before writing it leaves it pending.
        client.xreadgroup("recsvc-ingest", "a", {stream: ">"}, count=50)
        survivor = RedisStreamIngester(
            client, stream, store, batch_size=50, consumer="b", reclaim_after_ms=0
        )
        assert survivor.run_once() == 120
        assert crashed.run_once() == 0
        assert client.xpending(stream, "recsvc-ingest")["pending"] == 0
        assert sorted(store.read().column("event_id").to_pylist()) == sorted(
            f"e{k}" for k in range(120)
        )


def test_train_worker_publishes_when_due_and_refuses_a_worse_model(
    tmp_path: Path, demo_data_path: Path
) -> None:
    log_path = tmp_path / "events.jsonl"
    write_log(log_path, events(300, users=40, items=60))
    store = InteractionStore(tmp_path / "store")
    FileLogIngester(log_path, store, 1000).run_once()
    models = ModelStore(tmp_path / "models")
    policy = RetrainPolicy.from_settings(
        WorkerSettings(retrain_min_new_events=100, retrain_tolerance=0.05, keep_versions=2)
    )
    worker = TrainWorker(
        store,
        models,
        TrainSettings(factors=8, iterations=3),
        IndexSettings(),
        policy,
        base_interactions=demo_data_path,
    )
    first = worker.run_once()
    assert first is not None and models.latest_version() == first
    manifest = models.read_manifest(first)
    assert manifest.metrics["protocol"] == "stratified-user" and manifest.num_users >= 600
    assert worker.run_once() is None  # nothing new since
    # The current model claims a far better metric: the next one must be refused.
    path = models.versions_dir / first / "manifest.json"
    data = json.loads(path.read_text())
    data["metrics"]["ndcg@10"] = 0.99
    path.write_text(json.dumps(data))
    assert worker.run_once(force=True) is None
    assert models.latest_version() == first
    data["metrics"]["ndcg@10"] = 0.0
    path.write_text(json.dumps(data))
    versions = [worker.run_once(force=True) for _ in range(3)]
    assert all(versions) and len(models.list_versions()) == 2


@pytest.mark.slow
def test_end_to_end_record_ingest_train_swap(
    model_store: Path, tmp_path: Path, demo_data_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_store, models)
    log_path = tmp_path / "events.jsonl"
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(log_path),
        RECSVC_SERVING__MODEL_POLL_SECONDS="0.2",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    with (
        running_server(["serve", "--model-store", str(models), "--port", "0"], env) as proc,
        grpc.insecure_channel(proc.target) as channel,
    ):
        stub = pb_grpc.RecommenderStub(channel)
        before = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        newcomers = [
            pb.Interaction(
                user_id=f"newcomer-{n}",
                item_id=f"i{(n * 7) % 800:05d}",
                event_type=pb.EVENT_TYPE_PURCHASE,
                event_id=f"n{n}",
            )
            for n in range(200)
        ]
        assert (
            stub.RecordInteractions(
                pb.RecordInteractionsRequest(interactions=newcomers), timeout=10
            ).accepted
            == 200
        )
        # The recipe of the current model (SMALL_TRAIN), which the holdout guard measures.
        worker_env = server_env(
            RECSVC_TRAIN__FACTORS="32",
            RECSVC_TRAIN__ITERATIONS="10",
            RECSVC_WORKERS__RETRAIN_MIN_NEW_EVENTS="100",
        )
        common = [
            "--model-store",
            str(models),
            "--interaction-store",
            str(tmp_path / "store"),
            "--once",
        ]
        ingest = subprocess.run(
            recsvc_command("worker", "ingest", "--event-log", str(log_path), *common),
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr
        history = subprocess.run(
            recsvc_command(
                "import",
                "--interactions",
                str(demo_data_path),
                "--interaction-store",
                str(tmp_path / "store"),
            ),
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert history.returncode == 0, history.stderr
        train = subprocess.run(
            recsvc_command("worker", "train", *common),
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert train.returncode == 0, train.stderr
        new_version = json.loads(train.stdout.splitlines()[-1])["result"]
        assert new_version
        deadline = time.monotonic() + 15
        while (
            info := stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        ).model_version != new_version:
            assert time.monotonic() < deadline, "the server did not swap to the new model"
            time.sleep(0.1)
        assert info.num_users == before.num_users + 200
        response = stub.Recommend(pb.RecommendRequest(user_id="newcomer-3", k=5), timeout=5)
        assert (
            response.strategy == pb.STRATEGY_PERSONALISED and response.model_version == new_version
        )


@pytest.mark.parametrize("kind", ["ingest", "train", "embed"])
def test_worker_help(kind: str) -> None:
    result = subprocess.run(
        recsvc_command("worker", kind, "--help"), capture_output=True, text=True
    )
    assert result.returncode == 0 and "--once" in result.stdout
