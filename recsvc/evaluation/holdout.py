"""Offline evaluation: reproducible splits, ranking metrics at k, and baselines in the same run.

Protocols (all seeded, default seed 42):

- ``stratified-item``: for each item, its interactions in random order, the first
  ``round(ratio * n)`` to train and the rest to test (the Microsoft Recommenders benchmark
  protocol for MovieLens, with ratio 0.75);
- ``stratified-user``: the same per user;
- ``leave-last-n``: each user's ``n`` latest interactions (by timestamp) to test, when the user
  has more than ``n``.

Every test interaction is relevant; each user's training items are removed from the ranking.
Users without test interactions are not evaluated. Metrics at k, averaged over evaluated users:

- precision = hits / k; recall = hits / |relevant|; hit rate = 1 if any hit;
- nDCG: binary gains, DCG = sum over hits at rank r of 1 / log2(r + 1), divided by the DCG of
  min(k, |relevant|) hits at the top;
- MAP (our definition): AP@k = (sum over hits at rank r of precision@r) / min(k, |relevant|);
- coverage: distinct items recommended to anyone / catalogue size;
- mean popularity: mean, over all recommended items, of the share of training users who
  interacted with the item;
- exposure (bias): Gini coefficient of item exposure, long-tail share, novelty and, when the
  items' categories are known, per-category exposure against catalogue share
  (recsvc.evaluation.exposure).

With a popularity discount, each user's best ``discount_pool(k)`` items are re-ranked by the
serving rule (recsvc.core.popularity) before the top k are taken, as Recommend does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.core.popularity import discount_pool, popularity_adjusted
from recsvc.errors import DataError
from recsvc.evaluation import exposure as bias
from recsvc.fitting.factors import fit_factors

Protocol = Literal["stratified-item", "stratified-user", "leave-last-n"]
PROTOCOLS: tuple[Protocol, ...] = ("stratified-item", "stratified-user", "leave-last-n")
Scorer = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]
USER_BATCH = 512


@dataclass(frozen=True)
class Split:
    """train: weights, (n_users, n_items); test: 1 per relevant pair; same shape.
    train_timestamps: the training pairs' timestamps (same structure as train), or None."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    train_timestamps: sp.csr_matrix | None


