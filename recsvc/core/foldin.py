"""Fold-in: a user vector from a handful of item interactions, without retraining.

For ALS this is the model's own closed-form user update (the same one ``implicit`` applies in
``recalculate_user``): with confidence ``c_i = alpha * w_i`` for each interacted item ``y_i``,

    x = (YtY + reg * I + sum_i (c_i - 1) y_i y_i^T)^-1  sum_i c_i y_i

``YtY`` is precomputed once per model, so a fold-in costs O(n * f^2 + f^3) for n interactions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.linalg import lapack

from recsvc.core.weights import transform_weights

if TYPE_CHECKING:
    from recsvc.core.model import Model


def fold_in_histories(
    model: Model,
    histories: dict[str, dict[str, float]],
    dislikes: Mapping[str, Collection[str]] | None = None,
    forgotten: Collection[str] = (),
) -> dict[str, npt.NDArray[np.float32]]:
    """User vectors from each user's training history plus ``histories`` (user -> item ->
    weight of interactions since), solved in one batch; users without any known item are left
    out.

    ``dislikes`` (user -> items disliked since training): those pairs count with zero
    confidence, i.e. they are dropped from both histories (a dislike is not a positive; the
    training pipeline drops the pair the same way). ``forgotten``: users whose training
    history is not used (ForgetUser): only ``histories`` count for them.

    The training histories and the new ones are merged for all users at once, by one sparse
    conversion, instead of a merge per user: this runs in every RecordInteractions call
    (docs/BENCHMARKS.md, ingestion).
    """
    if not histories:
        return {}
    n_items = model.info.num_items
    user_ids = list(histories)
    # Every (user position, item row, weight) of the new histories, flattened once.
    sizes = np.fromiter(map(len, histories.values()), np.int64, len(histories))
    items = list(chain.from_iterable(histories.values()))
    new_rows = model.items.rows_or_missing(items)
    new_weights = np.fromiter(
        chain.from_iterable(h.values() for h in histories.values()), np.float32, len(items)
    )
    new_positions = np.repeat(np.arange(len(user_ids), dtype=np.int64), sizes)
    found = new_rows >= 0
    user_rows = model.users.rows_or_missing(user_ids)
    if forgotten:
        user_rows[[n for n, user_id in enumerate(user_ids) if user_id in forgotten]] = -1
    known = np.flatnonzero(user_rows >= 0)
    training = model.user_items[user_rows[known]]
    # Training rows and new interactions summed per (user, item) by one sparse conversion
    # (duplicates summed, items sorted within each user).
    merged = sp.csr_matrix(
        (
            np.concatenate([training.data, new_weights[found]]),
            (
                np.concatenate([np.repeat(known, np.diff(training.indptr)), new_positions[found]]),
                np.concatenate([training.indices, new_rows[found]]),
            ),
        ),
        shape=(len(user_ids), n_items),
        dtype=np.float32,
    )
    merged.sum_duplicates()
    if dislikes:
        merged = _without_dislikes(model, merged, user_ids, dislikes)
    lengths = np.diff(merged.indptr)
    with_items = np.flatnonzero(lengths)
    if len(with_items) == 0:
        return {}
    vectors = fold_in_with_model(
        model, merged.indices.astype(np.int64), merged.data, lengths[with_items]
    )
    return {user_ids[p]: vectors[n] for n, p in enumerate(with_items)}


def _without_dislikes(
    model: Model,
    merged: sp.csr_matrix,
    user_ids: list[str],
    dislikes: Mapping[str, Collection[str]],
) -> sp.csr_matrix:
    """``merged`` (users x items) without the (user, disliked item) entries."""
    positions: list[int] = []
    items: list[str] = []
    for position, user_id in enumerate(user_ids):
        disliked = dislikes.get(user_id, ())
        positions += [position] * len(disliked)
        items += list(disliked)
    rows = model.items.rows_or_missing(items)
    found = rows >= 0
    if not found.any():
        return merged
    mask = sp.csr_matrix(
        (np.ones(int(found.sum()), np.float32), (np.asarray(positions)[found], rows[found])),
        shape=merged.shape,
    )
    kept: sp.csr_matrix = (merged - merged.multiply(mask)).tocsr()
    kept.eliminate_zeros()
    return kept


def fold_in_with_model(
    model: Model,
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    lengths: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """User vectors from consecutive runs of (distinct item rows, weights), by the model's
    own rule (see :func:`fold_in_segments`). The weights get the training's weight transform
    and its weighting where it is per-entry (binary); for bm25/tf-idf, which need corpus
    statistics, the (transformed) weights are an approximation."""
    weights = model_weights(model, weights)
    yty = model.yty if model.info.algorithm == "als" else None
    return fold_in_segments(
        model.item_factors, yty, rows, weights, lengths, model.regularization, model.alpha
    )


def model_weights(model: Model, weights: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Interaction weights (float32, shape (n,)) as the model's training saw them: its weight
    transform, then ones for binary weighting (ALS confidence is ``alpha`` times these)."""
    weights = transform_weights(weights, str(model.info.parameters.get("weight_transform", "none")))
    if model.info.parameters.get("weighting") == "binary":
        weights = np.ones_like(weights)
    return weights


