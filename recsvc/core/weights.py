"""The per-entry transform of interaction weights (``train.weight_transform``).

One rule for training (on each summed user-item weight) and for real-time fold-in (on a user's
recent weights), so that a folded-in user sees weights on the scale the model was fit on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

WEIGHT_TRANSFORMS = ("none", "log1p")


def transform_weights(weights: npt.NDArray[Any], transform: str) -> npt.NDArray[np.float32]:
    """``weights`` as the weighting sees them: log1p = log(1 + w) (negative weights as 0)."""
    if transform == "log1p":
        transformed: npt.NDArray[np.float32] = np.log1p(np.maximum(weights, 0), dtype=np.float32)
        return transformed
    if transform != "none":
        raise ValueError(f"unknown weight transform {transform!r}; use one of {WEIGHT_TRANSFORMS}")
    return np.asarray(weights, dtype=np.float32)
