"""`recsvc eval --interests`: the multi-interest lists measured against the single vector on
small synthetic data whose users have two tastes of unequal size, with real implicit ALS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.evaluation.holdout import split_interactions
from recsvc.evaluation.interests import category_matrix, evaluate_interests
from tests.helpers import run_recsvc

GROUPS, PER_GROUP, USERS = 6, 30, 300


def two_taste_data(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Each user draws 14 items from a main group and 6 from a second one (items of a group
    are its genre); returns the interactions and the genre matrix (items x groups)."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(USERS):
        main, second = rng.choice(GROUPS, size=2, replace=False)
        for group, count in ((main, 14), (second, 6)):
            items = group * PER_GROUP + rng.choice(PER_GROUP, size=count, replace=False)
            rows += [user] * count
            cols += items.tolist()
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(USERS, GROUPS * PER_GROUP)
    )
    genres = np.zeros((GROUPS * PER_GROUP, GROUPS), dtype=bool)
    genres[np.arange(GROUPS * PER_GROUP), np.arange(GROUPS * PER_GROUP) // PER_GROUP] = True
    return matrix, genres


def test_two_interests_cover_both_tastes() -> None:
    matrix, genres = two_taste_data()
    split = split_interactions(matrix, None, "stratified-user", seed=1)
    settings = TrainSettings(factors=16, iterations=10, threads=1, regularization=0.05)
    result = evaluate_interests(split, settings, 10, [1, 2], genres)
    one, two = result["interests"]["1"], result["interests"]["2"]
    assert one["users_split"] == 0 and two["users_split"] > USERS // 2
    # The single vector leans to the main taste; two interests give the second its share.
    assert two["genre_coverage@10"] > one["genre_coverage@10"] + 0.05
    assert two["intra_list_diversity@10"] > one["intra_list_diversity@10"]
    assert 0 < one["ndcg@10"] <= 1 and 0 < two["ndcg@10"] <= 1
    assert one["users_evaluated"] == two["users_evaluated"]


def test_categories_become_one_column_each() -> None:
    matrix = category_matrix([("Comedy",), (), ("Action", "Comedy")])
    assert matrix.tolist() == [[False, True], [False, False], [True, True]]


@pytest.mark.slow
def test_eval_cli_prints_one_row_per_interest_count(tmp_path: Path) -> None:
    matrix, _ = two_taste_data()
    coo = matrix.tocoo()
    data = tmp_path / "interactions.csv"
    lines = ["user_id,item_id"] + [f"u{u},i{i}" for u, i in zip(coo.row, coo.col, strict=True)]
    data.write_text("\n".join(lines) + "\n")
    done = run_recsvc(
        "eval", "--interactions", str(data), "--protocol", "stratified-user", "--factors", "16",
        "--iterations", "5", "--interests", "1", "3", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["interests"]) == {"1", "3"}
    assert "intra_list_diversity@10" in result["interests"]["3"]
    refused = run_recsvc(
        "eval", "--interactions", str(data), "--protocol", "stratified-user", "--interests", "9",
    )  # fmt: skip
    assert refused.returncode != 0 and "--interests" in refused.stderr
