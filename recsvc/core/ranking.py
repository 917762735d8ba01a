"""Re-ranking for diversity: maximal marginal relevance (MMR)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def mmr(
    labels: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    unit_vectors: npt.NDArray[np.float32],
    k: int,
    diversity: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Pick ``k`` of the candidates greedily by ``(1 - diversity) * relevance - diversity *
    max cosine similarity to the items already picked``.

    Relevance is the candidates' scores scaled to [0, 1] so both terms are comparable.
    ``unit_vectors`` are L2-normalised item vectors (rows indexed by label). Returns the picked
    labels and their original scores, in pick order.
    """
    if len(labels) <= 1 or diversity <= 0:
        return labels[:k], scores[:k]
    span = float(scores.max() - scores.min()) or 1.0
    relevance = (scores - scores.min()) / span
    vectors = unit_vectors[labels]
    closest = np.full(len(labels), -np.inf, dtype=np.float32)
    picked: list[int] = []
    available = np.ones(len(labels), dtype=bool)
    for _ in range(min(k, len(labels))):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = (1 - diversity) * relevance - diversity * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        closest = np.maximum(closest, vectors @ vectors[best])
    order = np.asarray(picked, dtype=np.int64)
    return labels[order], scores[order]
