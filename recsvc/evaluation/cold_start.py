"""Evaluating the image part: visual neighbour quality, and cold start on a semi-synthetic set.

**Visual quality**: for each item with an image, the share of its 10 nearest visual neighbours
(cosine of image embeddings, the item itself left out) that have the same label (e.g. the
catalogue's category); chance is the sum of squared label shares. Measured for held-out items
(a seeded random sample), for the raw embeddings and for the learned visual space
(``recsvc.fitting.visual_space``, fitted on the other items only), with neighbours taken among the
held-out items alone and among the rest of the catalogue.

**Cold start** on a semi-synthetic dataset built from a real product catalogue.

Real products (images and attributes), simulated shoppers: each user has latent preferences
over a few attributes (Dirichlet-distributed over each attribute's values) and every item a
latent appeal (log-normal); a user's interactions are sampled without replacement with
probability proportional to appeal x product of the preferences for the item's values.

Items are split at random (seeded) into three groups: **cold** (20%: no interaction reaches
training), **warm-test** (20%: half of their interactions train, half test) and the rest
(all train). ALS learns on the training interactions, the projection learns image embedding ->
item factors on the warm items, and cold items get projected vectors. Two rankings of equal
candidate-set size are measured at k:

- warm: each user's held-out warm-test interactions, ranked among the warm-test items by the
  learned factors (the user's training items removed);
- cold: each user's interactions with cold items, ranked among the cold items by the
  projected factors;

with baselines on the cold ranking: popularity (a cold item scores the mean training
popularity of items in its category, the best non-personal signal a new item has) and random.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.errors import DataError
from recsvc.evaluation.holdout import Split, factor_scorer, random_scorer, ranking_metrics
from recsvc.fitting.cold_start_projection import ProjectionSettings, fit_projection
from recsvc.fitting.factors import fit_factors
from recsvc.fitting.visual_space import MIN_PROXY_ITEMS, VisualSpaceSettings, fit_visual_adapter
from recsvc.index import normalise_rows


@dataclass(frozen=True)
class SimulationSettings:
    users: int = 4000
    mean_interactions: int = 30
    concentration: float = 0.3
    appeal_sigma: float = 0.5
    cold_share: float = 0.2
    warm_test_share: float = 0.2
    seed: int = 42


def visual_agreement(
    queries: npt.NDArray[np.float32],
    query_labels: list[str],
    k: int = 10,
    catalogue: npt.NDArray[np.float32] | None = None,
    catalogue_labels: list[str] | None = None,
) -> dict[str, Any]:
    """Mean share of each query's ``k`` nearest neighbours (exact cosine) with its label.

    Neighbours come from the queries themselves (each query leaves itself out) or, when
    ``catalogue`` is given, from the catalogue (which must not hold the queries).
    """
    within = catalogue is None
    pool = normalise_rows(queries if within else catalogue)  # type: ignore[arg-type]
    pool_labels = np.asarray(query_labels if within else catalogue_labels)
    if len(pool) <= k:
        raise DataError(f"visual agreement needs more than {k} items with images, got {len(pool)}")
    unit = normalise_rows(queries)
    wanted = np.asarray(query_labels)
    agree = 0.0
    for start in range(0, len(unit), 1024):
        scores = unit[start : start + 1024] @ pool.T
        if within:
            scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        agree += float((pool_labels[top] == wanted[start : start + len(scores), None]).sum())
    _, counts = np.unique(pool_labels, return_counts=True)
    shares = counts / counts.sum()
    return {
        f"agreement@{k}": round(agree / (len(unit) * k), 4),
        "chance": round(float((shares**2).sum()), 4),
        "queries": len(unit),
        "neighbours_from": len(pool) if not within else len(pool) - 1,
    }


def visual_quality(
    vectors: npt.NDArray[np.float32],
    labels: list[str],
    k: int = 10,
    holdout: int = 2000,
    seed: int = 42,
    other_labels: dict[str, list[str]] | None = None,
    space: VisualSpaceSettings | None = None,
) -> dict[str, Any]:
    """Agreement@k of ``holdout`` random items (seeded), for the raw embeddings and for the
    visual space learned from the other items' labels only (``labels``, and ``other_labels``
    columns when given); each both among the held-out items alone and against the rest of the
    catalogue (what SimilarItems does for a new item)."""
    holdout = min(holdout, len(vectors) // 2)
    order = np.random.default_rng(seed).permutation(len(vectors))
    held, rest = np.sort(order[:holdout]), np.sort(order[holdout:])
    tags = np.asarray(labels)
    held_labels, rest_labels = tags[held].tolist(), tags[rest].tolist()

    def both(queries: npt.NDArray[np.float32], others: npt.NDArray[np.float32]) -> dict[str, Any]:
        return {
            "within_holdout": visual_agreement(queries, held_labels, k),
            "against_catalogue": visual_agreement(queries, held_labels, k, others, rest_labels),
        }

    result: dict[str, Any] = {"raw": both(vectors[held], vectors[rest])}
    others = {
        name: np.asarray(column)[rest].tolist() for name, column in (other_labels or {}).items()
    }
    space = space or VisualSpaceSettings()
    adapter = fit_visual_adapter(vectors[rest], rest_labels, others, space)
    if adapter is not None:
        result["learned_space"] = {
            **both(adapter.apply(vectors[held]), adapter.apply(vectors[rest])),
            "fitted_on_items": len(rest),
            "method": space.method if len(rest) >= MIN_PROXY_ITEMS else "lda",
            "label_columns": len(others) + 1,
            "dims": adapter.output_dim,
            "class_probabilities": adapter.classes,
        }
    return result


def simulate_interactions(
    attributes: dict[str, list[str]], settings: SimulationSettings
) -> sp.csr_matrix:
    """(users, items) binary interactions; ``attributes`` maps a name to each item's value."""
    rng = np.random.default_rng(settings.seed)
    n_items = len(next(iter(attributes.values())))
    log_weight = np.zeros((settings.users, n_items), dtype=np.float64)
    for values in attributes.values():
        vocabulary, codes = np.unique(np.asarray(values), return_inverse=True)
        preferences = rng.dirichlet(
            np.full(len(vocabulary), settings.concentration), settings.users
        )
        log_weight += np.log(preferences[:, codes] + 1e-9)
    log_weight += rng.normal(0.0, settings.appeal_sigma, n_items)[None, :]
    counts = np.clip(rng.poisson(settings.mean_interactions, settings.users), 3, n_items)
    # Sampling without replacement with probability ~ weight: the top-n of log w + Gumbel noise.
    keys = log_weight + rng.gumbel(size=log_weight.shape)
    rows, cols = [], []
    for user in range(settings.users):
        chosen = np.argpartition(-keys[user], counts[user])[: counts[user]]
        rows.append(np.full(len(chosen), user))
        cols.append(chosen)
    data = np.ones(int(counts.sum()), dtype=np.float32)
    return sp.csr_matrix(
        (data, (np.concatenate(rows), np.concatenate(cols))), shape=(settings.users, n_items)
    )


