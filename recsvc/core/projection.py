"""Projection: image embedding -> collaborative item-factor space, for items nobody touched yet.

A two-layer perceptron learned (in ``recsvc.fitting.cold_start_projection``) on items that have both
an image and interactions. Serving applies it with numpy, so a new item's image becomes a
vector the user index can score the moment it is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.index import normalise_rows

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Projection:
    """``relu(x @ w1 + b1) @ w2 + b2``; shapes (d, h), (h,), (h, f), (f,)."""

    w1: FloatArray
    b1: FloatArray
    w2: FloatArray
    b2: FloatArray

    def __post_init__(self) -> None:
        h = self.w1.shape[1]
        if self.b1.shape != (h,) or self.w2.shape[0] != h or self.b2.shape != self.w2.shape[1:]:
            raise ValueError(
                f"projection weights do not fit together: {self.w1.shape}, {self.b1.shape}, "
                f"{self.w2.shape}, {self.b2.shape}"
            )

    @property
    def input_dim(self) -> int:
        return int(self.w1.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.w2.shape[1])

    def apply(self, embeddings: FloatArray) -> FloatArray:
        """(n, input_dim) image embeddings -> (n, output_dim) item factors."""
        hidden = np.maximum(embeddings @ self.w1 + self.b1, 0.0)
        factors: FloatArray = (hidden @ self.w2 + self.b2).astype(np.float32)
        return factors


@dataclass(frozen=True)
class VisualAdapter:
    """Raw image embeddings -> the space the visual index searches: the unit vector of
    ``(x - mean) @ components`` (learned from the catalogue's categories, see
    ``recsvc.fitting.visual_space``, so that "looks alike" follows the shop's own taxonomy)
    weighted ``sqrt(1 - raw_weight)``, next to the unit raw embedding weighted
    ``sqrt(raw_weight)``, which keeps appearance ranking items within a category.

    With ``class_weights`` (d, c) and ``class_bias`` (c,), a linear softmax classifier's
    category probabilities ``softmax(((x - mean) @ class_weights + class_bias) / temperature)``
    follow, weighted ``sqrt(class_weight)``, and the whole is scaled back to unit length: a
    photo then meets the catalogue items its classifier puts in the same category (every
    photo, catalogue or new, goes through this one map; stored labels are never used). The
    result has unit length."""

    mean: FloatArray
    components: FloatArray
    raw_weight: float = 0.2
    class_weights: FloatArray | None = None
    class_bias: FloatArray | None = None
    class_temperature: float = 1.0
    class_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.mean.shape != (self.components.shape[0],):
            raise ValueError(
                f"visual adapter: mean {self.mean.shape} does not fit {self.components.shape}"
            )
        if (self.class_weights is None) != (self.class_bias is None):
            raise ValueError("visual adapter: class weights and bias come together")
        if self.class_weights is not None and self.class_bias is not None:
            if self.class_weights.ndim != 2 or self.class_weights.shape[0] != len(self.mean):
                raise ValueError(
                    f"visual adapter: class weights {self.class_weights.shape} do not fit "
                    f"{len(self.mean)} input dimensions"
                )
            if self.class_bias.shape != self.class_weights.shape[1:]:
                raise ValueError(
                    f"visual adapter: class bias {self.class_bias.shape} does not fit "
                    f"{self.class_weights.shape}"
                )
            if not (self.class_temperature > 0 and self.class_weight >= 0):
                raise ValueError("visual adapter: class temperature must be > 0, weight >= 0")

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def classes(self) -> int:
        """Categories of the probability part (0: none)."""
        return 0 if self.class_weights is None else int(self.class_weights.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[1] + self.components.shape[0]) + self.classes

    def apply(self, embeddings: FloatArray) -> FloatArray:
        """(n, input_dim) raw embeddings -> (n, output_dim) unit vectors."""
        centred = embeddings - self.mean
        learned = normalise_rows(centred @ self.components)
        raw = normalise_rows(embeddings)
        weight = self.raw_weight
        parts = [np.sqrt(1 - weight) * learned, np.sqrt(weight) * raw]
        if self.class_weights is not None and self.class_bias is not None:
            logits = (centred @ self.class_weights + self.class_bias) / self.class_temperature
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            parts.append(np.sqrt(self.class_weight) * probabilities)
            return normalise_rows(np.hstack(parts))
        result: FloatArray = np.hstack(parts).astype(np.float32)
        return result
