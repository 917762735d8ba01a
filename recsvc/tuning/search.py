"""Hyper-parameter search with optuna, on validation splits carved from the training part.

The data is split by the evaluation protocol (seed ``seed``) into train and test; the train
part is split again by the same protocol (seeds ``seed + 1`` ...) into inner-train and
validation. Trials fit on inner-train and are scored on validation only. The best parameters
are then fit on the whole train part and measured on the test part exactly once.

A trial that raises (NaN factors, out of memory) or scores NaN is recorded as failed and the
search goes on. With ``out``, trials are kept in a journal next to it (see
:mod:`recsvc.tuning.storage`): the same search started again resumes from them, and ``out``
holds the best parameters so far after every completed trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from recsvc.config import TrainSettings
from recsvc.durable import replace_bytes_atomically
from recsvc.errors import ConfigError, DataError
from recsvc.evaluation.holdout import Protocol, Split, evaluate_model, split_interactions
from recsvc.tuning.space import RANGES, check_pins, recipe, suggest
from recsvc.tuning.storage import fail_interrupted_trials, journal_path, open_journal

log = logging.getLogger(__name__)

METRICS = ("ndcg", "precision", "recall", "map")
# With no trial completed, this many failures in a row stop the search: the cause is then
# rarely the parameters (bad data, a broken install), and the first error says what it is.
FAILURES_BEFORE_GIVING_UP = 10
STARTUP_TRIALS = 20


class TrialFailed(Exception):
    """A trial that finished without a usable figure."""


@dataclass(frozen=True)
class SearchCounts:
    """Trials of a search so far: completed, failed (raised or scored NaN), interrupted (left
    running by a killed or interrupted run), and how many a previous run had finished."""

    completed: int
    failed: int
    interrupted: int
    resumed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "resumed": self.resumed,
        }


def count_trials(study: optuna.Study, resumed: int = 0) -> SearchCounts:
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    errors = sum(1 for t in failed if "error" in t.user_attrs)
    return SearchCounts(
        completed=sum(1 for t in trials if t.state == TrialState.COMPLETE),
        failed=errors,
        interrupted=len(failed) - errors,
        resumed=resumed,
    )


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
    pinned: Mapping[str, Any] | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search on validation splits of ``split.train``; test the winner once on ``split.test``.

    ``validation_ratio`` of the train part stays in inner-train: a large share keeps the
    inner-train close in size to the final training data, so the parameters found transfer
    (with 0.75 the search favoured too few factors for the full data). Each trial is scored
    on ``folds`` validation splits drawn with different seeds. ``pinned``: parameters kept
    as given in every trial. ``trials``: how many trials the search runs in all, counting
    those a resumed run finished before.
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric: choose ndcg, precision, recall or map, not {metric!r}")
    if trials < 1:
        raise ConfigError(f"--trials: at least 1, not {trials}")
    pinned = dict(pinned or {})
    check_pins(pinned, base.algorithm)
    key = f"{metric}@{k}"
    inner = [
        split_interactions(
            split.train, split.train_timestamps, protocol, validation_ratio, seed + 1 + f, last_n
        )
        for f in range(folds)
    ]
    identity = {
        "data": _digest(split),
        "protocol": protocol,
        "k": k,
        "metric": metric,
        "seed": seed,
        "folds": folds,
        "validation_ratio": validation_ratio,
        "last_n": last_n,
        "algorithm": base.algorithm,
        "pinned": pinned,
        "ranges": RANGES,
    }
    if base.engine != "implicit":  # implicit's study names stay those of earlier searches
        identity["engine"] = base.engine
    study_name = (
        "recsvc-tune-"
        + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
    )

    def settings_of(trial: FrozenTrial) -> TrainSettings:
        return suggest(optuna.trial.FixedTrial(trial.params), base, pinned)

    def summary(study: optuna.Study, counts: SearchCounts) -> dict[str, Any]:
        best = study.best_trial
        return {
            "params": recipe(settings_of(best)),
            "tuning": {
                "protocol": protocol,
                "k": k,
                "metric": key,
                "validation": round(float(best.value or 0.0), 6),
                "validation_means": (
                    f"mean {key} over {folds} validation splits of the training part "
                    f"({validation_ratio:.0%} inner-train, {1 - validation_ratio:.0%} "
                    "validation, by the same protocol); below the test figure because each "
                    "trial fits on less data and each user has fewer held-out items to find"
                ),
                "trials": counts.completed + counts.failed,
                "trials_detail": counts.as_dict(),
                "pinned": pinned,
                "seed": seed,
                "study": study_name,
                "storage": str(journal_path(out)) if out is not None else None,
            },
        }

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial, base, pinned)
        try:
            # The mean over several validation splits: one is too noisy to rank close trials.
            value = sum(float(evaluate_model(fold, settings, k)[key]) for fold in inner) / folds
            if not math.isfinite(value):
                raise TrialFailed(f"validation {key} is {value}")
        except Exception as exc:  # MemoryError and implicit's ModelFitError included
            message = f"{type(exc).__name__}: {exc}"[:500]
            trial.set_user_attr("error", message)
            log.warning("tune: trial %d failed (%s); the search goes on", trial.number, message)
            raise
        return value

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are logged above, once
    with _storage(out) as storage:
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction="maximize", load_if_exists=True
        )
        fail_interrupted_trials(study)
        before = count_trials(study)
        resumed = before.completed + before.failed
        if resumed or before.interrupted:
            log.info(
                "tune: resuming %s: %d trials completed, %d failed, %d interrupted",
                study_name,
                before.completed,
                before.failed,
                before.interrupted,
            )
        # A fresh seed per start: the same seed would repeat the first run's random trials.
        with warnings.catch_warnings():  # group= is marked experimental; we pin optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.TPESampler(
                seed=seed + len(study.trials),
                multivariate=True,
                group=True,
                n_startup_trials=STARTUP_TRIALS,
            )

        def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
            counts = count_trials(study, resumed)
            if trial.state == TrialState.COMPLETE and out is not None:
                write_params({**summary(study, counts), "status": "searching"}, out)
            if counts.completed == 0 and counts.failed - before.failed >= FAILURES_BEFORE_GIVING_UP:
                study.stop()

        remaining = trials - resumed
        if remaining > 0:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=timeout,
                catch=(Exception,),
                callbacks=[after_trial],
                show_progress_bar=progress,
            )
        counts = count_trials(study, resumed)
        if counts.completed == 0:
            errors = [t.user_attrs["error"] for t in study.trials if "error" in t.user_attrs]
            raise DataError(
                f"tune: no trial completed ({counts.failed} failed"
                + (f"; the first: {errors[0]})" if errors else ")")
            )
        result = summary(study, counts)
    best = suggest(optuna.trial.FixedTrial(study.best_params), base, pinned)
    result["tuning"]["test"] = evaluate_model(split, best, k)
    result["status"] = "done"
    if out is not None:
        write_params(result, out)
    return result


@contextlib.contextmanager
def _storage(out: Path | None) -> Iterator[optuna.storages.BaseStorage]:
    if out is None:
        yield optuna.storages.InMemoryStorage()
        return
    with open_journal(journal_path(out)) as storage:
        yield storage


def _digest(split: Split) -> str:
    """The identity of the data a search ran on: its train and test parts, exactly."""
    digest = hashlib.sha256()
    for matrix in (split.train, split.test):
        digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
        for array in (matrix.indptr, matrix.indices, matrix.data):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def write_params(result: dict[str, Any], path: Path) -> None:
    """The tune's result, written so that a reader (or a crash) never sees half a file."""
    replace_bytes_atomically(path, (json.dumps(result, indent=2) + "\n").encode())


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
