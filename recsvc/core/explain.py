"""Explanations: why each recommended item is there (``RecommendQuery.explain``).

Reasons are computed for the final k items only, after ranking, and only when a query asks:
with ``explain`` off, the Recommend path pays one bool check. docs/explanations.md describes
each kind of reason for callers.

ALS: the exact decomposition of a score into the user's history items. The user vector is
the closed-form ALS solution (recsvc.core.foldin)

    x_u = W_u Y^T C_u p_u,   W_u = (YtY + Y^T (C_u - I) Y + reg I)^-1

so the score of item i is a sum over the history items j:

    y_i . x_u = sum_j c_uj (y_i^T W_u y_j)

(implicit's ``explain`` does the same). BPR has no closed form: its reasons are the history
items nearest to the item in the factor space (cosine), as for ALS users whose history holds
no model item.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy.linalg import lapack

from recsvc.core.added import AddedItems
from recsvc.core.candidates import NO_ROWS, CandidateSearch
from recsvc.core.foldin import model_weights
from recsvc.core.model import Model
from recsvc.core.queries import Reason, ReasonKind, RecommendQuery, ScoredItem
from recsvc.core.state import UserState

# History items shown per recommended item (the strongest); a rule and a visual neighbour,
# where they apply, come in addition. The full ALS decomposition sums to the score; the shown
# part is its largest terms.
MAX_HISTORY_REASONS = 3
# Nearest model items read from the visual index to find an image-only item's neighbour with
# interactions (the others are image-only too).
_VISUAL_NEIGHBOURS = 16


class Source(StrEnum):
    """Where a query's user vector came from."""

    MODEL = "model"  # the model's own user factors (training history)
    FOLDED = "folded"  # folded in: training history plus what was recorded since
    SESSION = "session"  # folded in from the session's recent items


@dataclass(frozen=True)
class History:
    """The interactions a query's user vector was computed from.

    labels : int64, shape (n,): distinct labels (model rows, then added items ``n + j``)
    weights : float32, shape (n,): summed raw interaction weights (before the model's transform)
    source : where the vector came from
    """

    labels: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    source: Source


def history_of(
    search: CandidateSearch,
    query: RecommendQuery,
    state: UserState,
    user_row: int | None,
    from_state: bool,
    added: AddedItems,
) -> History:
    """The history behind the vector ``recsvc.core.planner.plan_query`` chose: the folded-in
    one (``from_state``: training history unless forgotten, plus ``state.history``, less the
    dislikes, as :func:`recsvc.core.foldin.fold_in_histories` folds it), the model's factors
    of ``user_row`` (its training history), or the session (``query.recent_item_ids``, weight
    1 each)."""
    model = search.model
    training = (NO_ROWS, np.empty(0, np.float32))
    if user_row is not None:
        start, end = model.user_items.indptr[user_row], model.user_items.indptr[user_row + 1]
        training = (
            model.user_items.indices[start:end].astype(np.int64),
            model.user_items.data[start:end].astype(np.float32),
        )
    if not from_state and user_row is not None:
        return History(*training, Source.MODEL)
    if not from_state:
        return _history(search, dict.fromkeys(query.recent_item_ids, 1.0), added, Source.SESSION)
    ids = model.items.ids
    merged = dict(
        zip([ids[row] for row in training[0].tolist()], training[1].tolist(), strict=True)
    )
    for item_id, weight in state.history.items():
        merged[item_id] = merged.get(item_id, 0.0) + weight
    for item_id in state.dislikes:
        merged.pop(item_id, None)
    return _history(search, merged, added, Source.FOLDED)


def _history(
    search: CandidateSearch, weights: dict[str, float], added: AddedItems, source: Source
) -> History:
    labels: list[int] = []
    kept: list[float] = []
    n = search.model.info.num_items
    for item_id, weight in weights.items():
        row = search.model.items.row(item_id)
        if row is None and item_id in added.rows:
            row = n + added.rows[item_id]
        if row is not None:
            labels.append(row)
            kept.append(weight)
    return History(np.asarray(labels, dtype=np.int64), np.asarray(kept, dtype=np.float32), source)


