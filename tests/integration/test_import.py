"""`recsvc import` and the train worker on the interaction store alone: history files become
the one source of training data, and the holdout guard runs even against a model that came from
`recsvc train` without --evaluate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings, WorkerSettings
from recsvc.data.interaction_files import read_interactions
from recsvc.data.interaction_store import InteractionStore, file_sha256, import_interactions
from recsvc.training.pipeline import train_from_files
from tests.conftest import SMALL_INDEX, SMALL_TRAIN
from tests.helpers import run_recsvc
from workers.retrain import RetrainPolicy, TrainWorker


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = run_recsvc(*args)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_import_twice_adds_nothing_the_second_time(tmp_path: Path, demo_data_path: Path) -> None:
    store = tmp_path / "store"
    first = run("import", "--interactions", str(demo_data_path), "--interaction-store", str(store))
    result = json.loads(first.stdout.splitlines()[-1])
    expected = read_interactions(demo_data_path).num_interactions
    assert result["events"] == expected and not result["skipped"]
    parts = InteractionStore(store).parts()
    again = run("import", "--interactions", str(demo_data_path), "--interaction-store", str(store))
    assert json.loads(again.stdout.splitlines()[-1])["skipped"] is True
    assert InteractionStore(store).parts() == parts
    assert InteractionStore(store).count() == expected == InteractionStore(store).read().num_rows
    # The store holds what `recsvc train` would have trained on: same pairs, weights, times.
    direct, stored = read_interactions(demo_data_path), InteractionStore(store).interactions()
    assert sorted(stored.user_ids) == sorted(direct.user_ids)
    assert stored.matrix.sum() == pytest.approx(direct.matrix.sum(), rel=1e-6)
    assert direct.timestamps is not None and stored.timestamps is not None
    assert stored.timestamps.max() == direct.timestamps.max()


def test_an_interrupted_import_resumes_where_it_stopped(
    tmp_path: Path, demo_data_path: Path
) -> None:
    store = InteractionStore(tmp_path / "store")
    digest = file_sha256(demo_data_path)

    def read() -> object:
        return read_interactions(demo_data_path)

    done = import_interactions(store, demo_data_path, read, digest, chunk_rows=1000)  # type: ignore[arg-type]
    assert done.parts_written == len(store.parts()) >= 3
    # As if the process had died after writing all parts but the last: no completion record.
    (store.root / "_imports" / f"{digest}.json").unlink()
    last = store.parts()[-1]
    last.unlink()
    resumed = import_interactions(store, demo_data_path, read, digest, chunk_rows=1000)  # type: ignore[arg-type]
    assert resumed.parts_written == 1 and last.exists()
    assert store.read().num_rows == done.events == store.count()


@pytest.mark.slow
def test_a_store_filled_only_by_import_trains_a_first_model(
    tmp_path: Path, demo_data_path: Path
) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    run("import", "--interactions", str(demo_data_path), "--interaction-store", str(store))
    common = ["--model-store", str(models), "--interaction-store", str(store), "--once"]
    done = run_recsvc(
        "worker",
        "train",
        *common,  # no --force: a first model is always due
        RECSVC_TRAIN__FACTORS="16",
        RECSVC_TRAIN__ITERATIONS="5",
    )
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout.splitlines()[-1])["result"]
    manifest = ModelStore(models).read_manifest(version)
    assert manifest.num_interactions == read_interactions(demo_data_path).num_interactions
    assert manifest.metrics["ndcg@10"] > 0


@pytest.mark.slow
def test_a_worse_candidate_is_refused_against_a_model_without_holdout_figures(
    tmp_path: Path, demo_data_path: Path
) -> None:
    models = ModelStore(tmp_path / "models")
    current = train_from_files(demo_data_path, models, SMALL_TRAIN, SMALL_INDEX, progress=False)
    assert "ndcg@10" not in models.read_manifest(current.version).metrics  # no --evaluate
    store = InteractionStore(tmp_path / "store")
    digest = file_sha256(demo_data_path)
    import_interactions(store, demo_data_path, lambda: read_interactions(demo_data_path), digest)
    policy = RetrainPolicy.from_settings(WorkerSettings(retrain_tolerance=0.05))

    def worker(train: TrainSettings) -> TrainWorker:
        return TrainWorker(store, models, train, IndexSettings(recall_sample=0), policy)

    worse = TrainSettings(factors=1, iterations=1, threads=2)
    assert worker(worse).run_once(force=True) is None
    assert models.latest_version() == current.version
    # The same recipe as the current model is not refused: the comparison is fair.
    same = worker(SMALL_TRAIN).run_once(force=True)
    assert same is not None and models.latest_version() == same
    metrics = models.read_manifest(same).metrics
    assert metrics["ndcg@10"] >= metrics["current_ndcg@10"] * (1 - policy.tolerance)