def fold_in_segments(
    item_factors: npt.NDArray[np.float32],
    yty: npt.NDArray[np.float64] | None,
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    lengths: npt.NDArray[np.int64],
    regularization: float,
    alpha: float,
) -> npt.NDArray[np.float32]:
    """Fold in many users whose interactions lie one after another: user ``n`` has the next
    ``lengths[n]`` of ``rows`` (distinct item rows) and ``weights``. Returns float32, shape
    (len(lengths), f). With ``yty`` this is the ALS update above per user; without it (BPR,
    which has no closed-form user update) the regularised least-squares fit of the weights,
    ``argmin_x |Y_u x - w|^2 + reg |x|^2``.

    The systems are built with batched matrix products over users padded to a common length
    (users sorted by length and taken in groups, so padding stays small) and solved by
    Cholesky, in float32 (as implicit trains): the same vectors to ~1e-7 relative.
    """
    f = item_factors.shape[1]
    n_users = len(lengths)
    if yty is not None:
        base = (yty + regularization * np.eye(f)).astype(np.float32)
        target = np.float32(alpha) * weights.astype(np.float32)  # confidence c_i
        gram_weight = target - np.float32(1.0)  # c_i - 1 (YtY already holds the 1)
    else:
        base = (max(regularization, 1e-6) * np.eye(f)).astype(np.float32)
        target = weights.astype(np.float32)
        gram_weight = np.ones_like(target)
    # Padding points at row 0 with weight 0 on both sides: it adds nothing.
    rows = np.append(rows, 0)
    target = np.append(target, np.float32(0.0))
    gram_weight = np.append(gram_weight, np.float32(0.0))
    padding = len(rows) - 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    a = np.empty((n_users, f, f), dtype=np.float32)
    b = np.empty((n_users, f), dtype=np.float32)
    order = np.argsort(lengths, kind="stable")
    for group in np.array_split(order, -(-n_users // _GROUP)):
        width = int(lengths[group].max())
        offsets = np.arange(width)
        index = np.where(
            offsets < lengths[group, None], starts[group, None] + offsets, padding
        )  # (users, width): positions in the flat arrays
        y = item_factors[rows[index]]  # (users, width, f)
        y_t = y.transpose(0, 2, 1)
        a[group] = base + (y_t * gram_weight[index][:, None, :]) @ y
        b[group] = (y_t @ target[index][..., None])[..., 0]
    return _solve_symmetric(a, b)


def _solve_symmetric(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Solve each ``a[n] x = b[n]``. The systems are symmetric and, but for extreme weights,
    positive definite: LAPACK's Cholesky solver (posv) one system at a time is ~40% faster
    than numpy's batched LU solve at these sizes; LU where Cholesky fails."""
    out = np.empty_like(b)
    for n in range(len(a)):
        _, x, info = _POSV(a[n], b[n], lower=1)
        out[n] = x if info == 0 else np.linalg.solve(a[n], b[n])
    return out


_POSV = lapack.sposv


# Users per padded group: large enough for few numpy calls, small enough that a long history
# pads few others.
_GROUP = 64