def split_interactions(
    matrix: sp.csr_matrix,
    timestamps: sp.csr_matrix | None,
    protocol: Protocol,
    ratio: float = 0.75,
    seed: int = 42,
    last_n: int = 1,
) -> Split:
    """Split the pairs of ``matrix`` into train and test by ``protocol``."""
    coo = matrix.tocoo()
    users, items, weights = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    stamps = timestamps.tocoo().data if timestamps is not None else None
    rng = np.random.default_rng(seed)
    if protocol == "leave-last-n":
        if stamps is None:
            raise DataError("protocol leave-last-n needs a timestamp column")
        in_test = _latest_per_group(users, stamps, last_n, rng)
    elif protocol in ("stratified-item", "stratified-user"):
        groups = items if protocol == "stratified-item" else users
        in_test = ~_first_share_per_group(groups, ratio, rng)
    else:
        raise DataError(f"protocol: unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    shape = matrix.shape
    train = sp.csr_matrix(
        (weights[~in_test], (users[~in_test], items[~in_test])), shape=shape, dtype=np.float32
    )
    test = sp.csr_matrix(
        (np.ones(int(in_test.sum()), np.float32), (users[in_test], items[in_test])), shape=shape
    )
    train_stamps = None
    if stamps is not None:
        train_stamps = sp.csr_matrix(
            (stamps[~in_test], (users[~in_test], items[~in_test])), shape=shape, dtype=np.int64
        )
    return Split(train, test, train_stamps)


def _first_share_per_group(
    groups: npt.NDArray[np.int64], ratio: float, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    """True for the first round(ratio * n) of each group's members, in random order."""
    order = rng.permutation(len(groups))
    order = order[np.argsort(groups[order], kind="stable")]
    sizes = np.bincount(groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    grouped = groups[order]
    rank = np.arange(len(order)) - starts[grouped]
    keep = np.zeros(len(groups), dtype=bool)
    keep[order] = rank < np.round(ratio * sizes[grouped])
    return keep


def _latest_per_group(
    groups: npt.NDArray[np.int64],
    stamps: npt.NDArray[np.int64],
    n: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """True for each group's n latest members (ties broken at random) when it has more than n."""
    tiebreak = rng.random(len(groups))
    order = np.lexsort((tiebreak, -stamps, groups))
    sizes = np.bincount(groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    grouped = groups[order]
    rank = np.arange(len(order)) - starts[grouped]
    latest = np.zeros(len(groups), dtype=bool)
    latest[order] = (rank < n) & (sizes[grouped] > n)
    return latest


def ranking_metrics(
    scorer: Scorer,
    split: Split,
    k: int,
    discount: float = 0.0,
    categories: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Metrics at ``k`` (see the module docstring) of the ranking that ``scorer`` gives,
    re-ranked by the popularity ``discount`` (0: none). ``categories``: each item's categories
    (one entry per column of the split), for the per-category exposure."""
    train, test = split.train, split.test
    n_users, n_items = train.shape
    users = np.flatnonzero(np.diff(test.indptr))
    if len(users) == 0:
        raise DataError("the test part is empty: nothing to evaluate")
    k = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    totals = dict.fromkeys(("precision", "recall", "ndcg", "map", "hit_rate"), 0.0)
    counts = np.bincount(train.indices, minlength=n_items)
    popularity = counts / max(n_users, 1)
    popularity_sum = 0.0
    exposure = np.zeros(n_items, dtype=np.int64)
    for start in range(0, len(users), USER_BATCH):
        batch = users[start : start + USER_BATCH]
        scores = np.array(scorer(batch), dtype=np.float32, copy=True)
        seen = train[batch]
        scores[np.repeat(np.arange(len(batch)), np.diff(seen.indptr)), seen.indices] = -np.inf
        top = _top(scores, k, counts, discount)
        relevant = test[batch]
        hits = np.asarray(relevant[np.arange(len(batch))[:, None], top].todense()) > 0
        n_relevant = np.diff(relevant.indptr).astype(np.float64)
        n_hits = hits.sum(axis=1)
        ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(int) - 1]
        precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
        totals["precision"] += float((n_hits / k).sum())
        totals["recall"] += float((n_hits / n_relevant).sum())
        totals["ndcg"] += float(((hits * discounts).sum(axis=1) / ideal).sum())
        totals["map"] += float(
            ((precision_at * hits).sum(axis=1) / np.minimum(n_relevant, k)).sum()
        )
        totals["hit_rate"] += float((n_hits > 0).sum())
        exposure += np.bincount(top.ravel(), minlength=n_items)
        popularity_sum += float(popularity[top].sum())
    metrics: dict[str, Any] = {
        f"{name}@{k}": round(value / len(users), 6) for name, value in totals.items()
    }
    metrics[f"coverage@{k}"] = round(float((exposure > 0).mean()), 6)
    metrics[f"mean_popularity@{k}"] = round(popularity_sum / (len(users) * k), 6)
    metrics.update(exposure_metrics(exposure, counts, n_users, k, categories))
    metrics["users_evaluated"] = len(users)
    return metrics


def _top(
    scores: npt.NDArray[np.float32],
    k: int,
    counts: npt.NDArray[np.int64],
    discount: float,
) -> npt.NDArray[np.int64]:
    """Each row's top ``k`` items, best first (scores: (users, n_items)): by score, or with
    a discount, the best ``discount_pool(k)`` by score re-ranked by the serving rule."""
    n_items = scores.shape[1]
    pool = discount_pool(k, n_items) if discount > 0 else k
    top = np.argpartition(-scores, pool - 1, axis=1)[:, :pool] if pool < n_items else None
    if top is None:
        top = np.broadcast_to(np.arange(n_items), scores.shape)
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    if discount > 0:
        adjusted = popularity_adjusted(np.take_along_axis(scores, top, 1), counts[top], discount)
        top = np.take_along_axis(top, np.argsort(-adjusted, axis=1, kind="stable"), 1)
    return np.ascontiguousarray(top[:, :k])


def exposure_metrics(
    exposure: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    n_users: int,
    k: int,
    categories: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Gini, long-tail share, novelty (and per-category exposure) at ``k`` of the slots
    ``exposure`` (per item), against the training popularity ``counts`` of ``n_users``."""
    metrics: dict[str, Any] = {
        f"gini@{k}": round(bias.gini(exposure), 6),
        f"long_tail_share@{k}": round(
            bias.long_tail_share(exposure, bias.long_tail_mask(counts)), 6
        ),
        f"novelty@{k}": round(bias.novelty(exposure, bias.self_information(counts, n_users)), 6),
    }
    if categories is not None:
        metrics[f"category_exposure@{k}"] = bias.category_exposure(exposure, categories)
    return metrics


def factor_scorer(
    user_factors: npt.NDArray[np.float32], item_factors: npt.NDArray[np.float32]
) -> Scorer:
    return lambda users: user_factors[users] @ item_factors.T


def popularity_scorer(train: sp.csr_matrix) -> Scorer:
    counts = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def random_scorer(n_items: int, seed: int) -> Scorer:
    rng = np.random.default_rng(seed)
    return lambda users: rng.random((len(users), n_items), dtype=np.float32)


BPR_BASELINE = TrainSettings(
    algorithm="bpr", factors=64, iterations=100, regularization=0.01, learning_rate=0.01
)


def evaluate_model(
    split: Split,
    settings: TrainSettings,
    k: int,
    progress: bool = False,
    categories: Sequence[Sequence[str]] | None = None,
    discounts: Sequence[float] = (),
) -> dict[str, Any]:
    """Fit ``settings`` on the training part and measure it on the test part; with
    ``discounts``, also the trade-off curve (``popularity_discount``: one entry per value)."""
    factors = fit_factors(split.train, settings, progress=progress)
    scorer = factor_scorer(factors.user_factors, factors.item_factors)
    metrics = ranking_metrics(scorer, split, k, categories=categories)
    result = {**metrics, "fit_seconds": round(factors.seconds, 3), "device": factors.device}
    if discounts:
        result["popularity_discount"] = discount_curve(scorer, split, k, discounts, metrics)
    return result


def discount_curve(
    scorer: Scorer,
    split: Split,
    k: int,
    discounts: Sequence[float],
    undiscounted: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The metrics of ``scorer``'s rankings at each popularity discount: the accuracy /
    exposure trade-off. ``undiscounted``: the metrics at 0, if already measured."""
    curve = []
    for discount in discounts:
        if discount == 0 and undiscounted is not None:
            metrics = undiscounted
        else:
            metrics = ranking_metrics(scorer, split, k, discount=discount)
        kept = {name: value for name, value in metrics.items() if "category_exposure" not in name}
        curve.append({"popularity_discount": discount, **kept})
    return curve


def evaluate_with_baselines(
    split: Split,
    settings: TrainSettings,
    k: int,
    seed: int,
    progress: bool = False,
    categories: Sequence[Sequence[str]] | None = None,
    discounts: Sequence[float] = (),
) -> dict[str, Any]:
    """The model and, in the same run, popularity, random and (for ALS) BPR; the trade-off
    curve of ``discounts`` for the model only."""
    started = time.perf_counter()
    model = evaluate_model(split, settings, k, progress, categories, discounts)
    baselines: dict[str, Any] = {
        "popularity": ranking_metrics(popularity_scorer(split.train), split, k, 0.0, categories),
        "random": ranking_metrics(
            random_scorer(split.train.shape[1], seed), split, k, 0.0, categories
        ),
    }
    if settings.algorithm == "als":
        bpr = BPR_BASELINE.model_copy(update={"seed": settings.seed, "device": settings.device})
        baselines["bpr"] = evaluate_model(split, bpr, k, categories=categories)
    return {
        "model": model,
        "baselines": baselines,
        "seconds": round(time.perf_counter() - started, 2),
    }


def not_evaluated(
    split: Split, protocol: Protocol, ratio: float = 0.75, last_n: int = 1
) -> dict[str, Any]:
    """Which users and items the split leaves out of the metrics, how many, and why.

    Users without a test interaction are not evaluated; items without one can never be a
    hit; test items without a training interaction cannot be ranked from what the model
    learned about them (it learned nothing), so their test interactions are hits only by
    chance.
    """
    train_users = np.diff(split.train.indptr)
    test_users = np.diff(split.test.indptr)
    train_items = np.bincount(split.train.indices, minlength=split.train.shape[1])
    test_items = np.bincount(split.test.indices, minlength=split.test.shape[1])
    user_total, item_total = train_users + test_users, train_items + test_items
    users_out = (user_total > 0) & (test_users == 0)
    items_out = (item_total > 0) & (test_items == 0)
    unseen = (test_items > 0) & (train_items == 0)
    largest = _largest_group_kept_whole(ratio)
    if protocol == "stratified-item":
        user_reason = (
            "none of their interactions was drawn into the test part (each item keeps "
            f"round({ratio} x n) of its n interactions for training)"
        )
        item_reason = (
            f"items with <= {largest} interactions never reach the test part under "
            f"stratified-item at ratio {ratio} (round({ratio} x n) = n)"
            if largest
            else "no test interaction was drawn"
        )
    elif protocol == "stratified-user":
        user_reason = (
            f"users with <= {largest} interactions keep them all for training "
            f"(round({ratio} x n) = n)"
        )
        item_reason = "no test interaction was drawn for them"
    else:
        user_reason = f"users with <= {last_n} interactions keep them all for training"
        item_reason = f"not among any user's {last_n} latest interactions"
    return {
        "users": {
            "count": int(users_out.sum()),
            "of": int((user_total > 0).sum()),
            "reason": user_reason,
        },
        "items_never_in_test": {
            "count": int(items_out.sum()),
            "of": int((item_total > 0).sum()),
            "reason": item_reason,
        },
        "test_items_not_in_training": {
            "count": int(unseen.sum()),
            "test_interactions": int(test_items[unseen].sum()),
            "reason": "the model learned nothing about them: their test interactions are "
            "hits only by chance",
        },
    }


def _largest_group_kept_whole(ratio: float, cap: int = 10_000) -> int:
    """The largest n for which a stratified split keeps all n members for training
    (round(ratio x n) = n, as :func:`_first_share_per_group` rounds): 2 at 0.75."""
    n = 0
    while n < cap and np.round(ratio * (n + 1)) == n + 1:
        n += 1
    return n