def als_contributions(
    model: Model,
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
    targets: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    """The exact ALS decomposition of the targets' scores into the history items' parts.

    Parameters
    ----------
    model : an ALS model
    rows : int64, shape (n,): distinct model item rows of the history (n >= 1)
    weights : float32, shape (n,): their raw weights (the model's transform is applied here)
    targets : float32, shape (k, f): the factors of the items to explain

    Returns
    -------
    float64, shape (n, k): ``out[j, i] = c_j * y_i^T W y_j``; column i sums to
    ``targets[i] . x`` with ``x`` the closed-form user vector (:func:`closed_form_vector`).
    """
    confidence, history, system = _als_system(model, rows, weights)
    solved = _solve(system, targets.astype(np.float64).T)  # W y_i, shape (f, k)
    parts: npt.NDArray[np.float64] = confidence[:, None] * (history @ solved)
    return parts


def closed_form_vector(
    model: Model, rows: npt.NDArray[np.int64], weights: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The closed-form ALS user vector of a history (float64, shape (f,)): the vector that
    :func:`als_contributions` decomposes; fold-in computes the same in float32."""
    confidence, history, system = _als_system(model, rows, weights)
    return _solve(system, (history.T @ confidence)[:, None])[:, 0]


def _als_system(
    model: Model, rows: npt.NDArray[np.int64], weights: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(confidence c, shape (n,); history factors Y_u, shape (n, f); the system
    W_u^-1 = YtY + Y_u^T (C_u - I) Y_u + reg I, shape (f, f)), in float64."""
    confidence = np.float64(model.alpha) * model_weights(model, weights).astype(np.float64)
    history = model.item_factors[rows].astype(np.float64)
    system = (history.T * (confidence - 1)) @ history
    system += model.yty
    system.flat[:: system.shape[0] + 1] += model.regularization  # + reg I
    return confidence, history, system


def _solve(
    system: npt.NDArray[np.float64], right: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``system^-1 right`` (right: shape (f, m)). LAPACK's Cholesky solver directly: the
    system is symmetric positive definite but for extreme weights (then LU), and scipy's
    checking wrappers cost more than the solve at these sizes."""
    _, solved, info = lapack.dposv(system, right, lower=1)
    if info != 0:
        solved = np.linalg.solve(system, right)
    result: npt.NDArray[np.float64] = solved
    return result


def explain_items(
    search: CandidateSearch,
    history: History,
    items: list[ScoredItem],
    added: AddedItems,
) -> None:
    """Give each of a personalised answer's items its reasons (in place): the rule that moved
    it, its visual neighbour when it entered by its image alone, and the history items behind
    it (ALS: the largest parts of its score; BPR: the nearest by cosine).

    For ALS on the model's own user factors, an item's score becomes the closed-form score
    its parts sum to (implicit fits those factors by a few conjugate-gradient steps against
    the previous sweep's item factors, so they differ slightly); folded-in and session
    vectors are that closed form already. The order of the items is never changed.
    """
    if not items:
        return
    model = search.model
    labels = search.rows([item.item_id for item in items], added)
    in_model = history.labels[history.labels < model.info.num_items]
    rows_weights = history.weights[history.labels < model.info.num_items]
    per_item: list[list[Reason]]
    if model.info.algorithm == "als" and len(in_model):
        parts = als_contributions(model, in_model, rows_weights, _factors(model, labels, added))
        per_item = _strongest(model, in_model, parts)
        if history.source is Source.MODEL:
            for item, total in zip(items, parts.sum(axis=0).tolist(), strict=True):
                if not item.rule:  # a boosted or pinned score is the rule's, not the model's
                    item.score = total
    else:
        per_item = _nearest_history(search, history.labels, labels, added)
    visual = _visual_neighbours(search, history.labels, labels, added)
    for item, reasons, neighbour in zip(items, per_item, visual, strict=True):
        item.reasons = (*_rule_reason(item), *neighbour, *reasons)


def explain_rules(items: list[ScoredItem]) -> None:
    """Reasons of an answer that is not personalised (popular items): the rules only."""
    for item in items:
        item.reasons = _rule_reason(item)


def _rule_reason(item: ScoredItem) -> tuple[Reason, ...]:
    return (Reason(ReasonKind.RULE, rule=item.rule),) if item.rule else ()


def _factors(
    model: Model, labels: npt.NDArray[np.int64], added: AddedItems
) -> npt.NDArray[np.float32]:
    """Item factors of labels (model or added items), float32, shape (len(labels), f)."""
    n = model.info.num_items
    if not len(added) or labels.max(initial=-1) < n:
        return model.item_factors[labels]
    return np.vstack([model.item_factors, added.factors])[labels]


def _strongest(
    model: Model, rows: npt.NDArray[np.int64], parts: npt.NDArray[np.float64]
) -> list[list[Reason]]:
    """Per item (column of ``parts``, shape (n, k)), its largest parts as reasons."""
    top = np.argsort(-parts, axis=0, kind="stable")[:MAX_HISTORY_REASONS]  # (<=3, k)
    ids = model.items.ids
    names = [[ids[row] for row in column] for column in rows[top].T.tolist()]
    values = np.take_along_axis(parts, top, axis=0).T.tolist()
    return [
        [Reason(ReasonKind.HISTORY_ITEM, name, value) for name, value in zip(n, v, strict=True)]
        for n, v in zip(names, values, strict=True)
    ]


def _nearest_history(
    search: CandidateSearch,
    history: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    added: AddedItems,
) -> list[list[Reason]]:
    """Per item, the history items nearest to it by the cosine of their factors (never the
    item itself)."""
    if not len(history):
        return [[] for _ in range(len(labels))]
    cosines = search.unit_factors(labels, added) @ search.unit_factors(history, added).T
    cosines[labels[:, None] == history[None, :]] = -np.inf
    result = []
    for i in range(len(labels)):
        top = np.argsort(-cosines[i], kind="stable")[:MAX_HISTORY_REASONS]
        result.append(
            [
                Reason(ReasonKind.HISTORY_ITEM, _item_id(search, added, int(history[j])), c)
                for j, c in zip(top.tolist(), cosines[i, top].tolist(), strict=True)
                if np.isfinite(c)
            ]
        )
    return result


def _item_id(search: CandidateSearch, added: AddedItems, label: int) -> str:
    n = search.model.info.num_items
    return search.model.items.ids[label] if label < n else added.ids[label - n]


def _visual_neighbours(
    search: CandidateSearch,
    history: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    added: AddedItems,
) -> list[tuple[Reason, ...]]:
    """Per item, one VISUAL_NEIGHBOUR reason when it entered by its image alone (added since
    training, or a model item without interactions): the history item whose image is closest
    to it, else the closest model item that has interactions. Others: none."""
    model = search.model
    visual = model.visual
    result: list[tuple[Reason, ...]] = [() for _ in range(len(labels))]
    if visual is None:
        return result
    embeddings = [_image_only_embedding(search, label, added) for label in labels.tolist()]
    if all(embedding is None for embedding in embeddings):
        return result  # the usual case: every item has interactions
    pictured = _embeddings(search, history, added)
    for i, (label, embedding) in enumerate(zip(labels.tolist(), embeddings, strict=True)):
        if embedding is None:
            continue
        found = _closest(search, pictured, label, embedding, added)
        if found is None:
            found = _closest_warm(search, label, embedding)
        if found is not None:
            neighbour, cosine = found
            result[i] = (Reason(ReasonKind.VISUAL_NEIGHBOUR, neighbour, cosine),)
    return result


def _image_only_embedding(
    search: CandidateSearch, label: int, added: AddedItems
) -> npt.NDArray[np.float32] | None:
    """The visual-space embedding of an item that entered by its image alone; None for the
    others (items with interactions, items without an image)."""
    model = search.model
    n = model.info.num_items
    if label >= n:
        j = label - n
        return added.visual[j] if added.has_image[j] else None
    if model.item_popularity[label] > 0 or model.visual is None:
        return None
    return model.visual.embedding_of(label)


def _embeddings(
    search: CandidateSearch, labels: npt.NDArray[np.int64], added: AddedItems
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The labels among ``labels`` that have an image, and their visual-space embeddings."""
    model = search.model
    assert model.visual is not None
    n = model.info.num_items
    kept: list[int] = []
    vectors: list[npt.NDArray[np.float32]] = []
    for label in labels.tolist():
        vector = (
            model.visual.embedding_of(label)
            if label < n
            else (added.visual[label - n] if added.has_image[label - n] else None)
        )
        if vector is not None:
            kept.append(label)
            vectors.append(vector)
    if not kept:
        return np.empty(0, dtype=np.int64), np.empty((0, model.visual.dim), dtype=np.float32)
    return np.asarray(kept, dtype=np.int64), np.stack(vectors)


def _closest(
    search: CandidateSearch,
    pictured: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]],
    label: int,
    embedding: npt.NDArray[np.float32],
    added: AddedItems,
) -> tuple[str, float] | None:
    """The history item whose image is closest to ``embedding`` (not the item itself)."""
    labels, vectors = pictured
    cosines = vectors @ embedding
    cosines[labels == label] = -np.inf
    if not len(labels) or not np.isfinite(cosines.max()):
        return None
    best = int(np.argmax(cosines))
    return _item_id(search, added, int(labels[best])), float(cosines[best])


def _closest_warm(
    search: CandidateSearch, label: int, embedding: npt.NDArray[np.float32]
) -> tuple[str, float] | None:
    """The model item with interactions whose image is closest to ``embedding``."""
    model = search.model
    assert model.visual is not None
    positions, cosines = model.visual.index.search(embedding, _VISUAL_NEIGHBOURS)
    for position, cosine in zip(positions.tolist(), cosines.tolist(), strict=True):
        row = int(model.visual.rows[position])
        if row != label and model.item_popularity[row] > 0:
            return model.items.ids[row], cosine
    return None
