"""Warm-started ALS: a few sweeps from the previous factors recover the full model's quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings, WorkerSettings
from recsvc.data.demo import DemoData
from recsvc.data.interaction_files import read_interactions
from recsvc.data.interaction_store import InteractionStore
from recsvc.errors import ConfigError
from recsvc.evaluation.holdout import factor_scorer, ranking_metrics, split_interactions
from recsvc.fitting.factors import fit_factors
from workers.retrain import RetrainPolicy, TrainWorker

FULL = TrainSettings(factors=16, iterations=15, threads=2)


def test_a_warm_start_refines_instead_of_starting_over(demo_data: DemoData) -> None:
    data = read_interactions(demo_data.interactions)
    split = split_interactions(data.matrix, data.timestamps, "stratified-user")

    def ndcg(settings: TrainSettings, initial: object = None) -> tuple[float, object]:
        fitted = fit_factors(split.train, settings, progress=False, initial=initial)  # type: ignore[arg-type]
        scorer = factor_scorer(fitted.user_factors, fitted.item_factors)
        return ranking_metrics(scorer, split, 10)["ndcg@10"], fitted

    full, fitted = ndcg(FULL)
    one_sweep = FULL.model_copy(update={"iterations": 1})
    cold, _ = ndcg(one_sweep)
    warm, _ = ndcg(one_sweep, (fitted.user_factors, fitted.item_factors))  # type: ignore[attr-defined]
    assert warm > cold + 0.02
    assert warm >= 0.95 * full
    with pytest.raises(ValueError, match="do not fit"):
        fit_factors(
            split.train,
            FULL,
            progress=False,
            initial=(fitted.user_factors[:5], fitted.item_factors),
        )  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="ALS only"):
        fit_factors(
            split.train,
            FULL.model_copy(update={"algorithm": "bpr"}),
            progress=False,
            initial=(fitted.user_factors, fitted.item_factors),  # type: ignore[attr-defined]
        )


def test_train_worker_warm_starts_from_the_current_model(
    tmp_path: Path, demo_data: DemoData
) -> None:
    models = ModelStore(tmp_path / "models")
    policy = RetrainPolicy.from_settings(
        WorkerSettings(retrain_min_new_events=1, warm_start=True, warm_start_iterations=2)
    )
    worker = TrainWorker(
        InteractionStore(tmp_path / "events"),
        models,
        FULL,
        IndexSettings(recall_sample=50),
        policy,
        base_interactions=demo_data.interactions,
    )
    first = worker.run_once(force=True)
    assert first is not None
    assert "warm_start_from" not in models.read_manifest(first).metrics
    second = worker.run_once(force=True)
    assert second is not None and second != first
    manifest = models.read_manifest(second)
    assert manifest.metrics["warm_start_from"] == first
    assert manifest.parameters["iterations"] == 2
    assert json.loads(manifest.model_dump_json())["num_users"] == 600
