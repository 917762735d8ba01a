"""Training: interactions -> implicit ALS -> HNSW indexes -> a published model version."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.catalogue.reader import read_categories
from recsvc.config import IndexSettings, TrainSettings
from recsvc.core.model import NO_CATEGORY, IdMap, IndexFacts, Model, ModelInfo, VisualPart
from recsvc.core.projection import Projection
from recsvc.data.interaction_files import read_interactions
from recsvc.data.matrix import Interactions, ReadOptions
from recsvc.evaluation.holdout import (
    Protocol,
    Split,
    evaluate_model,
    split_interactions,
)
from recsvc.fitting.factors import TrainedFactors, fit_factors
from recsvc.fitting.visual_space import VisualSpaceSettings, fit_visual_adapter
from recsvc.index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_SIMILAR_EF_SEARCH,
    SIMILAR_EF_LADDER,
    SIMILAR_RECALL_TARGET,
    IndexBuildParams,
    ItemIndex,
    tune_ef,
)

log = logging.getLogger(__name__)

MIN_PROJECTION_ITEMS = 20
# Image embeddings make an easy cosine graph: a capped build effort keeps its recall.
_VISUAL_EF_CONSTRUCTION = 100


def build_model(
    interactions: Interactions,
    factors: TrainedFactors,
    train: TrainSettings,
    index: IndexSettings,
    version: str,
    categories: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    images: EmbeddingTable | None = None,
) -> Model:
    """Assemble the domain Model: id maps, factors, history, popularity and the indexes.

    With ``images``, the model also gets a visual index over every item that has an image
    embedding, a projection from image embeddings to item factors learned on the warm items,
    and the items that have an image but no interaction (cold items) with projected factors.
    """
    params = IndexBuildParams.from_settings(index, train.threads)
    statistics = interactions.statistics()
    visual: VisualPart | None = None
    if images is not None:
        space = VisualSpaceSettings(class_weight=train.visual_class_weight, seed=train.seed)
        attached = attach_images(
            interactions, factors, images, params, train.seed, categories, space
        )
        interactions, factors, visual = attached.interactions, attached.factors, attached.visual
        statistics.update(attached.statistics)
        image_categories = dict(zip(images.item_ids, images.categories, strict=True))
        categories = {**{i: c for i, c in image_categories.items() if c}, **(categories or {})}
    user_index = ItemIndex.build(factors.item_factors, "ip", params.user_graph, params.trial_search)
    # Normalised vectors make an easier graph: small catalogues keep their recall with a smaller
    # build effort, large ones need a denser graph (docs/BENCHMARKS.md, issue 17).
    similar_graph = params.similar_graph(len(factors.item_factors))
    similar_index = ItemIndex.build(
        factors.item_factors, "cosine", similar_graph, params.trial_search
    )
    ef_search, recall = _tune_search(user_index, factors.user_factors, index)
    similar_ef, similar_recall = _tune_similar_search(similar_index, index)
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
        parameters={
            **train_parameters(train),
            **factors.details,
            "fit_seconds": round(factors.seconds, 3),
        },
        created_at_ms=int(time.time() * 1000),
        trained_on=factors.device,
        engine=factors.engine,
        index_recall_at_10=recall,
        index_ef_search=ef_search,
        index_m=params.user_graph.m,
        index_ef_construction=params.user_graph.ef_construction,
        similar_index=IndexFacts(
            similar_graph.m, similar_graph.ef_construction, similar_ef, similar_recall
        ),
        statistics=statistics,
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
        visual=visual,
        dislikes=interactions.dislikes,
    )


@dataclass(frozen=True)
class WithImages:
    """Interactions and factors extended by the cold items, and the model's visual part."""

    interactions: Interactions
    factors: TrainedFactors
    visual: VisualPart
    statistics: dict[str, Any]


