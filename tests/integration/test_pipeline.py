"""Continuous learning: ingest (with SIGKILL crash tests) and the train worker, end to end."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.config import IndexSettings, TrainSettings, WorkerSettings
from recsvc.core.state import EventType, Interaction
from recsvc.data.interaction_store import InteractionStore
from recsvc.store.file_log import FileEventLog
from recsvc.testing import ProductImages, recsvc_command, redis_server, running_server, server_env
from workers.ingest import FileLogIngester, RedisStreamIngester
from workers.retrain import RetrainPolicy, TrainWorker


def events(n: int, start: int = 0, users: int = 50, items: int = 80) -> list[Interaction]:
    rng = random.Random(start)
    return [
        Interaction(
            f"u{rng.randrange(users)}",
            f"i{rng.randrange(items)}",
            EventType.VIEW,
            1.0,
            1_767_225_600_000 + k,
            f"e{k}",
        )
        for k in range(start, start + n)
    ]


def write_log(path: Path, batch: list[Interaction]) -> None:
    asyncio.run(FileEventLog(path).append(batch))


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


def test_ingest_survives_thirty_sigkills_without_loss_or_duplicates(tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    write_log(log_path, events(4000))
    store_dir = tmp_path / "store"
    env = server_env(RECSVC_WORKERS__BATCH_SIZE="25", RECSVC_WORKERS__INTERVAL_SECONDS="0.05")
    command = recsvc_command(
        "worker", "ingest", "--event-log", str(log_path), "--interaction-store", str(store_dir)
    )
    rng = random.Random(5)
    kills = 0
    for _ in range(30):
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.6, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    done = subprocess.run(
        [*command, "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    store = InteractionStore(store_dir)
    ids = store.read().column("event_id").to_pylist()
    assert kills == 30
    assert sorted(ids, key=lambda e: int(e[1:])) == [f"e{k}" for k in range(4000)]
    assert store.count() == 4000, "a part was written twice"
    # Leftovers of killed writes are hidden temporary files, never parts.
    assert all(p.name.startswith(".") for p in store_dir.rglob("*.tmp"))


def test_redis_ingest_acknowledges_after_writing_and_reclaims_pending(tmp_path: Path) -> None:
    import redis as redis_lib

    from recsvc.store.redis_backend import RedisEventLog, connect

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
        worker_env = server_env(
            RECSVC_TRAIN__FACTORS="16",
            RECSVC_TRAIN__ITERATIONS="5",
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
        train = subprocess.run(
            recsvc_command("worker", "train", "--base", str(demo_data_path), *common),
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


def test_train_worker_killed_thirty_times_never_exposes_a_partial_model(
    tmp_path: Path, demo_data_path: Path
) -> None:
    log_path = tmp_path / "events.jsonl"
    write_log(log_path, events(200))
    store_dir = tmp_path / "store"
    FileLogIngester(log_path, InteractionStore(store_dir), 1000).run_once()
    models = tmp_path / "models"
    env = server_env(
        RECSVC_TRAIN__FACTORS="8",
        RECSVC_TRAIN__ITERATIONS="2",
        RECSVC_WORKERS__INTERVAL_SECONDS="0.05",
        RECSVC_WORKERS__KEEP_VERSIONS="50",
    )
    command = recsvc_command(
        "worker",
        "train",
        "--force",
        "--base",
        str(demo_data_path),
        "--model-store",
        str(models),
        "--interaction-store",
        str(store_dir),
    )
    rng = random.Random(11)
    store = ModelStore(models)
    for _ in range(30):
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.8, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        latest = store.latest_version()
        if latest is not None:
            store.verify(latest)  # LATEST always names a complete, verified version
        for version in store.list_versions():
            store.verify(version)  # nothing partial ever appears under versions/
    assert store.list_versions(), "no version was ever published in 30 runs"
    store.collect_garbage(keep=50)
    assert list((models / ".staging").iterdir()) == []


def test_embed_worker_killed_thirty_times_never_leaves_a_torn_table(
    tmp_path: Path, products: ProductImages
) -> None:
    out = tmp_path / "embeddings.parquet"
    command = recsvc_command(
        "worker", "embed", "--once", "--catalogue", str(products.catalogue), "--out", str(out)
    )
    env = server_env(RECSVC_IMAGES__LOADER_WORKERS="0", RECSVC_IMAGES__BATCH_SIZE="4")
    rng = random.Random(5)
    for _ in range(30):
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.3, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if out.exists():
            table = EmbeddingTable.load(out)  # always a complete, readable table
            assert len(set(table.item_ids)) == len(table.item_ids)
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    table = EmbeddingTable.load(out)
    assert sorted(table.item_ids) == sorted(products.ids)  # every item, exactly once
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
