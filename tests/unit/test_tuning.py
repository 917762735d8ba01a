"""The tune search space and its trial journal; the weight transform; what eval leaves out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.errors import ConfigError
from recsvc.evaluation.holdout import not_evaluated, split_interactions
from recsvc.fitting.factors import weight_matrix
from recsvc.tuning.space import check_pins, recipe, suggest
from recsvc.tuning.storage import open_journal


def sample(base: TrainSettings, pinned: dict[str, object], n: int = 40) -> list[TrainSettings]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    points: list[TrainSettings] = []
    for _ in range(n):
        trial = study.ask()
        points.append(suggest(trial, base, pinned))
        study.tell(trial, 0.0)
    return points


def test_pinned_parameters_hold_in_every_trial_and_the_rest_varies() -> None:
    points = sample(TrainSettings(), {"weighting": "bm25", "factors": 12, "bm25_b": 0.3})
    assert {(p.weighting, p.factors, p.bm25_b) for p in points} == {("bm25", 12, 0.3)}
    assert len({p.bm25_k1 for p in points}) > 1 and len({p.alpha for p in points}) > 1
    assert {p.weight_transform for p in points} == {"none", "log1p"}


def test_the_space_covers_every_weighting_and_only_what_applies() -> None:
    points = sample(TrainSettings(algorithm="bpr"), {}, n=60)
    assert {p.weighting for p in points} == {"none", "binary", "bm25", "tfidf"}
    assert all(0.001 <= p.learning_rate <= 0.1 for p in points)
    for point in points:
        shown = recipe(point)
        assert "alpha" not in shown and "learning_rate" in shown
        assert ("bm25_k1" in shown) == (point.weighting == "bm25")
        assert ("weight_transform" in shown) == (point.weighting != "binary")


def test_a_pin_that_cannot_apply_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--alpha has no effect"):
        check_pins({"alpha": 2.0}, "bpr")
    with pytest.raises(ConfigError, match="--bm25-k1 has no effect"):
        check_pins({"weighting": "tfidf", "bm25_k1": 5.0}, "als")
    check_pins({"bm25_k1": 5.0, "learning_rate": 0.01}, "bpr")  # bm25 may still be chosen


def test_log1p_transform_comes_before_the_weighting() -> None:
    matrix = sp.csr_matrix(np.array([[0, 3], [1e30, 1]], dtype=np.float32))
    logged = weight_matrix(matrix, TrainSettings(weight_transform="log1p"))
    assert np.allclose(logged.toarray(), np.log1p(matrix.toarray()))
    binary = weight_matrix(matrix, TrainSettings(weight_transform="log1p", weighting="binary"))
    assert set(binary.data) == {1.0}


def test_the_journal_is_locked_and_a_killed_writers_leftovers_are_cleared(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "p.json.optuna.log"
    with open_journal(journal) as storage:
        study = optuna.create_study(storage=storage, study_name="s")
        study.enqueue_trial({"x": 1.0})
        with pytest.raises(ConfigError, match="another recsvc tune"), open_journal(journal):
            pass
    complete = journal.read_bytes()
    journal.write_bytes(complete + b'{"op_code": 5, "tri')  # a write cut short by SIGKILL
    os.symlink(journal, f"{journal}.lock")  # optuna's append lock, never released
    with open_journal(journal) as storage:
        study = optuna.load_study(storage=storage, study_name="s")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
        assert len(study.trials) == 2
    assert not os.path.lexists(f"{journal}.lock")


def test_not_evaluated_names_the_items_too_rare_for_the_test_part() -> None:
    # Item 0 has 1 interaction, item 1 has 2, item 2 has 8 (all 8 users).
    rows = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    cols = [2, 2, 2, 2, 2, 2, 2, 2, 0, 1, 1]
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(8, 3))
    split = split_interactions(matrix, None, "stratified-item", 0.75, seed=3)
    left_out = not_evaluated(split, "stratified-item", 0.75)
    assert left_out["items_never_in_test"]["count"] == 2
    assert "<= 2 interactions" in left_out["items_never_in_test"]["reason"]
    assert left_out["users"]["of"] == 8
    assert left_out["users"]["count"] == 8 - len(np.flatnonzero(np.diff(split.test.indptr)))


def test_the_weight_transform_is_part_of_a_models_recipe() -> None:
    from recsvc.training.pipeline import recipe_of, train_parameters

    fitted = TrainSettings(weight_transform="log1p", weighting="bm25", bm25_k1=3.0)
    recorded = train_parameters(fitted)
    assert recorded["weight_transform"] == "log1p"
    again = recipe_of(recorded, TrainSettings())
    assert (again.weight_transform, again.weighting, again.bm25_k1) == ("log1p", "bm25", 3.0)
    older = {key: value for key, value in recorded.items() if key != "weight_transform"}
    assert recipe_of(older, fitted).weight_transform == "none"  # fit before the setting existed
