"""Candidate search: top-k over an ItemIndex plus the items added since training.

Labels are item rows: the model's items first, then the added items (``num_items + i``).
Every strategy (recommend, similar items, image search) finds its candidates here.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from recsvc.core.added import AddedItems
from recsvc.core.catalogue import CATEGORY, Catalogue
from recsvc.core.model import Model
from recsvc.core.queries import CategoryFilter, ScoredItem
from recsvc.index import ItemIndex

# The added items' vectors in an index's space, and which of them may be returned (None: all).
Extra = tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]

NO_ROWS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
NO_ROWS.flags.writeable = False  # shared by every query that lists no ids

# Below this share of allowed items, a category filter is served by exact search over the
# allowed items: over-fetching from HNSW would have to read most of the graph to find k.
_EXACT_FILTER_SHARE = 0.05

# Below this share of allowed items, an inner-product graph search also scores exactly the
# allowed items of largest norm: min(1 / share, _ALLOWED_HEAD_FACTOR) times as many as the
# index's exact head holds. The head is what keeps the graph's recall up (the largest vectors
# dominate inner-product top-k and are what the graph misses most), a filter leaves only its
# share of it, and a filter's top-k lies deeper in the unfiltered ranking (about k / share).
# Measured on the bench model (bench/filters.py): recall@10 0.54 -> 1.00 at a 10% share.
_NARROW_FILTER_SHARE = 0.9
_ALLOWED_HEAD_FACTOR = 4.0

# Up to this many label x blocked comparisons, one broadcast compare beats np.isin, whose
# sorting costs tens of microseconds even on a few dozen elements.
_BROADCAST_COMPARISONS = 8192


def not_in(labels: npt.NDArray[np.int64], blocked: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Mask of the labels that are not blocked."""
    if not len(blocked):
        return np.ones(len(labels), dtype=bool)
    if len(labels) * len(blocked) <= _BROADCAST_COMPARISONS:
        found: npt.NDArray[np.bool_] = (labels[:, None] == blocked[None, :]).any(axis=1)
        return ~found
    return ~np.isin(labels, blocked)


