"""Workers SIGKILLed thirty times at random moments: no event lost or duplicated, nothing
partial ever visible (interaction store, model store, embedding table)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.data.interaction_store import InteractionStore
from recsvc.testing import ProductImages, recsvc_command, server_env
from tests.helpers import events, write_log
from workers.ingest import FileLogIngester

pytestmark = [pytest.mark.fault, pytest.mark.slow]


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
    store = ModelStore(models)
    # Kill times scale with this machine's speed: a whole run (start-up, one training, publish)
    # is timed first, so the kills land before, during and after publishing on any machine.
    started = time.monotonic()
    first = subprocess.run([*command, "--once"], env=env, capture_output=True, text=True)
    whole_run = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    published_before = set(store.list_versions())
    rng = random.Random(11)
    for _ in range(30):
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.3, 1.7) * whole_run)
        process.send_signal(signal.SIGKILL)
        process.wait()
        latest = store.latest_version()
        assert latest is not None
        store.verify(latest)  # LATEST always names a complete, verified version
        for version in store.list_versions():
            store.verify(version)  # nothing partial ever appears under versions/
    assert set(store.list_versions()) - published_before, "no killed run got to publish"
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
