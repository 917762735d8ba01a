"""Popularity discount: re-ranking a candidate pool towards less popular items (docs/bias.md).

The rule, for a pool of candidates with scores ``s`` and training popularity ``p`` (users who
interacted with the item; an item added since training has 0), and a discount ``d`` in [0, 1]::

    relevance   = (s - min s) / (max s - min s)                    in [0, 1], 1 = best score
    unpopularity = (max L - L) / (max L - min L),  L = log(1 + p)   in [0, 1], 1 = least popular
    adjusted    = (1 - d) * relevance + d * unpopularity

min and max are over the pool (a span of 0 counts as 1). Both terms are scaled to the pool, so
the rule does not depend on the sign or the scale of the scores (ALS inner products can be
negative) and ``d`` means the same for every user: at 0 the order is the score order, at 1
the least popular candidate comes first, at 0.5 the whole range of scores in the pool weighs
as much as the whole range of (log) popularity. The pool is the search's best candidates
(``discount_pool``), so the discount never reaches below them for an item.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# The candidates a discounted query re-ranks, as diversity and boosts do.
POOL_FACTOR = 3
POOL_EXTRA = 50


def discount_pool(k: int, num_items: int) -> int:
    """Candidates a query with a popularity discount re-ranks before cutting to k."""
    return min(num_items, max(POOL_FACTOR * k, k + POOL_EXTRA))


def popularity_adjusted(
    scores: npt.NDArray[np.floating],
    popularity: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    discount: float,
) -> npt.NDArray[np.float64]:
    """The discounted values of candidates (module docstring), row by row.

    Parameters
    ----------
    scores : float, shape (n,) or (rows, n)
        The candidates' scores; ``-inf`` (a candidate that may not be returned) stays ``-inf``.
    popularity : float or int, same shape as ``scores``
        The candidates' training popularity (>= 0).
    discount : float in [0, 1]

    Returns
    -------
    float64, same shape: larger is better.
    """
    wide = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(wide)
    low = np.min(np.where(finite, wide, np.inf), axis=-1, keepdims=True)
    high = np.max(np.where(finite, wide, -np.inf), axis=-1, keepdims=True)
    relevance = (wide - low) / _span(high - low)
    logs = np.log1p(np.maximum(np.asarray(popularity, dtype=np.float64), 0.0))
    most = logs.max(axis=-1, keepdims=True, initial=0.0)
    least = logs.min(axis=-1, keepdims=True, initial=np.inf)
    unpopularity = (most - logs) / _span(most - least)
    adjusted = (1.0 - discount) * relevance + discount * unpopularity
    return np.where(finite, adjusted, -np.inf)


def _span(width: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A range to divide by: 1 where it is 0 (all equal) or not finite (nothing finite)."""
    return np.where(np.isfinite(width) & (width > 0), width, 1.0)


def discount_order(
    scores: npt.NDArray[np.floating],
    popularity: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    discount: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The candidates' positions best first by the discounted value, and those values in that
    order. scores, popularity : shape (n,); ties keep the given order (a pool sorted by score
    keeps its order at ``discount`` 0)."""
    adjusted = popularity_adjusted(scores, popularity, discount)
    order = np.argsort(-adjusted, kind="stable").astype(np.int64)
    return order, adjusted[order]


def candidate_popularity(
    item_popularity: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """The popularity of ``labels``, float32 shape (n,): the model's for its items, 0 for
    items added since training (labels at or past the model's item count)."""
    n = len(item_popularity)
    known = labels < n
    if known.all():
        return item_popularity[labels]
    out = np.zeros(len(labels), dtype=np.float32)
    out[known] = item_popularity[labels[known]]
    return out
