"""Users with several tastes: a user as up to M interest vectors instead of one.

One vector blurs a user who likes two unlike kinds of item (children's toys and running
shoes): it points between them, and its nearest items are neither. Here the user's history
items are clustered by the direction of their item factors (spherical k-means, deterministic),
each cluster is folded in on its own by the model's rule (:mod:`recsvc.core.foldin`), each
interest vector is searched, and the result lists are merged in proportion to the clusters'
sizes (:func:`merge_interests`). docs/interests.md says why and what it measured.

Why fold-in and not the cluster's mean item factor: the fold-in of a cluster is the vector
the model itself would learn for a user whose history were that cluster, so its scores are on
the scale of every other user vector (the answer's scores, diversity and boosts read them);
the mean item factor ranks by item-item similarity, which favours items of large norm
(popular ones) under the inner product. ml-100k, docs/interests.md: fold-in ranks better.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from recsvc.core.foldin import fold_in_with_model

if TYPE_CHECKING:
    from recsvc.core.model import Model

# History items clustered per user: the store's history (recorded since training, so the
# newest) first, then the training history by weight. Bounds the cost of a query.
MAX_HISTORY = 200
# A cluster with fewer items is no interest of its own: its items join the nearest cluster.
MIN_INTEREST_ITEMS = 3
# Lloyd iterations of the k-means (it usually settles in 3-5 on a few hundred items).
_ITERATIONS = 10
# The seed of the k-means++ start: the same history always gives the same interests.
_SEED = 0


@dataclass(frozen=True)
class Interests:
    """A user's interest vectors, largest cluster first.

    vectors : float32, shape (m, f), m >= 2: each cluster's fold-in, in the user space
    shares : float64, shape (m,): each cluster's share of the clustered history items (sum 1)
    """

    vectors: npt.NDArray[np.float32]
    shares: npt.NDArray[np.float64]


def history_rows(
    model: Model,
    user_row: int | None,
    recent: Mapping[str, float],
    dislikes: Collection[str] = (),
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The user's distinct history items (model rows, int64) and summed weights (float32): the
    training row of ``user_row`` (None: not used) plus ``recent`` (item id -> weight recorded
    since training), without ``dislikes``; at most MAX_HISTORY of them (``recent`` first, then
    the training items of largest weight)."""
    parts_rows: list[npt.NDArray[np.int64]] = []
    parts_weights: list[npt.NDArray[np.float32]] = []
    parts_recent: list[npt.NDArray[np.float32]] = []
    if user_row is not None:
        start, end = model.user_items.indptr[user_row], model.user_items.indptr[user_row + 1]
        parts_rows.append(model.user_items.indices[start:end].astype(np.int64))
        parts_weights.append(model.user_items.data[start:end].astype(np.float32))
        parts_recent.append(np.zeros(end - start, dtype=np.float32))
    if recent:
        rows = model.items.rows_or_missing(list(recent))
        found = rows >= 0
        parts_rows.append(rows[found])
        parts_weights.append(np.fromiter(recent.values(), np.float32, len(recent))[found])
        parts_recent.append(np.ones(int(found.sum()), dtype=np.float32))
    if not parts_rows:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    rows, inverse = np.unique(np.concatenate(parts_rows), return_inverse=True)
    weights = np.bincount(inverse, np.concatenate(parts_weights)).astype(np.float32)
    is_recent = np.bincount(inverse, np.concatenate(parts_recent)) > 0
    if dislikes:
        keep = ~np.isin(rows, model.items.rows(dislikes))
        rows, weights, is_recent = rows[keep], weights[keep], is_recent[keep]
    if len(rows) > MAX_HISTORY:
        first = np.lexsort((-weights, ~is_recent))[:MAX_HISTORY]
        first.sort()
        rows, weights = rows[first], weights[first]
    return rows, weights


