"""Hyper-parameter search with optuna, on a validation split carved from the training part.

The data is split by the evaluation protocol (seed ``seed``) into train and test; the train
part is split again by the same protocol (seed ``seed + 1``) into inner-train and validation.
Trials fit on inner-train and are scored on validation only. The best parameters are then fit
on the whole train part and measured on the test part exactly once.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import optuna

from recsvc.config import TrainSettings
from recsvc.errors import ConfigError, DataError
from recsvc.evaluation.holdout import Protocol, Split, evaluate_model, split_interactions

log = logging.getLogger(__name__)

TUNABLE = (
    "algorithm",
    "factors",
    "iterations",
    "regularization",
    "alpha",
    "weighting",
    "bm25_k1",
    "bm25_b",
    "learning_rate",
)


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, base: TrainSettings) -> TrainSettings:
    """One point of the search space for ``base.algorithm``."""
    values: dict[str, Any] = {
        "factors": trial.suggest_int("factors", 8, 256, log=True),
        "regularization": trial.suggest_float("regularization", 1e-2, 100.0, log=True),
        "weighting": trial.suggest_categorical("weighting", ["none", "binary", "bm25"]),
    }
    if values["weighting"] == "bm25":
        values["bm25_k1"] = trial.suggest_float("bm25_k1", 1.0, 1000.0, log=True)
        values["bm25_b"] = trial.suggest_float("bm25_b", 0.0, 1.0)
    if base.algorithm == "als":
        values["alpha"] = trial.suggest_float("alpha", 0.5, 50.0, log=True)
        values["iterations"] = trial.suggest_int("iterations", 10, 30)
    else:
        values["learning_rate"] = trial.suggest_float("learning_rate", 1e-3, 0.3, log=True)
        values["iterations"] = trial.suggest_int("iterations", 20, 300, log=True)
    return base.model_copy(update=values)


def tune(
    split: Split,
    base: TrainSettings,
    protocol: Protocol,
    k: int,
    trials: int,
    seed: int,
    metric: str = "ndcg",
    timeout: float | None = None,
    validation_ratio: float = 0.8,
    last_n: int = 1,
    folds: int = 3,
) -> dict[str, Any]:
    """Search on a validation split of ``split.train``; test the winner once on ``split.test``.

    ``validation_ratio`` of the train part stays in inner-train: a large share keeps the
    inner-train close in size to the final training data, so the parameters found transfer
    (with 0.75 the search favoured too few factors for the full data). Each trial is scored
    on ``folds`` validation splits drawn with different seeds.
    """
    inner = [
        split_interactions(
            split.train, split.train_timestamps, protocol, validation_ratio, seed + 1 + f, last_n
        )
        for f in range(folds)
    ]
    key = f"{metric}@{k}"
    if metric not in ("ndcg", "precision", "recall", "map"):
        raise ConfigError(f"metric: choose ndcg, precision, recall or map, not {metric!r}")

    def objective(trial: optuna.Trial) -> float:
        # The mean over several validation splits: one split is too noisy to rank close trials.
        settings = suggest(trial, base)
        value = sum(float(evaluate_model(fold, settings, k)[key]) for fold in inner) / folds
        return value if math.isfinite(value) else 0.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=30
        ),
    )
    study.optimize(objective, n_trials=trials, timeout=timeout, show_progress_bar=True)
    if not study.trials or study.best_trial is None:
        raise DataError("tuning finished no trial")
    best = suggest(optuna.trial.FixedTrial(study.best_params), base)
    test = evaluate_model(split, best, k)
    return {
        "params": {name: getattr(best, name) for name in TUNABLE},
        "tuning": {
            "protocol": protocol,
            "k": k,
            "metric": key,
            "validation": round(study.best_value, 6),
            "trials": len(study.trials),
            "seed": seed,
            "test": test,
        },
    }


def write_params(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


def read_params(path: Path) -> dict[str, Any]:
    """Training parameters from a file written by ``recsvc tune`` (or a plain JSON object)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--params {path}: {exc}") from exc
    params = content.get("params", content) if isinstance(content, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"--params {path}: expected a JSON object of training parameters")
    unknown = set(params) - set(TrainSettings.model_fields)
    if unknown:
        raise ConfigError(f"--params {path}: unknown parameters {sorted(unknown)}")
    return params
