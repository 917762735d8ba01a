"""Splits and ranking metrics, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.errors import DataError
from recsvc.evaluation.holdout import (
    Split,
    evaluate_with_baselines,
    ranking_metrics,
    split_interactions,
)


def test_metrics_match_hand_computation() -> None:
    # user 0: trained on item 0; relevant {1, 3}; ranking (item 0 removed) 1, 2, 3, 4
    # user 1: trained on item 4; relevant {2}; ranking 0, 1, 2, 3
    train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=np.float32))
    scores = np.array([[9, 8, 7, 6, 5], [9, 8, 7, 6, 10]], dtype=np.float32)
    metrics = ranking_metrics(lambda users: scores[users], Split(train, test, None), k=3)
    log2 = math.log2
    ndcg0 = (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3))
    ndcg1 = (1 / log2(4)) / 1.0
    assert metrics["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2, abs=1e-6)
    assert metrics["recall@3"] == pytest.approx((1.0 + 1.0) / 2, abs=1e-6)
    assert metrics["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2, abs=1e-6)
    assert metrics["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 1) / 2, abs=1e-6)
    assert metrics["hit_rate@3"] == 1.0
    assert metrics["coverage@3"] == pytest.approx(4 / 5)
    assert metrics["users_evaluated"] == 2


def random_matrix(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    dense = (rng.random((60, 40)) < 0.3).astype(np.float32)
    matrix = sp.csr_matrix(dense)
    stamps = matrix.copy().astype(np.int64)
    stamps.data = rng.integers(0, 10_000, size=matrix.nnz)
    return matrix, stamps


def test_stratified_item_split_keeps_three_quarters_of_each_item() -> None:
    matrix, stamps = random_matrix()
    split = split_interactions(matrix, stamps, "stratified-item", ratio=0.75, seed=42)
    assert split.train.nnz + split.test.nnz == matrix.nnz
    assert (split.train.multiply(split.test)).nnz == 0
    per_item = np.diff(matrix.tocsc().indptr)
    assert np.array_equal(np.diff(split.train.tocsc().indptr), np.round(0.75 * per_item))
    again = split_interactions(matrix, stamps, "stratified-item", ratio=0.75, seed=42)
    assert (again.test != split.test).nnz == 0
    other = split_interactions(matrix, stamps, "stratified-item", ratio=0.75, seed=7)
    assert (other.test != split.test).nnz > 0


def test_stratified_user_split() -> None:
    matrix, stamps = random_matrix(1)
    split = split_interactions(matrix, stamps, "stratified-user", ratio=0.5, seed=1)
    assert np.array_equal(np.diff(split.train.indptr), np.round(0.5 * np.diff(matrix.indptr)))


def test_leave_last_n_takes_each_users_latest() -> None:
    matrix, stamps = random_matrix(2)
    split = split_interactions(matrix, stamps, "leave-last-n", last_n=2)
    for user in range(matrix.shape[0]):
        row = stamps[user]
        test_items = set(split.test[user].indices)
        latest = set(row.indices[np.argsort(-row.data)[:2]]) if row.nnz > 2 else set()
        assert test_items == latest
    with pytest.raises(DataError, match="timestamp"):
        split_interactions(matrix, None, "leave-last-n")


def test_model_beats_baselines_on_structured_data() -> None:
    """Two user groups, each liking its own block of items: ALS must beat popularity (which
    cannot tell the groups apart) and random."""
    rng = np.random.default_rng(3)
    block = np.zeros((200, 100), dtype=np.float32)
    block[:100, :50] = rng.random((100, 50)) < 0.3
    block[100:, 50:] = rng.random((100, 50)) < 0.3
    matrix = sp.csr_matrix(np.minimum(block, 1))
    split = split_interactions(matrix, None, "stratified-user", seed=42)
    result = evaluate_with_baselines(split, TrainSettings(factors=4, iterations=10), 10, seed=42)
    model, base = result["model"], result["baselines"]
    assert model["ndcg@10"] > base["popularity"]["ndcg@10"] > base["random"]["ndcg@10"]
    assert set(base) == {"popularity", "random", "bpr"}
