"""Items added after training (UpsertItems), served beside the model's own items.

The model's indexes are never written to while readers use them: added items live in a small,
immutable side table that every query searches exactly and merges with the index results. An
upsert builds a new table and swaps the reference in one assignment, so a concurrent query sees
either the old table or the new one, never a half-built one. The next training run takes the
items into the model proper (the table is emptied of what the new model knows).

Labels: the model's items are rows 0..n-1; added item j has label n + j.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsvc.index import normalise_rows

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class NewItem:
    """An item to add or update. ``embedding``: the raw backbone embedding of its image."""

    item_id: str
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    embedding: npt.NDArray[np.float32] | None = None
    deleted: bool = False


@dataclass(frozen=True)
class AddedItems:
    """Rows aligned across every array; ``visual`` rows are zero where ``has_image`` is False."""

    ids: tuple[str, ...]
    categories: tuple[str, ...]
    factors: FloatMatrix
    visual: FloatMatrix
    has_image: npt.NDArray[np.bool_]
    unit_factors: FloatMatrix = field(init=False)
    rows: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit_factors", normalise_rows(self.factors))
        object.__setattr__(self, "rows", {item_id: j for j, item_id in enumerate(self.ids)})

    @classmethod
    def empty(cls, factors: int, visual_dim: int) -> AddedItems:
        return cls(
            (),
            (),
            np.empty((0, factors), np.float32),
            np.empty((0, visual_dim), np.float32),
            np.empty(0, bool),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def without(self, ids: list[str]) -> AddedItems:
        """A new table without the rows of ``ids``."""
        gone = set(ids)
        keep = [j for j, item_id in enumerate(self.ids) if item_id not in gone]
        return AddedItems(
            ids=tuple(self.ids[j] for j in keep),
            categories=tuple(self.categories[j] for j in keep),
            factors=self.factors[keep],
            visual=self.visual[keep],
            has_image=self.has_image[keep],
        )

    def with_items(
        self,
        ids: list[str],
        categories: list[str],
        factors: FloatMatrix,
        visual: FloatMatrix,
        has_image: npt.NDArray[np.bool_],
    ) -> AddedItems:
        """A new table: these items added, or replacing the rows of the same ids."""
        keep = [j for j, item_id in enumerate(self.ids) if item_id not in set(ids)]
        return AddedItems(
            ids=tuple(self.ids[j] for j in keep) + tuple(ids),
            categories=tuple(self.categories[j] for j in keep) + tuple(categories),
            factors=np.vstack([self.factors[keep], factors]).astype(np.float32),
            visual=np.vstack([self.visual[keep], visual]).astype(np.float32),
            has_image=np.concatenate([self.has_image[keep], has_image]),
        )
