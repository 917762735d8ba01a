"""Fold-in must reproduce implicit's own user update (real implicit, small data)."""

from __future__ import annotations

import implicit
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsvc.core.foldin import als_fold_in


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
    folded = als_fold_in(
        items,
        items.astype(np.float64).T @ items,
        row.indices.astype(np.int64),
        row.data,
        regularization=0.1,
        alpha=2.0,
    )
    np.testing.assert_allclose(folded, expected, rtol=1e-3, atol=1e-4)
