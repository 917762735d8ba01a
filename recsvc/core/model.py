"""A trained model as the domain sees it: id maps, factors, history, popularity, indexes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc.core.projection import Projection, VisualAdapter
from recsvc.index import ItemIndex, normalise_rows

NO_CATEGORY = ""


class IdMap:
    """Two-way map between the caller's string ids and row numbers 0..n-1."""

    def __init__(self, ids: Sequence[str]) -> None:
        # Interned, as recorded item ids are (recsvc.core.interactions): a lookup of an id
        # from a stored history then finds the same object, in cache, not an equal copy.
        self.ids: list[str] = [sys.intern(value) for value in ids]
        self._rows: dict[str, int] = {value: row for row, value in enumerate(self.ids)}
        if len(self._rows) != len(self.ids):
            raise ValueError("ids must be unique")
        # The row of an id, or None; the dict's own get (no Python frame: fold-in calls it
        # once per history item).
        self.row: Callable[[str], int | None] = self._rows.get

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, value: object) -> bool:
        return value in self._rows

    def rows_or_missing(self, values: Sequence[str]) -> npt.NDArray[np.int64]:
        """The row of every value, -1 for unknown ones (one C-level pass over the dict)."""
        return np.fromiter(map(self._rows.get, values, repeat(-1)), np.int64, len(values))

    def rows(self, values: Iterable[str]) -> npt.NDArray[np.int64]:
        """Rows of the known ids among ``values`` (unknown ones are left out), in order."""
        found = [row for v in values if (row := self._rows.get(v)) is not None]
        return np.asarray(found, dtype=np.int64)


@dataclass(frozen=True)
class IndexFacts:
    """How one HNSW index was built and is searched, and its recall@10 against exact search
    (measured at ``ef_search`` when it was built)."""

    m: int
    ef_construction: int
    ef_search: int
    recall_at_10: float


@dataclass(frozen=True)
class ModelInfo:
    """What GetModelInfo reports."""

    version: str
    algorithm: str
    num_users: int
    num_items: int
    num_interactions: int
    factors: int
    parameters: dict[str, Any]
    created_at_ms: int
    trained_on: str
    index_recall_at_10: float
    index_ef_search: int = 0  # the ef that recall was measured at (0: unknown, older model)
    image_embedding_dim: int = 0
    statistics: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    engine: str = "implicit"  # the training engine: "implicit" or "spark"
    index_m: int = 0  # how the user->item graph was built (0: unknown)
    index_ef_construction: int = 0
    similar_index: IndexFacts | None = None  # None: a model that did not record it

    @property
    def user_index(self) -> IndexFacts:
        return IndexFacts(
            self.index_m, self.index_ef_construction, self.index_ef_search, self.index_recall_at_10
        )


@dataclass(frozen=True)
class VisualPart:
    """What a model knows about product images.

    Attributes
    ----------
    backbone : name of the CNN that made the embeddings (queries must use the same one)
    backbone_dim : dimension of the backbone's (raw) embeddings
    rows : int64, shape (n,): the item row of each embedding (items without an image have none)
    embeddings : float32, shape (n, dim): unit vectors in the visual space
    index : cosine ItemIndex over ``embeddings``; its labels are positions in ``rows``
    projection : raw image embedding -> item factors (None when nothing could be learned)
    adapter : raw image embedding -> visual space (None: the raw embeddings are the space)
    cold_items : how many items entered the model by their image alone (no interaction)
    projection_r2 : the projection's validation R^2 (None without a projection)
    """

    backbone: str
    backbone_dim: int
    rows: npt.NDArray[np.int64]
    embeddings: npt.NDArray[np.float32]
    index: ItemIndex
    projection: Projection | None
    adapter: VisualAdapter | None
    n_items: int
    cold_items: int
    projection_r2: float | None
    position: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        position = np.full(self.n_items, -1, dtype=np.int64)
        position[self.rows] = np.arange(len(self.rows))
        object.__setattr__(self, "position", position)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def to_visual_space(self, raw: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(n, backbone_dim) raw embeddings -> (n, dim) unit vectors of the visual space."""
        if self.adapter is not None:
            return self.adapter.apply(raw)
        return normalise_rows(raw)

    def embedding_of(self, item_row: int) -> npt.NDArray[np.float32] | None:
        """The item's image embedding, or None when it has no image."""
        at = int(self.position[item_row])
        return self.embeddings[at] if at >= 0 else None


@dataclass(frozen=True)
class Model:
    """Everything serving needs from one model version.

    Attributes
    ----------
    user_factors : float32, shape (n_users, factors)
    item_factors : float32, shape (n_items, factors)
    user_items : csr_matrix float32, shape (n_users, n_items)
        Training interactions (aggregated weights): the history excluded from recommendations.
    item_popularity : float32, shape (n_items,)
        Number of distinct users per item.
    item_categories : int32, shape (n_items,)
        Index into ``category_names`` per item; ``category_names[0]`` is "" (no category).
    user_index : ItemIndex
        Inner-product index over ``item_factors`` (user -> item).
    similar_index : ItemIndex
        Cosine index over ``item_factors`` (item -> item).
    visual : VisualPart or None
        Image embeddings, their index and the cold-start projection, when trained with images.
    dislikes : mapping of user id -> tuple of item ids
        What each user disliked in the training data (users the model may not know included):
        never recommended to them.
    """

    info: ModelInfo
    users: IdMap
    items: IdMap
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    user_items: sp.csr_matrix
    item_popularity: npt.NDArray[np.float32]
    item_categories: npt.NDArray[np.int32]
    category_names: list[str]
    user_index: ItemIndex
    similar_index: ItemIndex
    regularization: float
    alpha: float
    visual: VisualPart | None = None
    dislikes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    yty: npt.NDArray[np.float64] = field(init=False)
    popular_order: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        # Precomputed once per model: YtY for fold-in, and the popularity ranking for fallbacks.
        factors = self.item_factors.astype(np.float64)
        object.__setattr__(self, "yty", factors.T @ factors)
        order = np.argsort(-self.item_popularity, kind="stable").astype(np.int64)
        object.__setattr__(self, "popular_order", order)

    @property
    def version(self) -> str:
        return self.info.version

    def seen_items(self, user_row: int) -> npt.NDArray[np.int32]:
        """Item rows the user interacted with in the training data."""
        start, end = self.user_items.indptr[user_row], self.user_items.indptr[user_row + 1]
        return np.asarray(self.user_items.indices[start:end], dtype=np.int32)

    def category_codes(self, names: Iterable[str]) -> npt.NDArray[np.int32]:
        """Codes of the named categories that exist in this model (others match no item)."""
        lookup = {name: code for code, name in enumerate(self.category_names)}
        return np.asarray([lookup[n] for n in names if n in lookup], dtype=np.int32)