def attach_images(
    interactions: Interactions,
    factors: TrainedFactors,
    images: EmbeddingTable,
    params: IndexBuildParams,
    seed: int,
    categories: dict[str, str] | None = None,
    space: VisualSpaceSettings | None = None,
) -> WithImages:
    """Learn the projection on warm items with images; add cold items (an image, no
    interaction) with projected factors; learn the visual space from the categories (the
    catalogue's where given, else the table's) and index every image in it."""
    categories = categories or {}
    known = {item_id: row for row, item_id in enumerate(interactions.item_ids)}
    warm = [(pos, known[i]) for pos, i in enumerate(images.item_ids) if i in known]
    cold = [pos for pos, i in enumerate(images.item_ids) if i not in known]
    projection: Projection | None = None
    r2: float | None = None
    if len(warm) >= MIN_PROJECTION_ITEMS:
        from recsvc.fitting.cold_start_projection import (  # torch: only here
            ProjectionSettings,
            fit_projection,
        )

        positions, rows = (np.asarray(x, dtype=np.int64) for x in zip(*warm, strict=True))
        fitted = fit_projection(
            images.vectors[positions],
            factors.item_factors[rows],
            ProjectionSettings(seed=seed),
        )
        projection, r2 = fitted.projection, fitted.validation_r2
    elif cold:
        log.warning(
            "only %d items have both an image and interactions (need %d): no projection, "
            "the %d items without interactions are left out",
            len(warm),
            MIN_PROJECTION_ITEMS,
            len(cold),
        )
        cold = []
    item_ids = [*interactions.item_ids, *(images.item_ids[p] for p in cold)]
    item_factors = factors.item_factors
    if cold and projection is not None:
        projected = projection.apply(images.vectors[np.asarray(cold)])
        item_factors = np.vstack([item_factors, projected.astype(np.float32)])
    matrix = interactions.matrix
    n_items = len(item_ids)
    widened = sp.csr_matrix(
        (matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], n_items)
    )
    timestamps = interactions.timestamps
    if timestamps is not None:
        timestamps = sp.csr_matrix(
            (timestamps.data, timestamps.indices, timestamps.indptr),
            shape=(matrix.shape[0], n_items),
        )
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    image_positions = [p for p, i in enumerate(images.item_ids) if i in row_of]
    rows = np.asarray([row_of[images.item_ids[p]] for p in image_positions], dtype=np.int64)
    raw = images.vectors[np.asarray(image_positions, dtype=np.int64)]
    labels = [categories.get(images.item_ids[p]) or images.categories[p] for p in image_positions]
    adapter = fit_visual_adapter(raw, labels, settings=space)
    embeddings = adapter.apply(raw) if adapter is not None else raw
    visual_graph = params.capped(_VISUAL_EF_CONSTRUCTION).user_graph
    visual = VisualPart(
        backbone=images.backbone,
        backbone_dim=images.dim,
        rows=rows,
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
        index=ItemIndex.build(embeddings, "cosine", visual_graph, params.trial_search),
        projection=projection,
        adapter=adapter,
        n_items=n_items,
        cold_items=len(cold),
        projection_r2=r2,
    )
    log.info(
        "images: %d items with an embedding, %d cold items added, projection R^2 %s",
        len(rows),
        len(cold),
        r2,
    )
    extended = replace(interactions, item_ids=item_ids, matrix=widened, timestamps=timestamps)
    statistics: dict[str, Any] = {"cold_items": len(cold), "items_with_images": len(rows)}
    if r2 is not None:
        statistics["projection_r2"] = r2
    return WithImages(
        extended,
        replace(factors, item_factors=np.ascontiguousarray(item_factors)),
        visual,
        statistics,
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
    images: EmbeddingTable | None = None,
    initial: tuple[np.ndarray, np.ndarray] | None = None,
    fitted: TrainedFactors | None = None,
) -> Model:
    """Fit, build and publish a new model version; nothing is visible until it is complete.

    ``fitted``: factors the caller fit already, rows in ``interactions``' id order (the
    train worker's Spark fit over the interaction store).

    With ``evaluate``, the same parameters are first fit on that protocol's training part and
    measured on its test part; the metrics (or ``metrics``, measured by the caller) go into
    the manifest.
    """
    if evaluate is not None and metrics is None:
        metrics = holdout_metrics(interactions, train, evaluate)
    factors = fitted or fit_factors(interactions.matrix, train, progress=progress, initial=initial)
    log.info(
        "%s fit by %s on %s in %.2fs",
        train.algorithm,
        factors.engine,
        factors.device,
        factors.seconds,
    )
    model = build_model(
        interactions, factors, train, index, store.new_version(), categories, metrics, images
    )
    store.publish(model, IndexBuildParams.from_settings(index, train.threads))
    return model


def holdout_split(interactions: Interactions, protocol: Protocol) -> Split:
    """``protocol``'s (seeded, hence repeatable) split of ``interactions``."""
    return split_interactions(interactions.matrix, interactions.timestamps, protocol)


