"""Fold-in must reproduce implicit's own user update (real implicit, small data)."""

from __future__ import annotations

import implicit
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsvc.core.foldin import fold_in_segments


def test_fold_in_matches_implicit_recalculate_user() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((200, 150)) < 0.05) * rng.integers(1, 5, (200, 150))
    matrix = sp.csr_matrix(dense.astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=16, regularization=0.1, alpha=2.0, iterations=5, random_state=1
        )
        model.fit(matrix, show_progress=False)
        row = matrix[7]
        expected = model.recalculate_user(0, row)
    items = model.item_factors
    folded = fold_in_segments(
        items,
        items.astype(np.float64).T @ items,
        row.indices.astype(np.int64),
        row.data,
        np.array([row.nnz]),
        regularization=0.1,
        alpha=2.0,
    )
    np.testing.assert_allclose(folded[0], expected, rtol=1e-3, atol=1e-4)


def test_batched_fold_in_matches_implicit_for_many_users() -> None:
    rng = np.random.default_rng(1)
    # 150 users of different lengths: more than one padded group (64 users each).
    dense = (rng.random((150, 80)) < rng.uniform(0.02, 0.3, (150, 1))) * rng.integers(
        1, 4, (150, 80)
    )
    matrix = sp.csr_matrix(dense.astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=8, regularization=0.5, alpha=3.0, iterations=4, random_state=2
        )
        model.fit(matrix, show_progress=False)
        users = [u for u in range(150) if matrix[u].nnz]
        assert len(users) > 128
        expected = model.recalculate_user(users, matrix[users])
    items = model.item_factors
    rows = matrix[users]  # each user's item rows and weights, one user after another
    folded = fold_in_segments(
        items,
        items.astype(np.float64).T @ items,
        rows.indices.astype(np.int64),
        rows.data,
        np.diff(rows.indptr),
        0.5,
        3.0,
    )
    np.testing.assert_allclose(folded, expected, rtol=1e-3, atol=1e-4)


def test_symmetric_solver_falls_back_to_lu_for_indefinite_systems() -> None:
    from recsvc.core.foldin import _solve_symmetric

    rng = np.random.default_rng(3)
    m = rng.normal(size=(3, 6, 6)).astype(np.float32)
    a = m @ m.transpose(0, 2, 1) + np.eye(6, dtype=np.float32)
    a[1] = np.diag([1.0, -2.0, 3.0, 1.0, 1.0, 1.0]).astype(np.float32)  # not positive definite
    b = rng.normal(size=(3, 6)).astype(np.float32)
    expected = np.linalg.solve(a.astype(np.float64), b[..., None].astype(np.float64))[..., 0]
    np.testing.assert_allclose(_solve_symmetric(a, b), expected, rtol=1e-4, atol=1e-5)
