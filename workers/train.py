"""Training: interactions -> implicit ALS -> HNSW indexes -> a published model version."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import implicit
import implicit.gpu
import numpy as np
from threadpoolctl import threadpool_limits

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings
from recsvc.core.model import NO_CATEGORY, IdMap, Model, ModelInfo
from recsvc.errors import ConfigError
from recsvc.index import IndexParams, ItemIndex, recall_at_k
from workers.interactions import Interactions, read_categories, read_interactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedFactors:
    user_factors: np.ndarray
    item_factors: np.ndarray
    device: str
    seconds: float


def resolve_device(requested: str) -> str:
    """'cpu' or 'cuda' for a requested 'auto' | 'cpu' | 'cuda'."""
    if requested == "cuda" and not implicit.gpu.HAS_CUDA:
        raise ConfigError("train.device: cuda requested but implicit found no usable GPU")
    if requested == "auto":
        return "cuda" if implicit.gpu.HAS_CUDA else "cpu"
    return requested


def fit_als(
    interactions: Interactions, settings: TrainSettings, progress: bool = True
) -> TrainedFactors:
    """Fit implicit ALS on the user-item matrix, on the GPU when asked and available."""
    device = resolve_device(settings.device)
    # implicit parallelises over users itself; BLAS threads on top oversubscribe the cores
    # (implicit checks this when the model is constructed, so the limit covers both steps).
    blas_limit = threadpool_limits(limits=1, user_api="blas")
    model = implicit.als.AlternatingLeastSquares(
        factors=settings.factors,
        regularization=settings.regularization,
        alpha=settings.alpha,
        iterations=settings.iterations,
        random_state=settings.seed,
        use_gpu=device == "cuda",
        num_threads=settings.threads,
    )
    started = time.perf_counter()
    try:
        model.fit(interactions.matrix, show_progress=progress)
    finally:
        blas_limit.restore_original_limits()
    seconds = time.perf_counter() - started
    if device == "cuda":
        model = model.to_cpu()
    return TrainedFactors(
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
        device,
        seconds,
    )


def build_model(
    interactions: Interactions,
    factors: TrainedFactors,
    train: TrainSettings,
    index: IndexSettings,
    version: str,
    categories: dict[str, str] | None = None,
) -> Model:
    """Assemble the domain Model: id maps, factors, history, popularity and both indexes."""
    params = index_params(index, build_threads=train.threads)
    user_index = ItemIndex.build(factors.item_factors, "ip", params)
    similar_index = ItemIndex.build(factors.item_factors, "cosine", params)
    recall = _measure_recall(user_index, factors.user_factors, index)
    item_categories, names = _category_codes(interactions.item_ids, categories or {})
    matrix = interactions.matrix
    popularity = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)
    info = ModelInfo(
        version=version,
        algorithm="als",
        num_users=len(interactions.user_ids),
        num_items=len(interactions.item_ids),
        num_interactions=interactions.num_interactions,
        factors=int(factors.item_factors.shape[1]),
        parameters={
            "factors": train.factors,
            "iterations": train.iterations,
            "regularization": train.regularization,
            "alpha": train.alpha,
            "seed": train.seed,
            "fit_seconds": round(factors.seconds, 3),
        },
        created_at_ms=int(time.time() * 1000),
        trained_on=factors.device,
        index_recall_at_10=recall,
    )
    return Model(
        info=info,
        users=IdMap(interactions.user_ids),
        items=IdMap(interactions.item_ids),
        user_factors=factors.user_factors,
        item_factors=factors.item_factors,
        user_items=matrix,
        item_popularity=popularity,
        item_categories=item_categories,
        category_names=names,
        user_index=user_index,
        similar_index=similar_index,
        regularization=train.regularization,
        alpha=train.alpha,
    )


def train_and_publish(
    interactions: Interactions,
    store: ModelStore,
    train: TrainSettings,
    index: IndexSettings,
    categories: dict[str, str] | None = None,
    progress: bool = True,
) -> Model:
    """Fit, build and publish a new model version; nothing is visible until it is complete."""
    factors = fit_als(interactions, train, progress=progress)
    log.info("ALS fit on %s in %.2fs", factors.device, factors.seconds)
    model = build_model(interactions, factors, train, index, store.new_version(), categories)
    store.publish(model, index_params(index, build_threads=train.threads))
    return model


def index_params(index: IndexSettings, build_threads: int = 0, ef_search: int = 128) -> IndexParams:
    return IndexParams(
        m=index.m,
        ef_construction=index.ef_construction,
        ef_search=ef_search,
        seed=index.seed,
        threads=build_threads or os.cpu_count() or 1,
    )


def _measure_recall(user_index: ItemIndex, user_factors: np.ndarray, index: IndexSettings) -> float:
    if index.recall_sample == 0 or len(user_factors) == 0:
        return 1.0
    rng = np.random.default_rng(index.seed)
    sample = rng.choice(
        len(user_factors), size=min(index.recall_sample, len(user_factors)), replace=False
    )
    recall = recall_at_k(user_index, user_factors[sample], k=10)
    log.info("index recall@10 against exact search: %.4f", recall)
    return recall


def _category_codes(
    item_ids: list[str], categories: dict[str, str]
) -> tuple[np.ndarray, list[str]]:
    names = [NO_CATEGORY, *sorted(set(categories.values()) - {NO_CATEGORY})]
    lookup = {name: code for code, name in enumerate(names)}
    codes = np.asarray([lookup[categories.get(i, NO_CATEGORY)] for i in item_ids], dtype=np.int32)
    return codes, names


def train_from_files(
    interactions_path: Path,
    store: ModelStore,
    train: TrainSettings,
    index: IndexSettings,
    items_path: Path | None = None,
    progress: bool = True,
) -> Model:
    """The `recsvc train` pipeline."""

    interactions = read_interactions(interactions_path)
    log.info(
        "read %d rows: %d users, %d items, %d distinct interactions",
        interactions.rows_read,
        len(interactions.user_ids),
        len(interactions.item_ids),
        interactions.num_interactions,
    )
    categories = read_categories(items_path) if items_path else None
    return train_and_publish(interactions, store, train, index, categories, progress)
