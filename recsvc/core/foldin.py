"""Fold-in: a user vector from a handful of item interactions, without retraining.

For ALS this is the model's own closed-form user update (the same one ``implicit`` applies in
``recalculate_user``): with confidence ``c_i = alpha * w_i`` for each interacted item ``y_i``,

    x = (YtY + reg * I + sum_i (c_i - 1) y_i y_i^T)^-1  sum_i c_i y_i

``YtY`` is precomputed once per model, so a fold-in costs O(n * f^2 + f^3) for n interactions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def als_fold_in(
    item_factors: npt.NDArray[np.float32],
    yty: npt.NDArray[np.float64],
    item_rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    regularization: float,
    alpha: float,
) -> npt.NDArray[np.float32]:
    """The ALS user vector for the given interactions.

    Parameters
    ----------
    item_factors : float32, shape (n_items, f)
    yty : float64, shape (f, f)
        ``item_factors.T @ item_factors``.
    item_rows : int64, shape (n,)
        Rows of the interacted items; must be distinct.
    weights : float32, shape (n,)
        Interaction strengths (> 0).
    regularization, alpha : float
        The model's training parameters.

    Returns
    -------
    float32, shape (f,)
    """
    vectors = fold_in_many(item_factors, yty, [(item_rows, weights)], regularization, alpha)
    vector: npt.NDArray[np.float32] = vectors[0]
    return vector


def fold_in_many(
    item_factors: npt.NDArray[np.float32],
    yty: npt.NDArray[np.float64] | None,
    users: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
    regularization: float,
    alpha: float,
) -> npt.NDArray[np.float32]:
    """Fold in many users at once: one (rows, weights) pair per user; returns float32, shape
    (len(users), f). With ``yty`` this is :func:`als_fold_in` per user; without it (BPR,
    which has no closed-form user update) the regularised least-squares fit of the weights,
    ``argmin_x |Y_u x - w|^2 + reg |x|^2``. The linear systems are solved in one batched call.

    The systems are built and solved in float32 (as implicit trains): half the time of
    float64, and the same vectors to ~1e-7 relative on 64 factors.
    """
    f = item_factors.shape[1]
    a = np.empty((len(users), f, f), dtype=np.float32)
    b = np.empty((len(users), f), dtype=np.float32)
    if yty is not None:
        base = (yty + regularization * np.eye(f)).astype(np.float32)
    else:
        base = (max(regularization, 1e-6) * np.eye(f)).astype(np.float32)
    for n, (rows, weights) in enumerate(users):
        factors = item_factors[rows]
        if yty is not None:
            confidence = np.float32(alpha) * weights.astype(np.float32)
            a[n] = base + (factors.T * (confidence - 1.0)) @ factors
            b[n] = factors.T @ confidence
        else:
            a[n] = base + factors.T @ factors
            b[n] = factors.T @ weights.astype(np.float32)
    solved: npt.NDArray[np.float32] = np.linalg.solve(a, b[..., None])[..., 0].astype(np.float32)
    return solved
