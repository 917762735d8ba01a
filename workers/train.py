"""Training: interactions -> implicit ALS -> HNSW indexes -> a published model version."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings
from recsvc.core.model import NO_CATEGORY, IdMap, Model, ModelInfo
from recsvc.index import IndexParams, ItemIndex, recall_at_k
from workers.evaluate import Protocol, evaluate_model, split_interactions
from workers.interactions import Interactions, ReadOptions, read_categories, read_interactions
from workers.models import TrainedFactors, fit_factors

log = logging.getLogger(__name__)


def build_model(
    interactions: Interactions,
    factors: TrainedFactors,
    train: TrainSettings,
    index: IndexSettings,
    version: str,
    categories: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Model:
    """Assemble the domain Model: id maps, factors, history, popularity and both indexes."""
    params = index_params(index, build_threads=train.threads)
    user_index = ItemIndex.build(factors.item_factors, "ip", params)
    # Normalised vectors make an easy graph: half the build effort keeps its recall
    # (bench/train.py measures it) and keeps training within 1.2x of raw implicit + hnswlib.
    similar_params = replace(params, ef_construction=index.similar_ef_construction)
    similar_index = ItemIndex.build(factors.item_factors, "cosine", similar_params)
    recall = _measure_recall(user_index, factors.user_factors, index)
    item_categories, names = _category_codes(interactions.item_ids, categories or {})
    matrix = interactions.matrix
    popularity = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)
    info = ModelInfo(
        version=version,
        algorithm=train.algorithm,
        num_users=len(interactions.user_ids),
        num_items=len(interactions.item_ids),
        num_interactions=interactions.num_interactions,
        factors=int(factors.item_factors.shape[1]),
        parameters={**train_parameters(train), "fit_seconds": round(factors.seconds, 3)},
        created_at_ms=int(time.time() * 1000),
        trained_on=factors.device,
        index_recall_at_10=recall,
        statistics=interactions.statistics(),
        metrics=metrics or {},
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
    evaluate: Protocol | None = None,
    metrics: dict[str, Any] | None = None,
) -> Model:
    """Fit, build and publish a new model version; nothing is visible until it is complete.

    With ``evaluate``, the same parameters are first fit on that protocol's training part and
    measured on its test part; the metrics (or ``metrics``, measured by the caller) go into
    the manifest.
    """
    if evaluate is not None and metrics is None:
        metrics = holdout_metrics(interactions, train, evaluate)
    factors = fit_factors(interactions.matrix, train, progress=progress)
    log.info("%s fit on %s in %.2fs", train.algorithm, factors.device, factors.seconds)
    model = build_model(
        interactions, factors, train, index, store.new_version(), categories, metrics
    )
    store.publish(model, index_params(index, build_threads=train.threads))
    return model


def holdout_metrics(
    interactions: Interactions, train: TrainSettings, protocol: Protocol
) -> dict[str, Any]:
    """Metrics at 10 of ``train``'s parameters on ``protocol``'s holdout of ``interactions``."""
    split = split_interactions(interactions.matrix, interactions.timestamps, protocol)
    metrics = {"protocol": protocol, **evaluate_model(split, train, k=10)}
    log.info("holdout (%s): ndcg@10 %.4f", protocol, metrics["ndcg@10"])
    return metrics


def train_parameters(train: TrainSettings) -> dict[str, object]:
    """The parameters that shaped a model, as recorded in its manifest."""
    keys = ["algorithm", "factors", "iterations", "regularization", "weighting", "seed"]
    keys += ["alpha"] if train.algorithm == "als" else ["learning_rate"]
    if train.weighting == "bm25":
        keys += ["bm25_k1", "bm25_b"]
    return {key: getattr(train, key) for key in keys}


def index_params(index: IndexSettings, build_threads: int = 0, ef_search: int = 64) -> IndexParams:
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
    read_options: ReadOptions | None = None,
    evaluate: Protocol | None = None,
) -> Model:
    """The `recsvc train` pipeline."""
    interactions = read_interactions(interactions_path, read_options)
    log.info(
        "read %d rows: %d users, %d items, %d distinct interactions",
        interactions.rows_read,
        len(interactions.user_ids),
        len(interactions.item_ids),
        interactions.num_interactions,
    )
    categories = read_categories(items_path) if items_path else None
    return train_and_publish(interactions, store, train, index, categories, progress, evaluate)
