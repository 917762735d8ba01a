"""What the business rules do to one query's candidates (docs/rules.md).

Order, as the planner applies it:

1. **Boosts** rescore the candidate pool and re-sort it (the pool is larger than k when a
   boost applies, as for diversity, so that boosted items from further down can move up).
   A score ``s >= 0`` becomes ``s * factor``, a negative one ``s / factor``: a factor above 1
   always moves an item up, below 1 always down. Several boosts that match one item multiply.
2. The popularity discount, when the query has one, re-orders the pool (recsvc.core.popularity;
   boosted scores are what it discounts).
3. The list is cut to k, or diversity (MMR) picks k from the re-scored pool.
4. **Pins** put their items at their positions (1-based), in order of position; a pinned item
   already in the list moves there, one that is not enters there and the last item leaves.
   Two pins at one position: the one first in the document gets it, the other goes below it.
   A pin further down than the list is long goes at its end; one beyond k applies not at all.

A pinned item is left out (the pin does nothing) when it is not one the query could return:
unknown to the model and to the added items (or added without a vector), hidden or deleted,
kept out by the request's categories or filter, listed in exclude_item_ids, or (with
exclude_seen) already seen by the user (the training history and the interactions since)
or in recent_item_ids. Each item a rule touched carries the rule's name (``ScoredItem.rule``):
a pin's, else the first boost (in document order) that changed its score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.core.catalogue import Catalogue
from recsvc.core.queries import ScoredItem
from recsvc.core.rules import QueryRules

# How many candidates a boosted query ranks (as diversity does): enough for a boost to lift
# an item from well below the k-th place.
BOOST_POOL_FACTOR = 3
BOOST_POOL_EXTRA = 50


@dataclass(frozen=True)
class PlacedPin:
    """A pin that applies to the query: its item may be returned."""

    name: str
    label: int
    position: int


@dataclass(frozen=True)
class QueryEffects:
    """The rules of one query, resolved against its catalogue: each boost's factor and item
    mask (bool over the catalogue's labels), and the pins that may be placed."""

    boosts: tuple[tuple[str, float, npt.NDArray[np.bool_]], ...]
    pins: tuple[PlacedPin, ...]


def boost_pool(k: int, num_items: int) -> int:
    """Candidates a query with boosts ranks before cutting to k."""
    return min(num_items, max(BOOST_POOL_FACTOR * k, k + BOOST_POOL_EXTRA))


def resolve(
    rules: QueryRules,
    catalogue: Catalogue,
    label_of: Callable[[str], int | None],
    blocked: npt.NDArray[np.int64],
    allowed: npt.NDArray[np.bool_] | None,
    k: int,
) -> QueryEffects | None:
    """The effects of ``rules`` on a query that may return ``allowed`` (None: everything)
    except ``blocked``; ``label_of`` finds an item's label (None: not servable by label).
    None when nothing is left to do."""
    boosts = tuple((b.name, b.factor, b.mask(catalogue)) for b in rules.boosts)
    pins: list[PlacedPin] = []
    pinned: set[int] = set()
    for pin in rules.pins:
        if pin.position > k:
            continue
        label = label_of(pin.item_id)
        if label is None or label >= catalogue.size or label in pinned:
            continue
        if allowed is not None and not allowed[label]:
            continue
        if len(blocked) and bool((blocked == label).any()):
            continue
        pinned.add(label)
        pins.append(PlacedPin(pin.name, label, pin.position))
    if not boosts and not pins:
        return None
    return QueryEffects(boosts, tuple(pins))


def apply_boosts(
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    boosts: tuple[tuple[str, float, npt.NDArray[np.bool_]], ...],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], list[str]]:
    """The candidates re-scored by the boosts and re-sorted, best first, with the name of the
    rule that boosted each (empty where none did).

    labels : int64, shape (n,); scores : float32, shape (n,), best first
    """
    factors = np.ones(len(labels), dtype=np.float64)
    first = np.full(len(labels), -1, dtype=np.int64)
    for number, (_, factor, mask) in enumerate(boosts):
        hit = mask[labels]
        factors[hit] *= factor
        first[hit & (first < 0)] = number
    if not (first >= 0).any():
        return labels, scores, [""] * len(labels)
    wide = scores.astype(np.float64)
    boosted = np.where(wide >= 0, wide * factors, wide / factors).astype(np.float32)
    order = np.argsort(-boosted, kind="stable")
    names = [boosts[n][0] if n >= 0 else "" for n in first[order].tolist()]
    return labels[order], boosted[order], names


def place_pins(
    items: list[ScoredItem],
    labels: list[int],
    pins: tuple[PlacedPin, ...],
    k: int,
    new_item: Callable[[int], ScoredItem],
) -> list[ScoredItem]:
    """``items`` (whose labels are ``labels``) with the pins placed, at most k long.
    ``new_item`` makes the entry of a pinned label that is not in the list (its own score)."""
    if not pins:
        return items
    pinned = {pin.label for pin in pins}
    by_label = dict(zip(labels, items, strict=True))
    rest = [item for label, item in zip(labels, items, strict=True) if label not in pinned]
    # Ascending positions; at one position, the later rule first, so the earlier one is
    # inserted last, in front of it.
    ordered = sorted(enumerate(pins), key=lambda entry: (entry[1].position, -entry[0]))
    result = rest
    for _, pin in ordered:
        item = by_label.get(pin.label) or new_item(pin.label)
        item.rule = pin.name
        result.insert(min(pin.position - 1, len(result)), item)
    return result[:k]
