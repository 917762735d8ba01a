"""Users with several tastes, measured offline (``recsvc eval --interests M ...``).

For each number of interests M, every evaluated user gets the top-k list that serving would
give them (recsvc.core.interests): their training history (the latest MAX_HISTORY items when
the data has timestamps, else those of largest weight) clustered into up to M interests, each
folded in, each searched exactly (training items excluded), the lists merged by
:func:`recsvc.core.interests.merge_interests`. M = 1, and a user whose history holds one
interest only, get the model's own user vector: the single-vector list. Reported per M:

- the ranking metrics of recsvc.evaluation.holdout (nDCG@k, ...) of those lists;
- intra-list diversity: the mean over users of the mean pairwise (1 - cosine) of the item
  factors in the list;
- with genres: the mean number of distinct genres in a list, and genre coverage: the mean
  share of a user's main genres (those of at least 10% of the genre labels of their training
  items, an item counting once per genre) that the list holds;
- users_split: how many users the clustering split into 2 or more interests.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.core.foldin import fold_in_segments
from recsvc.core.interests import MAX_HISTORY, cluster_directions, grouped, merge_interests
from recsvc.evaluation.holdout import Scorer, Split, ranking_metrics
from recsvc.fitting.factors import TrainedFactors, fit_factors, weight_matrix

InterestVector = Literal["fold-in", "mean"]
# A genre is one of a user's main genres from this share of their history's genre labels.
MAIN_GENRE_SHARE = 0.10


def evaluate_interests(
    split: Split,
    settings: TrainSettings,
    k: int,
    counts: list[int],
    genres: npt.NDArray[np.bool_] | None = None,
    vector: InterestVector = "fold-in",
    progress: bool = False,
) -> dict[str, Any]:
    """The metrics of the module docstring for each M in ``counts``, from one fit of
    ``settings`` on the training part. ``genres``: bool, shape (n_items, n_genres), or None.
    ``vector``: how an interest becomes a vector (serving folds in; "mean" is the cluster's
    mean item factor, for comparison)."""
    started = time.perf_counter()
    factors = fit_factors(split.train, settings, progress=progress)
    users = np.flatnonzero(np.diff(split.test.indptr))
    results: dict[str, Any] = {}
    for m in counts:
        lists, split_users = _lists(split, settings, factors, users, k, m, vector)
        metrics = ranking_metrics(_list_scorer(lists, split.train.shape[1]), split, k)
        metrics[f"intra_list_diversity@{k}"] = _intra_list_diversity(
            lists[users], factors.item_factors
        )
        if genres is not None:
            per_list, coverage = _genre_metrics(lists[users], split.train[users], genres)
            metrics[f"genres_per_list@{k}"] = per_list
            metrics[f"genre_coverage@{k}"] = coverage
        metrics["users_split"] = split_users
        results[str(m)] = metrics
    return {
        "interests": results,
        "interest_vector": vector,
        "k": k,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _lists(
    split: Split,
    settings: TrainSettings,
    factors: TrainedFactors,
    users: npt.NDArray[np.int64],
    k: int,
    m: int,
    vector: InterestVector,
) -> tuple[npt.NDArray[np.int64], int]:
    """Top-k item lists, int64 shape (n_users, k) (-1: no list or a short one), of ``users``
    with up to ``m`` interests; and how many users had two or more."""
    item_factors = factors.item_factors
    n_items = item_factors.shape[0]
    unit = item_factors / np.maximum(np.linalg.norm(item_factors, axis=1, keepdims=True), 1e-12)
    weighted = weight_matrix(split.train, settings)
    stamps = split.train_timestamps
    yty = (
        (item_factors.T.astype(np.float64) @ item_factors) if settings.algorithm == "als" else None
    )
    lists = np.full((split.train.shape[0], k), -1, dtype=np.int64)
    split_users = 0
    for user in users.tolist():
        start, end = weighted.indptr[user], weighted.indptr[user + 1]
        rows = weighted.indices[start:end].astype(np.int64)
        weights = weighted.data[start:end]
        vectors = factors.user_factors[user][None, :]
        shares = np.ones(1)
        if m > 1 and len(rows):
            recent = _latest(rows, weights, stamps, user)
            rows, weights = rows[recent], weights[recent]
            assignment = cluster_directions(unit[rows], m)
            if assignment.any():
                split_users += 1
                ordered, ordered_weights, lengths, shares = grouped(rows, weights, assignment)
                vectors = _interest_vectors(
                    item_factors, yty, ordered, ordered_weights, lengths, settings, vector
                )
        seen = weighted.indices[start:end]
        candidates = []
        for scores in vectors @ item_factors.T:
            scores[seen] = -np.inf
            top = np.argpartition(-scores, min(k, n_items - 1))[: k + 1]
            top = top[np.argsort(-scores[top], kind="stable")][:k]
            top = top[np.isfinite(scores[top])]
            candidates.append((top.astype(np.int64), scores[top].astype(np.float32)))
        merged, _ = merge_interests(candidates, shares, k)
        lists[user, : len(merged)] = merged
    return lists, split_users


def _latest(
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    stamps: sp.csr_matrix | None,
    user: int,
) -> npt.NDArray[np.int64]:
    """Positions of the history items clustered: all, or the latest MAX_HISTORY (by
    timestamp, else by weight), in their original order."""
    if len(rows) <= MAX_HISTORY:
        return np.arange(len(rows))
    if stamps is not None:
        key = -stamps.data[stamps.indptr[user] : stamps.indptr[user + 1]].astype(np.float64)
    else:
        key = -weights.astype(np.float64)
    return np.sort(np.argsort(key, kind="stable")[:MAX_HISTORY])


def _interest_vectors(
    item_factors: npt.NDArray[np.float32],
    yty: npt.NDArray[np.float64] | None,
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    lengths: npt.NDArray[np.int64],
    settings: TrainSettings,
    vector: InterestVector,
) -> npt.NDArray[np.float32]:
    """One vector per run of ``rows``: its fold-in (weights already as the model saw them),
    or its mean item factor."""
    if vector == "fold-in":
        return fold_in_segments(
            item_factors, yty, rows, weights, lengths, settings.regularization, settings.alpha
        )
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    means = np.add.reduceat(item_factors[rows], starts, axis=0) / lengths[:, None]
    return means.astype(np.float32)


def _list_scorer(lists: npt.NDArray[np.int64], n_items: int) -> Scorer:
    """Scores that rank each user's list first, in its order (everything else far below)."""
    k = lists.shape[1]
    rank_scores = np.arange(k, 0, -1, dtype=np.float32)

    def scorer(users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        scores = np.full((len(users), n_items), -1e9, dtype=np.float32)
        chosen = lists[users]
        at, position = np.nonzero(chosen >= 0)
        scores[at, chosen[at, position]] = rank_scores[position]
        return scores

    return scorer


def _intra_list_diversity(
    lists: npt.NDArray[np.int64], item_factors: npt.NDArray[np.float32]
) -> float:
    """Mean over lists of the mean pairwise (1 - cosine) of their items' factors."""
    unit = item_factors / np.maximum(np.linalg.norm(item_factors, axis=1, keepdims=True), 1e-12)
    values = []
    for items in lists:
        items = items[items >= 0]
        if len(items) < 2:
            continue
        vectors = unit[items]
        similarity = vectors @ vectors.T
        pairs = len(items) * (len(items) - 1)
        values.append(1.0 - (similarity.sum() - np.trace(similarity)) / pairs)
    return round(float(np.mean(values)), 6) if values else 0.0


def _genre_metrics(
    lists: npt.NDArray[np.int64], history: sp.csr_matrix, genres: npt.NDArray[np.bool_]
) -> tuple[float, float]:
    """(mean distinct genres per list, mean share of each user's main genres in their list)."""
    per_list, coverage = [], []
    for items, row in zip(lists, history, strict=True):
        items = items[items >= 0]
        in_list = genres[items].any(axis=0)
        per_list.append(int(in_list.sum()))
        labels = genres[row.indices].sum(axis=0).astype(np.float64)
        if labels.sum() > 0:
            main = labels >= MAIN_GENRE_SHARE * labels.sum()
            coverage.append(float((in_list & main).sum() / main.sum()))
    return (
        round(float(np.mean(per_list)), 6) if per_list else 0.0,
        round(float(np.mean(coverage)), 6) if coverage else 0.0,
    )


def category_matrix(categories: list[tuple[str, ...]]) -> npt.NDArray[np.bool_]:
    """Items' categories (genres) as a bool matrix, shape (n_items, n_categories)."""
    names = sorted({name for names in categories for name in names})
    column = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(categories), len(names)), dtype=bool)
    for row, names_of_item in enumerate(categories):
        matrix[row, [column[name] for name in names_of_item]] = True
    return matrix