def evaluate_cold_start(
    embeddings: npt.NDArray[np.float32],
    attributes: dict[str, list[str]],
    train: TrainSettings,
    simulation: SimulationSettings | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """The module's protocol over items with ``embeddings`` (n, d) and their ``attributes``."""
    simulation = simulation or SimulationSettings()
    started = time.perf_counter()
    n_items = len(embeddings)
    if n_items < 50:
        raise DataError(f"cold-start evaluation needs at least 50 items with images, got {n_items}")
    matrix = simulate_interactions(attributes, simulation)
    rng = np.random.default_rng(simulation.seed + 1)
    order = rng.permutation(n_items)
    n_cold = round(simulation.cold_share * n_items)
    n_warm_test = round(simulation.warm_test_share * n_items)
    cold, warm_test = np.sort(order[:n_cold]), np.sort(order[n_cold : n_cold + n_warm_test])
    warm = np.sort(order[n_cold:])

    coo = matrix.tocoo()
    in_cold = np.isin(coo.col, cold)
    in_warm_test = np.isin(coo.col, warm_test)
    held_out = in_warm_test & (rng.random(len(coo.col)) < 0.5)
    train_mask = ~in_cold & ~held_out
    training = _matrix(coo, train_mask, matrix.shape)

    factors = fit_factors(training, train, progress=False)
    warm_rows = warm[np.diff(training.tocsc().indptr)[warm] > 0]  # items with training data
    fitted = fit_projection(
        embeddings[warm_rows], factors.item_factors[warm_rows], ProjectionSettings(seed=train.seed)
    )
    projected = fitted.projection.apply(embeddings[cold])

    warm_split = Split(
        train=training[:, warm_test],
        test=_matrix(coo, held_out, matrix.shape)[:, warm_test],
        train_timestamps=None,
    )
    cold_split = Split(
        train=sp.csr_matrix((matrix.shape[0], len(cold)), dtype=np.float32),
        test=_matrix(coo, in_cold, matrix.shape)[:, cold],
        train_timestamps=None,
    )
    categories = np.asarray(attributes.get("category", [""] * n_items))
    category_popularity = _category_popularity(training, categories)
    cold_popularity = category_popularity[cold].astype(np.float32)
    return {
        "items": n_items,
        "users": simulation.users,
        "interactions": int(matrix.nnz),
        "cold_items": len(cold),
        "warm_test_items": len(warm_test),
        "projection_validation_r2": fitted.validation_r2,
        "warm": ranking_metrics(
            factor_scorer(factors.user_factors, factors.item_factors[warm_test]), warm_split, k
        ),
        "cold": ranking_metrics(factor_scorer(factors.user_factors, projected), cold_split, k),
        "cold_baselines": {
            "category_popularity": ranking_metrics(
                lambda users: np.broadcast_to(cold_popularity, (len(users), len(cold))),
                cold_split,
                k,
            ),
            "random": ranking_metrics(random_scorer(len(cold), simulation.seed), cold_split, k),
        },
        "seconds": round(time.perf_counter() - started, 2),
    }


def _matrix(coo: sp.coo_matrix, mask: npt.NDArray[np.bool_], shape: tuple[int, int]) -> Any:
    return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=shape)


def _category_popularity(
    training: sp.csr_matrix, categories: npt.NDArray[np.str_]
) -> npt.NDArray[np.float64]:
    """Per item: mean training popularity of the items that share its category."""
    popularity = np.bincount(training.indices, minlength=training.shape[1]).astype(np.float64)
    _, codes = np.unique(categories, return_inverse=True)
    totals = np.bincount(codes, weights=popularity)
    sizes = np.bincount(codes)
    return (totals / np.maximum(sizes, 1))[codes]
