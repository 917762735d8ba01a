"""Workers SIGKILLed thirty times at random moments: no event lost or duplicated, nothing
partial ever visible (interaction store, model store, embedding table).

The workers run in children of a fork server (tests.helpers.ForkServer), which has done the
imports once: each child is a real worker process, and the kills land in its work rather than
in seconds of start-up. Kill times scale with a run timed first on this machine, so that they
land before, during and after the writes on a fast machine and a slow one alike. The two
moments of milliseconds that random kills seldom reach (between an ingested part and its
checkpoint; inside an embedding table's write) are also tested on their own, for certain.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.data.interaction_store import InteractionStore
from recsvc.testing import jpeg_bytes, make_product_images, product_picture, server_env
from tests.helpers import ROOT, ForkServer, events, write_log
from workers.ingest import CHECKPOINT, FileLogIngester

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def kill(workers: ForkServer, pid: int) -> bool:
    """SIGKILL the child ``pid``; whether that cut it short (it had not ended already)."""
    os.kill(pid, signal.SIGKILL)
    status = workers.wait(pid)
    assert status in (0, -signal.SIGKILL), workers.output.read_text()[-2000:]
    return status == -signal.SIGKILL


def timed(workers: ForkServer, *args: str) -> float:
    """Seconds ``recsvc ARGS`` takes in a child of ``workers``, run to the end."""
    started = time.monotonic()
    assert workers.run(*args) == 0, workers.output.read_text()[-2000:]
    return time.monotonic() - started


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ingest_survives_thirty_sigkills_without_loss_or_duplicates(tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    store_dir = tmp_path / "store"
    arriving = events(4000)
    chunks = [arriving[run * 4000 // 31 : (run + 1) * 4000 // 31] for run in range(31)]
    env = server_env(
        RECSVC_WORKERS__BATCH_SIZE="2",
        RECSVC_WORKERS__INTERVAL_SECONDS="0.05",
        # Merging parts drops repeated events: off, so that a part written twice shows.
        RECSVC_WORKERS__STORE_COMPACT_MIN_PARTS="100000",
    )
    args = ("worker", "ingest", "--event-log", str(log_path), "--interaction-store", str(store_dir))
    rng = random.Random(5)
    killed_behind = 0
    with ForkServer(env, tmp_path / "worker.log", ("workers.ingest",)) as workers:
        # Events keep arriving between runs, one request at a time as in service, so that
        # each run has parts (of two events) to write when the kill comes.
        write_log(log_path, chunks[0], per_request=1)
        one_chunk = timed(workers, *args, "--once")
        arrived = len(chunks[0])
        for chunk in chunks[1:]:
            write_log(log_path, chunk, per_request=1)
            arrived += len(chunk)
            pid = workers.start(*args)
            time.sleep(rng.uniform(0.2, 1.5) * one_chunk)
            kill(workers, pid)
            killed_behind += InteractionStore(store_dir).count() < arrived
        assert workers.run(*args, "--once") == 0
    store = InteractionStore(store_dir)
    ids = store.read().column("event_id").to_pylist()
    assert sorted(ids, key=lambda e: int(e[1:])) == [f"e{k}" for k in range(4000)]
    assert store.count() == 4000, "a part was written twice"
    assert killed_behind, "every kill came after its run had caught up: nothing was cut short"
    # Leftovers of killed writes are hidden temporary files, never parts.
    assert all(p.name.startswith(".") for p in store_dir.rglob("*.tmp"))


def test_a_kill_between_a_part_and_its_checkpoint_writes_the_part_once(tmp_path: Path) -> None:
    """The one moment of the ingest loop where a kill could duplicate events, made certain:
    the last part is durable, its checkpoint is not (rewound as the kill would leave it)."""
    log_path = tmp_path / "events.jsonl"
    write_log(log_path, events(10), per_request=1)
    store = InteractionStore(tmp_path / "store")
    assert FileLogIngester(log_path, store, 4).run_once() == 10
    last = store.parts()[-1]
    first_offset = int(last.stem.split("-")[1])
    (store.root / CHECKPOINT).write_text(json.dumps({"offset": first_offset}))
    assert FileLogIngester(log_path, store, 4).run_once() == 0
    assert store.count() == 10 and store.parts()[-1] == last


def test_train_worker_killed_thirty_times_never_exposes_a_partial_model(tmp_path: Path) -> None:
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
    args = (
        *("worker", "train", "--force"),
        *("--model-store", str(models), "--interaction-store", str(store_dir)),
    )
    store = ModelStore(models)
    rng = random.Random(11)
    with ForkServer(env, tmp_path / "worker.log", ("workers.retrain",)) as workers:
        # A whole run (one training, publish) timed first; it also puts a LATEST in place.
        whole_run = timed(workers, *args, "--once")
        published_before = set(store.list_versions())
        for _ in range(30):
            pid = workers.start(*args)
            time.sleep(rng.uniform(0.3, 1.7) * whole_run)
            kill(workers, pid)
            latest = store.latest_version()
            assert latest is not None
            store.verify(latest)  # LATEST always names a complete, verified version
            for version in store.list_versions():
                store.verify(version)  # nothing partial ever appears under versions/
    assert set(store.list_versions()) - published_before, "no killed run got to publish"
    store.collect_garbage(keep=50)
    assert list((models / ".staging").iterdir()) == []


def test_embed_worker_killed_thirty_times_never_leaves_a_torn_table(tmp_path: Path) -> None:
    products = make_product_images(tmp_path / "products")
    out = tmp_path / "out" / "embeddings.parquet"
    out.parent.mkdir()
    args = ("worker", "embed", "--once", "--catalogue", str(products.catalogue), "--out", str(out))
    env = server_env(RECSVC_IMAGES__LOADER_WORKERS="0", RECSVC_IMAGES__BATCH_SIZE="4")
    rng = random.Random(5)

    def repaint(count: int) -> None:
        """New photos for ``count`` items: the next run embeds them again."""
        for item_id in rng.sample(products.ids, count):
            picture = product_picture(products.kinds[item_id], rng)
            (products.directory / f"{item_id}.jpg").write_bytes(jpeg_bytes(picture))

    preload = ("recsvc.vision.embedder", "workers.embed")
    with ForkServer(env, tmp_path / "worker.log", preload) as workers:
        timed(workers, *args)  # the whole catalogue, once
        repaint(12)
        a_run = timed(workers, *args)  # what each run below has to do: 12 photos, then write
        cut_short = 0
        for _ in range(30):
            repaint(12)
            pid = workers.start(*args)
            time.sleep(rng.uniform(0.2, 1.3) * a_run)
            cut_short += kill(workers, pid)
            table = EmbeddingTable.load(out)  # always a complete, readable table
            assert sorted(table.item_ids) == sorted(products.ids)
        assert workers.run(*args) == 0
    assert cut_short, "every run had ended before its kill"
    table = EmbeddingTable.load(out)
    assert sorted(table.item_ids) == sorted(products.ids)  # every item, exactly once
    photos = {i: sha256_of(products.directory / f"{i}.jpg") for i in products.ids}
    assert dict(zip(table.item_ids, table.sha256, strict=True)) == photos  # the latest photos
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


# A child that saves the table it reads, and is SIGKILLed half-way through writing it.
_KILLED_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
import pyarrow.parquet as pq
from recsvc.catalogue.embedding_table import EmbeddingTable

def half_a_table(table, where, **options):
    Path(where).write_bytes(b"PAR1 half a table")
    os.kill(os.getpid(), signal.SIGKILL)

pq.write_table = half_a_table
EmbeddingTable.load(Path(sys.argv[1])).save(Path(sys.argv[1]))
"""


def test_a_kill_in_the_middle_of_a_table_write_leaves_the_old_table(
    tmp_path: Path, embedding_table: Path
) -> None:
    """The moment the embed loop's random kills seldom reach, made certain."""
    target = tmp_path / embedding_table.name
    shutil.copy(embedding_table, target)
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_SAVING, str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    before, after = EmbeddingTable.load(embedding_table), EmbeddingTable.load(target)
    assert after.item_ids == before.item_ids and (after.vectors == before.vectors).all()
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(name.startswith(".") for name in leftovers)  # hidden, not data