def holdout_metrics(
    interactions: Interactions,
    train: TrainSettings,
    protocol: Protocol,
    split: Split | None = None,
) -> dict[str, Any]:
    """Metrics at 10 of ``train``'s parameters on ``protocol``'s holdout of ``interactions``
    (``split``: that holdout, when the caller already made it)."""
    split = split or holdout_split(interactions, protocol)
    metrics = {"protocol": protocol, **evaluate_model(split, train, k=10)}
    log.info("holdout (%s): ndcg@10 %.4f", protocol, metrics["ndcg@10"])
    return metrics


def recipe_of(manifest_parameters: dict[str, Any], train: TrainSettings) -> TrainSettings:
    """The settings a published model was fit with (its manifest's ``parameters``, written by
    :func:`train_parameters`), the rest from ``train`` (device, threads, engine: implicit
    for a BPR recipe, which Spark cannot fit)."""
    known = set(TrainSettings.model_fields) - {
        "device",
        "threads",
        "engine",
        "spark_master",
        "spark_conf",
    }
    update = {key: value for key, value in manifest_parameters.items() if key in known}
    update.setdefault("weight_transform", "none")  # a manifest from before the setting
    if update.get("algorithm", train.algorithm) != "als":
        update["engine"] = "implicit"  # a BPR recipe, refit where BPR exists
    return TrainSettings.model_validate({**train.model_dump(), **update})


def train_parameters(train: TrainSettings) -> dict[str, object]:
    """The parameters that shaped a model, as recorded in its manifest."""
    keys = ["algorithm", "factors", "iterations", "regularization", "weighting"]
    keys += ["weight_transform", "seed"]
    keys += ["alpha"] if train.algorithm == "als" else ["learning_rate"]
    if train.weighting == "bm25":
        keys += ["bm25_k1", "bm25_b"]
    return {key: getattr(train, key) for key in keys}


def _tune_search(
    user_index: ItemIndex, user_factors: np.ndarray, index: IndexSettings
) -> tuple[int, float]:
    """The ef to serve this model at and its recall@10 against exact search, on a sample of
    the users (recall_sample; 0: not measured, the default ef and recall 1.0 are recorded)."""
    if index.recall_sample == 0 or len(user_factors) == 0:
        return DEFAULT_EF_SEARCH, 1.0
    rng = np.random.default_rng(index.seed)
    sample = rng.choice(
        len(user_factors), size=min(index.recall_sample, len(user_factors)), replace=False
    )
    ef, recall = tune_ef(user_index, user_factors[sample])
    log.info("index recall@10 against exact search: %.4f at ef %d", recall, ef)
    return ef, recall


def _tune_similar_search(similar_index: ItemIndex, index: IndexSettings) -> tuple[int, float]:
    """The ef to serve item->item queries at and its recall@10 against exact cosine search,
    with a sample of the items as queries (recall_sample; 0: not measured, the default ef
    and recall 1.0 are recorded). An item is its own nearest neighbour and counts as one of
    the ten, as in bench/train.py's figures."""
    size = similar_index.size
    if index.recall_sample == 0 or size == 0:
        return DEFAULT_SIMILAR_EF_SEARCH, 1.0
    rng = np.random.default_rng(index.seed + 1)
    sample = rng.choice(size, size=min(index.recall_sample, size), replace=False)
    ef, recall = tune_ef(
        similar_index,
        similar_index.vectors[sample],
        ladder=SIMILAR_EF_LADDER,
        target=SIMILAR_RECALL_TARGET,
    )
    log.info("item->item index recall@10 against exact search: %.4f at ef %d", recall, ef)
    return ef, recall


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
    images_path: Path | None = None,
) -> Model:
    """The `recsvc train` pipeline (``images_path``: an embedding table from `recsvc embed`)."""
    interactions = read_interactions(interactions_path, read_options)
    log.info(
        "read %d rows: %d users, %d items, %d distinct interactions",
        interactions.rows_read,
        len(interactions.user_ids),
        len(interactions.item_ids),
        interactions.num_interactions,
    )
    categories = read_categories(items_path) if items_path else None
    images = EmbeddingTable.load(images_path) if images_path else None
    return train_and_publish(
        interactions, store, train, index, categories, progress, evaluate, images=images
    )
