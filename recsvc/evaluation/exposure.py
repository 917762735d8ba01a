"""Exposure (bias) metrics of recommended lists (docs/bias.md).

``exposure`` is, for each catalogue item, how many recommended slots it took (all evaluated
users' top-k lists together); ``popularity`` is how many training users interacted with it.

- Gini coefficient of exposure, over the whole catalogue (items never recommended count as
  0): 0 when every item is recommended equally often, (n - 1) / n when one item takes every
  slot;
- long-tail share: the share of slots that go to items outside the head, the top
  ``HEAD_SHARE`` (20%) of the catalogue by training popularity (ties broken by item order);
- novelty: mean self-information of the recommended items, -log2(popularity share), the
  share being the item's training users / training users (an item nobody interacted with in
  training counts as one user, so that its information is finite);
- per-category exposure against catalogue share: each item's weight (a slot, or a catalogue
  entry) is split equally among its categories; items without one are left out of both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

HEAD_SHARE = 0.2


def gini(exposure: npt.NDArray[np.integer] | npt.NDArray[np.floating]) -> float:
    """Gini coefficient of ``exposure`` (shape (n_items,), >= 0); 0 when it is all zeros."""
    values = np.sort(np.asarray(exposure, dtype=np.float64))
    n, total = len(values), float(values.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * values).sum() / (n * total))


def long_tail_mask(
    popularity: npt.NDArray[np.integer] | npt.NDArray[np.floating], head_share: float = HEAD_SHARE
) -> npt.NDArray[np.bool_]:
    """True for the items outside the head: the ``round(head_share * n)`` most popular
    (shape (n_items,); ties in popularity go to the lower item index)."""
    order = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")
    tail = np.ones(len(order), dtype=bool)
    tail[order[: round(head_share * len(order))]] = False
    return tail


def long_tail_share(
    exposure: npt.NDArray[np.integer] | npt.NDArray[np.floating], tail: npt.NDArray[np.bool_]
) -> float:
    """Share of the recommended slots that went to long-tail items (``tail`` mask)."""
    total = float(np.sum(exposure))
    return float(np.sum(exposure[tail])) / total if total > 0 else 0.0


def self_information(
    popularity: npt.NDArray[np.integer] | npt.NDArray[np.floating], n_users: int
) -> npt.NDArray[np.float64]:
    """-log2(popularity share) of each item, shape (n_items,); popularity 0 counts as 1."""
    counts = np.maximum(np.asarray(popularity, dtype=np.float64), 1.0)
    return np.asarray(-np.log2(counts / max(n_users, 1)), dtype=np.float64)


def novelty(
    exposure: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    information: npt.NDArray[np.float64],
) -> float:
    """Mean self-information over the recommended slots (``information`` per item)."""
    total = float(np.sum(exposure))
    return float(np.dot(exposure, information)) / total if total > 0 else 0.0


def category_exposure(
    exposure: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    categories: Sequence[Sequence[str]],
) -> dict[str, dict[str, float]]:
    """For each category: its share of the recommended slots (``exposure``), its share of the
    catalogue, and their ratio (above 1: recommended more than its catalogue share).

    categories : one entry per item (the same order as ``exposure``), its categories.
    Sorted by catalogue share, largest first.
    """
    slots: dict[str, float] = {}
    entries: dict[str, float] = {}
    for item, names in enumerate(categories):
        if not names:
            continue
        part = 1.0 / len(names)
        shown = float(exposure[item]) * part
        for name in names:
            slots[name] = slots.get(name, 0.0) + shown
            entries[name] = entries.get(name, 0.0) + part
    slot_total, entry_total = sum(slots.values()), sum(entries.values())
    out: dict[str, dict[str, float]] = {}
    for name in sorted(entries, key=lambda c: (-entries[c], c)):
        shown = slots[name] / slot_total if slot_total > 0 else 0.0
        share = entries[name] / entry_total
        out[name] = {
            "exposure": round(shown, 6),
            "catalogue": round(share, 6),
            "ratio": round(shown / share, 4) if share > 0 else 0.0,
        }
    return out
