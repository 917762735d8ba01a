"""Learning the visual space from the catalogue's categories (regularised LDA).

Raw ImageNet features put a product near others of similar texture and pose; shoppers expect
"similar" to mean the same kind of product. Linear discriminant analysis on the catalogue's own
categories finds the directions that separate them, and cosine search in that space follows
the shop's taxonomy while still ranking by appearance within a category. Measured on the
fashion photos (learned on 7,583 items, 2,000 random others held out, their 10 nearest
neighbours in the rest of the catalogue): articleType agreement 0.752 raw -> 0.826 (shrinkage
0.3, 64 dimensions; 0.1 or 1.0 and 48 or 74 dimensions gave within 0.005). The raw embedding is
kept beside the learned one with weight 0.2 (agreement 0.825) so that appearance still orders
items inside a category, which a space of (categories - 1) dimensions alone would flatten.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import scipy.linalg

from recsvc.core.projection import VisualAdapter

log = logging.getLogger(__name__)

MIN_ITEMS_PER_CATEGORY = 2
MIN_CATEGORIES = 3


def fit_visual_adapter(
    embeddings: npt.NDArray[np.float32],
    categories: list[str],
    dims: int = 64,
    shrinkage: float = 0.3,
    raw_weight: float = 0.2,
) -> VisualAdapter | None:
    """LDA of ``embeddings`` (n, d) by ``categories`` (n labels, "" = unknown); None when the
    categories cannot support it (fewer than 3 categories with 2 or more items)."""
    labels = np.asarray(categories)
    names, counts = np.unique(labels[labels != ""], return_counts=True)
    usable = set(names[counts >= MIN_ITEMS_PER_CATEGORY].tolist())
    keep = np.flatnonzero(np.isin(labels, list(usable)))
    if len(usable) < MIN_CATEGORIES:
        log.info("visual space: %d usable categories, keeping raw embeddings", len(usable))
        return None
    x = np.asarray(embeddings[keep], dtype=np.float64)
    _, codes = np.unique(labels[keep], return_inverse=True)
    mean = x.mean(axis=0)
    centred = x - mean
    class_means = np.zeros((len(usable), x.shape[1]))
    np.add.at(class_means, codes, centred)
    sizes = np.bincount(codes).astype(np.float64)
    class_means /= sizes[:, None]
    within = centred - class_means[codes]
    scatter_within = within.T @ within / len(x)
    scatter_between = (class_means.T * sizes) @ class_means / len(x)
    ridge = shrinkage * np.trace(scatter_within) / len(scatter_within)
    regularised = scatter_within + ridge * np.eye(len(scatter_within))
    _, vectors = scipy.linalg.eigh(scatter_between, regularised)
    out = min(dims, len(usable) - 1, x.shape[1])
    components = vectors[:, ::-1][:, :out]
    log.info("visual space: LDA over %d categories, %d items -> %d dims", len(usable), len(x), out)
    return VisualAdapter(
        mean.astype(np.float32), np.ascontiguousarray(components, np.float32), raw_weight
    )
