"""Item-to-item similarity: SimilarItems (collaborative, visual, hybrid) and SearchByImage."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsvc.core.added import AddedItems
from recsvc.core.candidates import CandidateSearch, as_query
from recsvc.core.catalogue import Catalogue
from recsvc.core.model import Model, VisualPart
from recsvc.core.queries import (
    ImageQuery,
    SimilarItems,
    SimilarityMode,
    SimilarQuery,
)
from recsvc.errors import FailedPrecondition, InvalidArgument, NotFound


def similar_items(
    search: CandidateSearch,
    query: SimilarQuery,
    catalogue: Catalogue,
    visual_weight: float,
    matching: npt.NDArray[np.bool_] | None = None,
) -> SimilarItems:
    """Items most similar to ``query.item_id`` (never the item itself), by the query's mode:
    item factors (collaborative), image embeddings (visual) or a blend of both (hybrid,
    ``visual_weight`` on the visual cosine). The query is already validated."""
    model = search.model
    added = catalogue.added
    if query.mode is not SimilarityMode.COLLABORATIVE:
        visual_part(model, "mode")
    label = search.rows([query.item_id], added)
    if len(label) == 0 or query.item_id in catalogue.deleted:
        raise NotFound("item_id", f"unknown item {query.item_id!r}")
    row = int(label[0])
    blocked = label
    allowed = search.allowed_mask(query.categories, catalogue, matching)
    n = model.info.num_items
    factors = model.item_factors[row] if row < n else added.factors[row - n]
    if query.mode is SimilarityMode.COLLABORATIVE:
        labels, scores = search.search(
            model.similar_index,
            factors,
            query.k,
            blocked,
            allowed,
            extra=(added.unit_factors, None) if len(added) else None,
        )
        return SimilarItems(search.scored(labels, scores, added), model.version)
    visual = visual_part(model, "mode")
    embedding = visual.embedding_of(row) if row < n else added.visual[row - n]
    if embedding is None:
        if query.mode is SimilarityMode.VISUAL:
            raise NotFound("item_id", f"item {query.item_id!r} has no image embedding")
        visual_weight = 0.0  # hybrid without an image: collaborative only
    if query.mode is SimilarityMode.VISUAL:
        assert embedding is not None
        labels, scores = search_visual(search, embedding, query.k, blocked, allowed, added)
        return SimilarItems(search.scored(labels, scores, added), model.version)
    labels, scores = hybrid_search(
        search, factors, embedding, query.k, blocked, allowed, visual_weight, added
    )
    return SimilarItems(search.scored(labels, scores, added), model.version)


def search_by_image(
    search: CandidateSearch,
    embedding: npt.NDArray[np.float32],
    query: ImageQuery,
    catalogue: Catalogue,
    matching: npt.NDArray[np.bool_] | None = None,
) -> SimilarItems:
    """Items whose images are closest to ``embedding``, the raw embedding of a picture made
    by the model's backbone. The query is already validated."""
    visual = visual_part(search.model, "image")
    if embedding.shape != (visual.backbone_dim,):
        raise InvalidArgument(
            "image",
            f"embedding has shape {embedding.shape}, expected ({visual.backbone_dim},)",
        )
    embedding = visual.to_visual_space(embedding[None, :])[0]
    added = catalogue.added
    allowed = search.allowed_mask(query.categories, catalogue, matching)
    blocked = np.empty(0, dtype=np.int64)
    labels, scores = search_visual(search, embedding, query.k, blocked, allowed, added)
    return SimilarItems(search.scored(labels, scores, added), search.model.version)


def visual_part(model: Model, field: str) -> VisualPart:
    """The model's image part; FailedPrecondition (naming ``field``) when it has none."""
    if model.visual is None:
        raise FailedPrecondition(
            f"{field}: model {model.version} has no image embeddings; train it with "
            "`recsvc train --images`"
        )
    return model.visual


def search_visual(
    search: CandidateSearch,
    embedding: npt.NDArray[np.float32],
    k: int,
    blocked: npt.NDArray[np.int64],
    allowed: npt.NDArray[np.bool_] | None,
    added: AddedItems,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Top-k by cosine with ``embedding`` (a unit vector of the visual space) over the
    visual index and the added items' photos."""
    visual = visual_part(search.model, "mode")
    extra = (added.visual, added.has_image) if len(added) else None
    return search.search(
        visual.index, embedding, k, blocked, allowed, rows=visual.rows, extra=extra
    )


def hybrid_search(
    search: CandidateSearch,
    factors: npt.NDArray[np.float32],
    embedding: npt.NDArray[np.float32] | None,
    k: int,
    blocked: npt.NDArray[np.int64],
    allowed: npt.NDArray[np.bool_] | None,
    visual_weight: float,
    added: AddedItems,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Candidates from both indexes, rescored by the blend of both cosines (an item without
    an image has visual similarity 0)."""
    model = search.model
    pool = max(3 * k, k + 20)
    extra = (added.unit_factors, None) if len(added) else None
    candidates, _ = search.search(model.similar_index, factors, pool, blocked, allowed, extra=extra)
    if embedding is not None:
        visual_labels, _ = search_visual(search, embedding, pool, blocked, allowed, added)
        candidates = np.union1d(candidates, visual_labels)
    query = as_query(model.similar_index, factors)
    scores = (1 - visual_weight) * (search.unit_factors(candidates, added) @ query)
    if embedding is not None:
        scores += visual_weight * (_visual_vectors(model, candidates, added) @ embedding)
    order = np.argsort(-scores, kind="stable")[:k]
    return candidates[order].astype(np.int64), scores[order].astype(np.float32)


def _visual_vectors(
    model: Model, labels: npt.NDArray[np.int64], added: AddedItems
) -> npt.NDArray[np.float32]:
    """Visual-space vectors of ``labels``; zero for items without an image."""
    visual = visual_part(model, "mode")
    n = model.info.num_items
    out = np.zeros((len(labels), visual.dim), dtype=np.float32)
    own = labels < n
    positions = visual.position[labels[own]]
    rows_with_image = np.flatnonzero(own)[positions >= 0]
    out[rows_with_image] = visual.embeddings[positions[positions >= 0]]
    if len(added):
        extra = np.flatnonzero(~own)
        out[extra] = added.visual[labels[extra] - n]
    return out