class CandidateSearch:
    """Searches one model version's indexes, merging in the added items.

    Parameters
    ----------
    model : the model version searched
    exact : search every index exactly instead of through its graph (small catalogues)
    """

    def __init__(self, model: Model, exact: bool) -> None:
        self.model = model
        self.exact = exact
        self._norm_order: dict[int, npt.NDArray[np.int64]] = {}  # by id of the model's indexes

    def rows(self, ids: Collection[str], added: AddedItems) -> npt.NDArray[np.int64]:
        """Labels of the known ids among ``ids`` (model items, then added items)."""
        if not ids:
            return NO_ROWS
        if not len(added):
            return self.model.items.rows(ids)
        n = self.model.info.num_items
        found = [
            row if (row := self.model.items.row(i)) is not None else n + added.rows[i]
            for i in ids
            if i in self.model.items or i in added.rows
        ]
        return np.asarray(found, dtype=np.int64)

    def allowed_mask(
        self,
        categories: CategoryFilter,
        catalogue: Catalogue,
        matching: npt.NDArray[np.bool_] | None = None,
    ) -> npt.NDArray[np.bool_] | None:
        """Boolean mask over the catalogue's labels of what may be returned: servable items
        that the category filter and ``matching`` (a filter expression's mask) let through.
        None when everything may be returned; ``catalogue.servable`` itself (not a copy) when
        only hidden items are kept out."""
        mask = matching
        if categories.active:
            column = catalogue.columns[CATEGORY]
            chosen = np.ones(catalogue.size, dtype=bool)
            if categories.include:
                chosen &= np.isin(column.codes, column.codes_of(categories.include))
            if categories.exclude:
                chosen &= ~np.isin(column.codes, column.codes_of(categories.exclude))
            mask = chosen if mask is None else mask & chosen
        if catalogue.servable is not None:
            mask = catalogue.servable if mask is None else mask & catalogue.servable
        return mask

    def search(
        self,
        index: ItemIndex,
        vector: npt.NDArray[np.float32],
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
        rows: npt.NDArray[np.int64] | None = None,
        extra: Extra | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k labels and scores that are not blocked and are allowed.

        ``rows`` maps the index's labels to item rows when they differ (the visual index covers
        only the items that have an image). ``extra``: the added items' vectors in the index's
        space (and which of them may be returned), searched exactly and merged.
        """
        labels, scores = self._search_index(index, vector, k, blocked, allowed, rows)
        if extra is None or not len(extra[0]):
            return labels, scores
        vectors, usable = extra
        extra_labels = self.model.info.num_items + np.arange(len(vectors), dtype=np.int64)
        extra_scores = vectors @ as_query(index, vector)
        keep = not_in(extra_labels, blocked)
        if usable is not None:
            keep &= usable
        if allowed is not None:
            keep &= allowed[extra_labels]
        labels = np.concatenate([labels, extra_labels[keep]])
        scores = np.concatenate([scores, extra_scores[keep].astype(np.float32)])
        order = np.argsort(-scores, kind="stable")[:k]
        return labels[order], scores[order]

    def _search_index(
        self,
        index: ItemIndex,
        vector: npt.NDArray[np.float32],
        k: int,
        blocked: npt.NDArray[np.int64],
        allowed: npt.NDArray[np.bool_] | None,
        rows: npt.NDArray[np.int64] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if rows is not None:
            labels, scores = self._search_index(
                index,
                vector,
                k,
                np.flatnonzero(np.isin(rows, blocked)),
                allowed[rows] if allowed is not None else None,
                None,
            )
            return rows[labels], scores
        share = 1.0
        if allowed is not None:
            allowed = allowed[: index.size]
            share = float(allowed.mean())
        if allowed is not None and share < _EXACT_FILTER_SHARE:
            candidates = np.flatnonzero(allowed)
            candidates = candidates[not_in(candidates, blocked)]
            scores = index.vectors[candidates] @ as_query(index, vector)
            order = np.argsort(-scores, kind="stable")[:k]
            return candidates[order].astype(np.int64), scores[order].astype(np.float32)
        # Over-fetch enough to survive the exclusions; widen while too few remain.
        fetch = k + len(blocked)
        while True:
            labels, scores = index.search(vector, fetch, exact=self.exact)
            keep = not_in(labels, blocked)
            if allowed is not None:
                keep &= allowed[labels]
            if keep.sum() >= k or fetch >= index.size:
                labels, scores = labels[keep][:k], scores[keep][:k]
                break
            fetch = min(index.size, fetch * 4)
        narrow = allowed is not None and share < _NARROW_FILTER_SHARE
        if narrow and len(index.head) and not self.exact:
            assert allowed is not None
            head = self._allowed_head(index, allowed, share)
            head = head[not_in(head, blocked)]
            head_scores = (index.vectors[head] @ as_query(index, vector)).astype(np.float32)
            labels, scores = _best(
                np.concatenate([labels, head]), np.concatenate([scores, head_scores]), k
            )
        return labels, scores

    def _allowed_head(
        self, index: ItemIndex, allowed: npt.NDArray[np.bool_], share: float
    ) -> npt.NDArray[np.int64]:
        """The allowed items of largest norm (see ``_NARROW_FILTER_SHARE``), labels int64:
        what the head is to an unfiltered search. Reads only about ``wanted / share`` labels
        of the norm order, computed once per index."""
        order = self._norm_order.get(id(index))
        if order is None:  # once per index (a benign race: both threads compute the same)
            norms = np.einsum("ij,ij->i", index.vectors, index.vectors)
            order = np.argsort(-norms, kind="stable").astype(np.int64)
            self._norm_order[id(index)] = order
        wanted = round(min(_ALLOWED_HEAD_FACTOR, 1 / max(share, 1e-9)) * len(index.head))
        chunk = order[: math.ceil(1.5 * wanted / max(share, 1e-9))]
        head = chunk[allowed[chunk]]
        if len(head) < wanted and len(chunk) < len(order):
            head = order[allowed[order]]
        return head[:wanted]

    def popular(
        self, k: int, blocked: npt.NDArray[np.int64], allowed: npt.NDArray[np.bool_] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The k most popular model items that are not blocked and are allowed, with their
        popularity as the score (the answer when there is nothing to search with)."""
        order = self.model.popular_order
        keep = ~np.isin(order, blocked)
        if allowed is not None:
            keep &= allowed[order]
        labels = order[keep][:k]
        return labels, self.model.item_popularity[labels]

    def unit_factors(
        self, labels: npt.NDArray[np.int64], added: AddedItems
    ) -> npt.NDArray[np.float32]:
        """L2-normalised item factors of ``labels`` (model or added items)."""
        n = self.model.info.num_items
        base = self.model.similar_index.vectors
        if not len(added) or labels.max(initial=-1) < n:
            return base[labels]
        return np.vstack([base, added.unit_factors])[labels]

    def scored(
        self,
        labels: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        added: AddedItems,
    ) -> list[ScoredItem]:
        """The labels as the caller's item ids, with their scores."""
        ids = self.model.items.ids
        n = len(ids)
        # Python ints and floats first: iterating numpy arrays makes a scalar object per element.
        return [
            ScoredItem(ids[label] if label < n else added.ids[label - n], score)
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
        ]


def _best(
    labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The k best distinct labels, best first (a label listed twice has the same score)."""
    labels, first = np.unique(labels, return_index=True)
    scores = scores[first]
    order = np.argsort(-scores, kind="stable")[:k]
    return labels[order], scores[order]


def as_query(index: ItemIndex, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The query as the index scores it: normalised for a cosine index."""
    if index.metric == "cosine":
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
    return vector
