"""RecommendFromExamples: items like these examples and unlike those, by vector arithmetic.

An example is an item (its vectors in the model or the added-items table) or a photo (embedded
by the server's image encoder, as for SearchByImage). In the space the query's mode names,
every example's vector is first scaled to unit length, then

    q = sum_p w_p * unit(v_p) - sum_n w_n * unit(v_n)

(positives p, negatives n, weights w > 0), and the items whose vectors have the largest cosine
with ``q`` are returned. Unit length first because ALS item factors grow with an item's
popularity (their norms spread over an order of magnitude): summed as they are, one long-norm
item would outweigh every other example whatever the weights say, and a negative could not
cancel a positive of equal weight. After it the weights alone say how much each example
counts, and "a - b + c" is an analogy between directions. (Visual-space vectors are unit
already; a photo's collaborative vector, from the cold-start projection, is scaled too.)

Modes: COLLABORATIVE searches the item factors by cosine (the similar-items index), a photo
placed there by the model's cold-start projection; VISUAL searches the image embeddings;
HYBRID builds both query vectors (an example missing from one space, an item without a photo
or a photo without a projection, counts in the other only) and blends the two cosines with
the server's hybrid visual weight, as SimilarItems does.

The example items are never returned; the exclusions, the category filter, the filter
expression and hidden items apply as for SimilarItems.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.core.candidates import CandidateSearch
from recsvc.core.catalogue import Catalogue
from recsvc.core.filters import parse_filter
from recsvc.core.model import Model
from recsvc.core.queries import (
    CategoryFilter,
    Limits,
    SimilarItems,
    SimilarityMode,
    check_categories,
    check_id,
    check_id_list,
    check_k,
)
from recsvc.core.similarity import hybrid_search, search_visual, visual_part
from recsvc.errors import FailedPrecondition, InvalidArgument, NotFound

FloatVector = npt.NDArray[np.float32]

# Positives, and negatives, per request (the proto documents the same limit): each example is
# a vector lookup or an image to embed, and 32 covers "more like these, less like those".
MAX_EXAMPLES = 32

# A query vector shorter than this is taken for zero: the examples cancel out (a positive and
# a negative of the same item and weight; each example adds a unit vector, so a real query is
# far longer), and a cosine with it would rank by rounding noise.
_CANCELLED = 1e-6


@dataclass(frozen=True)
class Example:
    """A positive or negative example: an item id, or a photo's bytes (then ``item_id`` is
    empty). ``weight`` > 0; 0 (unset) counts as 1."""

    item_id: str = ""
    image: bytes | None = None
    weight: float = 0.0

    @property
    def effective_weight(self) -> float:
        return self.weight or 1.0


@dataclass(frozen=True)
class ExamplesQuery:
    """RecommendFromExamples: examples to move towards and away from, and what may be
    returned (the mode's space, k, categories, filter expression, exclusions)."""

    positives: tuple[Example, ...]
    negatives: tuple[Example, ...] = ()
    k: int = 10
    mode: SimilarityMode = SimilarityMode.COLLABORATIVE
    categories: CategoryFilter = dataclasses.field(default_factory=CategoryFilter)
    filter: str = ""
    exclude_item_ids: tuple[str, ...] = ()

    def validate(self, limits: Limits) -> None:
        """Raise InvalidArgument naming the first bad field (e.g. ``positives[2].weight``)."""
        check_k(self.k, limits)
        if not self.positives:
            raise InvalidArgument("positives", "must hold at least one example")
        for name, examples in (("positives", self.positives), ("negatives", self.negatives)):
            if len(examples) > MAX_EXAMPLES:
                raise InvalidArgument(
                    name, f"holds {len(examples)} examples, at most {MAX_EXAMPLES} allowed"
                )
        for field, example, _ in self.examples():
            _check_example(example, field)
        check_id_list(self.exclude_item_ids, limits, "exclude_item_ids")
        check_categories(self.categories, limits, "categories")
        parse_filter(self.filter, "filter")

    def examples(self) -> Iterator[tuple[str, Example, float]]:
        """Every example with its field name (``negatives[1]``) and its signed weight."""
        for i, example in enumerate(self.positives):
            yield f"positives[{i}]", example, example.effective_weight
        for i, example in enumerate(self.negatives):
            yield f"negatives[{i}]", example, -example.effective_weight

    def images(self) -> list[tuple[str, bytes]]:
        """The photos to embed, each with its field name (``positives[2].image``)."""
        return [
            (f"{field}.image", example.image)
            for field, example, _ in self.examples()
            if example.image is not None
        ]


def _check_example(example: Example, field: str) -> None:
    weight = example.weight
    if not math.isfinite(weight) or weight < 0:  # NaN fails isfinite
        raise InvalidArgument(
            f"{field}.weight", f"must be a finite number > 0 (0 or unset: 1), got {weight}"
        )
    if example.image is not None:
        if not example.image:
            raise InvalidArgument(f"{field}.image", "must not be empty")
    elif not example.item_id:
        raise InvalidArgument(field, "give an item_id or an image")
    else:
        check_id(example.item_id, f"{field}.item_id")


def combine(vectors: npt.NDArray[np.floating], weights: npt.NDArray[np.floating]) -> FloatVector:
    """The query vector ``sum_i weights[i] * unit(vectors[i])``.

    Parameters
    ----------
    vectors : float, shape (n, d): the examples' vectors in one space (a zero row adds nothing)
    weights : float, shape (n,): positive for positives, negative for negatives

    Returns
    -------
    float32, shape (d,); "a - b + c" is ``combine([a, b, c], [1, -1, 1])``.
    """
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    units = matrix / np.maximum(norms, 1e-12)
    query: FloatVector = (np.asarray(weights, dtype=np.float64) @ units).astype(np.float32)
    return query


def check_examples(search: CandidateSearch, query: ExamplesQuery, catalogue: Catalogue) -> None:
    """Everything that can be checked before the photos are embedded: the model has the
    spaces the query needs, and every example item exists (and, in VISUAL mode, has a photo).
    The query is already validated."""
    labels = _labels(search, query, catalogue)
    _check_spaces(search.model, query)
    if query.mode is SimilarityMode.VISUAL:
        for field, example, _ in query.examples():
            if example.image is None:
                _visual_of(search.model, catalogue, labels[field], field, query.mode)


def recommend_from_examples(
    search: CandidateSearch,
    query: ExamplesQuery,
    catalogue: Catalogue,
    images: Mapping[str, FloatVector],
    visual_weight: float,
    matching: npt.NDArray[np.bool_] | None = None,
) -> SimilarItems:
    """The k items nearest to the examples' query vector in the query's mode (see the module).

    ``images``: the raw backbone embedding (float32, shape (backbone_dim,)) of every photo in
    the query, by field name (``ExamplesQuery.images``). ``visual_weight``: the visual
    cosine's share in HYBRID mode. ``matching``: the filter expression's mask. The query is
    already validated."""
    model, added = search.model, catalogue.added
    labels = _labels(search, query, catalogue)
    _check_spaces(model, query)
    blocked = np.union1d(
        np.fromiter((label for label in labels.values() if label >= 0), np.int64),
        search.rows(query.exclude_item_ids, added),
    ).astype(np.int64)
    allowed = search.allowed_mask(query.categories, catalogue, matching)
    if query.mode is SimilarityMode.COLLABORATIVE:
        collaborative = _query_vector(query, labels, images, model, catalogue, visual=False)
        assert collaborative is not None  # _check_spaces: every example has a factor vector
        extra = (added.unit_factors, None) if len(added) else None
        found, scores = search.search(
            model.similar_index,
            _nonzero(collaborative),
            query.k,
            blocked,
            allowed,
            extra=extra,
        )
        return SimilarItems(search.scored(found, scores, added), model.version)
    looks = _query_vector(query, labels, images, model, catalogue, visual=True)
    if query.mode is SimilarityMode.VISUAL:
        assert looks is not None  # _check_spaces: every example has an image embedding
        found, scores = search_visual(
            search, _unit(_nonzero(looks)), query.k, blocked, allowed, added
        )
        return SimilarItems(search.scored(found, scores, added), model.version)
    collaborative = _or_none_if_cancelled(
        _query_vector(query, labels, images, model, catalogue, visual=False)
    )
    looks = _or_none_if_cancelled(looks)
    if collaborative is None and looks is None:
        raise InvalidArgument("negatives", _CANCELLED_MESSAGE)
    if collaborative is None:  # only photos without a projection: the visual side alone
        assert looks is not None
        found, scores = search_visual(search, _unit(looks), query.k, blocked, allowed, added)
    else:
        found, scores = hybrid_search(
            search,
            collaborative,
            None if looks is None else _unit(looks),
            query.k,
            blocked,
            allowed,
            visual_weight if looks is not None else 0.0,
            added,
        )
    return SimilarItems(search.scored(found, scores, added), model.version)


# ------------------------------------------------------------------ helpers

_CANCELLED_MESSAGE = (
    "the examples cancel out (their weighted sum is the zero vector); change a weight or an example"
)


def _labels(search: CandidateSearch, query: ExamplesQuery, catalogue: Catalogue) -> dict[str, int]:
    """The item label of every example by field name (-1 for a photo); NotFound naming
    ``positives[i].item_id`` for an unknown or deleted item."""
    labels: dict[str, int] = {}
    for field, example, _ in query.examples():
        if example.image is not None:
            labels[field] = -1
            continue
        found = search.rows([example.item_id], catalogue.added)
        if len(found) == 0 or example.item_id in catalogue.deleted:
            raise NotFound(f"{field}.item_id", f"unknown item {example.item_id!r}")
        labels[field] = int(found[0])
    return labels


def _check_spaces(model: Model, query: ExamplesQuery) -> None:
    """FailedPrecondition when the model lacks what the mode needs: image embeddings for
    VISUAL and HYBRID and for any photo; in COLLABORATIVE mode, the cold-start projection
    for a photo. (Example items without a photo in VISUAL mode: see ``_visual_of``.)"""
    if query.mode is not SimilarityMode.COLLABORATIVE:
        visual_part(model, "mode")
    for field, _ in query.images():
        visual = visual_part(model, field)
        if query.mode is SimilarityMode.COLLABORATIVE and visual.projection is None:
            raise FailedPrecondition(
                f"{field}: model {model.version} has no cold-start projection, so a photo has "
                "no place in the collaborative space; use mode VISUAL or HYBRID"
            )


def _query_vector(
    query: ExamplesQuery,
    labels: Mapping[str, int],
    images: Mapping[str, FloatVector],
    model: Model,
    catalogue: Catalogue,
    visual: bool,
) -> FloatVector | None:
    """The examples combined in the collaborative (``visual`` False) or visual space; an
    example with no vector in that space is left out (VISUAL mode refuses it); None when no
    example has one."""
    vectors: list[FloatVector] = []
    weights: list[float] = []
    for field, example, weight in query.examples():
        if example.image is not None:
            vector = _image_vector(model, images, f"{field}.image", visual)
        elif visual:
            vector = _visual_of(model, catalogue, labels[field], field, query.mode)
        else:
            vector = _factors_of(model, catalogue, labels[field])
        if vector is not None:
            vectors.append(vector)
            weights.append(weight)
    if not vectors:
        return None
    return combine(np.stack(vectors), np.asarray(weights))


def _factors_of(model: Model, catalogue: Catalogue, label: int) -> FloatVector:
    n = model.info.num_items
    factors: FloatVector = (
        model.item_factors[label] if label < n else catalogue.added.factors[label - n]
    )
    return factors


def _visual_of(
    model: Model, catalogue: Catalogue, label: int, field: str, mode: SimilarityMode
) -> FloatVector | None:
    """The item's image embedding; None without a photo (NotFound in VISUAL mode)."""
    visual = visual_part(model, "mode")
    n = model.info.num_items
    added = catalogue.added
    if label < n:
        embedding = visual.embedding_of(label)
    else:
        embedding = added.visual[label - n] if added.has_image[label - n] else None
    if embedding is None and mode is SimilarityMode.VISUAL:
        item_id = model.items.ids[label] if label < n else added.ids[label - n]
        raise NotFound(f"{field}.item_id", f"item {item_id!r} has no image embedding")
    return embedding


def _image_vector(
    model: Model, images: Mapping[str, FloatVector], field: str, visual: bool
) -> FloatVector | None:
    """A photo in the visual space, or in the collaborative space through the cold-start
    projection (None without one: HYBRID counts the photo on the visual side only)."""
    part = visual_part(model, field)
    raw = images.get(field)
    if raw is None:
        raise InvalidArgument(field, "the image was not embedded")  # a service bug, named
    if raw.shape != (part.backbone_dim,):
        raise InvalidArgument(
            field, f"embedding has shape {raw.shape}, expected ({part.backbone_dim},)"
        )
    if visual:
        looks: FloatVector = part.to_visual_space(raw[None, :])[0]
        return looks
    if part.projection is None:
        return None
    factors: FloatVector = part.projection.apply(raw[None, :])[0]
    return factors


def _or_none_if_cancelled(vector: FloatVector | None) -> FloatVector | None:
    if vector is None or float(np.linalg.norm(vector)) < _CANCELLED:
        return None
    return vector


def _nonzero(vector: FloatVector) -> FloatVector:
    """The vector, or InvalidArgument naming ``negatives`` (what cancels the positives)."""
    if float(np.linalg.norm(vector)) < _CANCELLED:
        raise InvalidArgument("negatives", _CANCELLED_MESSAGE)
    return vector


def _unit(vector: FloatVector) -> FloatVector:
    """Scaled to unit length: the visual index and the hybrid blend score by cosine."""
    unit: FloatVector = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
    return unit