def cluster_directions(unit: npt.NDArray[np.float32], m: int) -> npt.NDArray[np.int64]:
    """Spherical k-means of unit vectors into at most ``m`` clusters of at least
    MIN_INTEREST_ITEMS members each; returns each vector's cluster, int64, shape (n,),
    numbered 0.. by size (largest first, ties by first member). Deterministic (seeded
    k-means++ start). Fewer vectors than two clusters need: all in cluster 0."""
    n = len(unit)
    m = min(m, n // MIN_INTEREST_ITEMS)
    if m < 2:
        return np.zeros(n, dtype=np.int64)
    centres = _kmeans_plus_plus(unit, m)
    assignment = np.zeros(n, dtype=np.int64)
    for iteration in range(_ITERATIONS):
        new = np.argmax(unit @ centres.T, axis=1).astype(np.int64)
        if iteration and np.array_equal(new, assignment):  # settled
            break
        assignment = new
        centres = _centres(unit, assignment, centres)
    # Too small to be an interest: its members join their nearest remaining cluster.
    while len(centres) > 1:
        sizes = np.bincount(assignment, minlength=len(centres))
        smallest = int(np.argmin(sizes))
        if sizes[smallest] >= MIN_INTEREST_ITEMS:
            break
        centres = np.delete(centres, smallest, axis=0)
        assignment = np.argmax(unit @ centres.T, axis=1).astype(np.int64)
        centres = _centres(unit, assignment, centres)
    return _numbered_by_size(assignment)


def _kmeans_plus_plus(unit: npt.NDArray[np.float32], m: int) -> npt.NDArray[np.float32]:
    """m starting centres: the member nearest the mean direction, then each next one drawn
    with probability proportional to its squared distance from the centres so far."""
    rng = np.random.default_rng(_SEED)
    chosen = [int(np.argmax(unit @ unit.sum(axis=0)))]
    distance = np.maximum(2.0 - 2.0 * (unit @ unit[chosen[0]]), 0.0).astype(np.float64)
    for _ in range(1, m):
        total = float(distance.sum())
        if total <= 1e-12:  # every member is a centre already (duplicates)
            break
        pick = min(int(np.searchsorted(np.cumsum(distance), rng.random() * total)), len(unit) - 1)
        chosen.append(pick)
        distance = np.minimum(distance, np.maximum(2.0 - 2.0 * (unit @ unit[pick]), 0.0))
    return unit[chosen].copy()


def _centres(
    unit: npt.NDArray[np.float32],
    assignment: npt.NDArray[np.int64],
    previous: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """Each cluster's mean direction (an empty cluster keeps its previous centre)."""
    members = assignment[None, :] == np.arange(len(previous))[:, None]  # (m, n)
    sums = members.astype(np.float32) @ unit
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), previous).astype(np.float32)


def _numbered_by_size(assignment: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The clusters renumbered 0.. by size, largest first (ties: the earlier first member)."""
    used, first, sizes = np.unique(assignment, return_index=True, return_counts=True)
    order = np.lexsort((first, -sizes))
    number = np.empty(int(used.max()) + 1, dtype=np.int64)
    number[used[order]] = np.arange(len(used))
    return number[assignment]


def grouped(
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    assignment: npt.NDArray[np.int64],
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]
]:
    """The history as consecutive runs per cluster, for fold-in: (rows, weights, lengths of
    the runs, int64 shape (m,), shares of the clusters, float64 shape (m,))."""
    order = np.argsort(assignment, kind="stable")
    lengths = np.bincount(assignment).astype(np.int64)
    return rows[order], weights[order], lengths, lengths / lengths.sum()


def find_interests(
    model: Model,
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    m: int,
) -> Interests | None:
    """Up to ``m`` interest vectors from a history (model rows, weights); None when it holds
    only one interest (the caller keeps its single vector then)."""
    if len(rows) < 2 * MIN_INTEREST_ITEMS:
        return None
    assignment = cluster_directions(model.similar_index.vectors[rows], m)
    if not assignment.any():
        return None
    ordered_rows, ordered_weights, lengths, shares = grouped(rows, weights, assignment)
    vectors = fold_in_with_model(model, ordered_rows, ordered_weights, lengths)
    return Interests(vectors, shares)


def merge_interests(
    lists: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
    shares: npt.NDArray[np.float64],
    n: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """One list of at most ``n`` distinct labels from each interest's (labels, scores), best
    first: the interests take turns by the Sainte-Lague divisor rule, the next turn going to the
    interest with the smallest (taken + 0.5) / share (ties: the larger interest), which takes
    its best label not yet in the list. So each interest gets a share of the list proportional
    to its cluster's size (an interest with nothing left yields its turns to the others), and
    its items are spread through the list rather than bunched. Each label keeps the score its
    own interest gave it: with several interests the scores need not decrease down the list."""
    ranked = [(labels.tolist(), scores.tolist()) for labels, scores in lists]
    taken = [0] * len(ranked)
    position = [0] * len(ranked)
    chosen: set[int] = set()
    out_labels: list[int] = []
    out_scores: list[float] = []
    live = [i for i, (labels, _) in enumerate(ranked) if labels]
    while live and len(out_labels) < n:
        turn = min(live, key=lambda i: ((taken[i] + 0.5) / shares[i], i))
        labels, scores = ranked[turn]
        at = position[turn]
        while at < len(labels) and labels[at] in chosen:
            at += 1
        if at < len(labels):
            chosen.add(labels[at])
            out_labels.append(labels[at])
            out_scores.append(scores[at])
            taken[turn] += 1
            at += 1
        position[turn] = at
        if at >= len(labels):
            live.remove(turn)
    return np.asarray(out_labels, dtype=np.int64), np.asarray(out_scores, dtype=np.float32)
