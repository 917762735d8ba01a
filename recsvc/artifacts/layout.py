"""The files of one model version: their names, and how a Model is written to them and read
back (every array with ``allow_pickle=False`` and its dtype and shape checked against the
manifest). ModelStore (recsvc.artifacts.store) decides where and when; this module only what.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsvc.artifacts.files import open_regular
from recsvc.artifacts.hnsw_header import HnswFileError, read_hnsw_file
from recsvc.artifacts.manifest import (
    SCHEMA_VERSION,
    ImagesEntry,
    IndexEntry,
    Manifest,
)
from recsvc.core.model import NO_CATEGORY, IdMap, IndexFacts, Model, ModelInfo, VisualPart
from recsvc.core.projection import Projection, VisualAdapter
from recsvc.durable import fsync_path
from recsvc.index import IndexBuildParams, IndexSearchParams, ItemIndex
from recsvc.index.item_index import Metric
from recsvc.index.params import SearchParams

FloatArray = npt.NDArray[np.float32]

USERS = "users.parquet"
ITEMS = "items.parquet"
USER_FACTORS = "user_factors.npy"
ITEM_FACTORS = "item_factors.npy"
HISTORY_INDPTR = "user_items.indptr.npy"
HISTORY_INDICES = "user_items.indices.npy"
HISTORY_DATA = "user_items.data.npy"
USER_INDEX = "user_index.hnsw"
SIMILAR_INDEX = "similar_index.hnsw"
IMAGE_ROWS = "image_rows.npy"
IMAGE_EMBEDDINGS = "image_embeddings.npy"
VISUAL_INDEX = "visual_index.hnsw"
# Optional (only when a user disliked something): (user_id, item_id) pairs never to recommend.
# A server from before it ignores the file (no schema change): it serves without the block.
DISLIKES = "user_dislikes.parquet"
PROJECTION_FILES = (
    "projection.w1.npy",
    "projection.b1.npy",
    "projection.w2.npy",
    "projection.b2.npy",
)
ADAPTER_FILES = ("visual_adapter.mean.npy", "visual_adapter.components.npy")
# Optional: the adapter's category classifier (manifest images.adapter_classes > 0).
ADAPTER_CLASS_FILES = ("visual_adapter.class_weights.npy", "visual_adapter.class_bias.npy")
REQUIRED_FILES = frozenset(
    {
        USERS,
        ITEMS,
        USER_FACTORS,
        ITEM_FACTORS,
        HISTORY_INDPTR,
        HISTORY_INDICES,
        HISTORY_DATA,
        USER_INDEX,
        SIMILAR_INDEX,
    }
)


def required_files(manifest: Manifest) -> set[str]:
    """The files a version described by ``manifest`` must have."""
    required = set(REQUIRED_FILES)
    if manifest.images is not None:
        required |= {IMAGE_ROWS, IMAGE_EMBEDDINGS, VISUAL_INDEX}
        if manifest.images.projection:
            required |= set(PROJECTION_FILES)
        if manifest.images.adapter:
            required |= set(ADAPTER_FILES)
            if manifest.images.adapter_classes:
                required |= set(ADAPTER_CLASS_FILES)
    return required


def write_model_files(directory: Path, model: Model) -> list[str]:
    pq.write_table(pa.table({"user_id": pa.array(model.users.ids, pa.string())}), directory / USERS)
    categories = [model.category_names[c] for c in model.item_categories]
    items = pa.table(
        {
            "item_id": pa.array(model.items.ids, pa.string()),
            "category": pa.array(categories, pa.string()),
            "popularity": pa.array(model.item_popularity, pa.float32()),
        }
    )
    pq.write_table(items, directory / ITEMS)
    history = model.user_items
    arrays: dict[str, npt.NDArray[np.generic]] = {
        USER_FACTORS: model.user_factors,
        ITEM_FACTORS: model.item_factors,
        HISTORY_INDPTR: history.indptr.astype(np.int64),
        HISTORY_INDICES: history.indices.astype(np.int32),
        HISTORY_DATA: history.data.astype(np.float32),
    }
    visual = model.visual
    if visual is not None:
        arrays[IMAGE_ROWS] = visual.rows.astype(np.int64)
        arrays[IMAGE_EMBEDDINGS] = visual.embeddings.astype(np.float32)
        if visual.projection is not None:
            p = visual.projection
            arrays.update(zip(PROJECTION_FILES, (p.w1, p.b1, p.w2, p.b2), strict=True))
        if visual.adapter is not None:
            a = visual.adapter
            arrays.update(zip(ADAPTER_FILES, (a.mean, a.components), strict=True))
            if a.class_weights is not None and a.class_bias is not None:
                classifier = (a.class_weights, a.class_bias)
                arrays.update(zip(ADAPTER_CLASS_FILES, classifier, strict=True))
    for name, array in arrays.items():
        with (directory / name).open("wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    model.user_index.save_hnsw(directory / USER_INDEX)
    model.similar_index.save_hnsw(directory / SIMILAR_INDEX)
    names = [USERS, ITEMS, *arrays, USER_INDEX, SIMILAR_INDEX]
    if model.dislikes:
        _write_dislikes(directory / DISLIKES, model.dislikes)
        names.append(DISLIKES)
    if visual is not None:
        visual.index.save_hnsw(directory / VISUAL_INDEX)
        names.append(VISUAL_INDEX)
    for name in names:
        fsync_path(directory / name)
    return names


def _write_dislikes(path: Path, dislikes: Mapping[str, tuple[str, ...]]) -> None:
    users = [user_id for user_id, items in dislikes.items() for _ in items]
    items = [item_id for found in dislikes.values() for item_id in found]
    table = pa.table(
        {"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string())}
    )
    pq.write_table(table, path)


def _read_dislikes(directory: Path, manifest: Manifest) -> dict[str, tuple[str, ...]]:
    """The model's dislikes (none when the version has no such file)."""
    if DISLIKES not in manifest.files:
        return {}
    table = pq.read_table(directory / DISLIKES)
    users = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    if any(not isinstance(v, str) or not v for v in [*users, *items]):
        raise ValueError(f"{DISLIKES}: ids must be non-empty strings")
    pairs: dict[str, dict[str, None]] = {}
    for user_id, item_id in zip(users, items, strict=True):
        pairs.setdefault(user_id, {})[item_id] = None
    return {user_id: tuple(found) for user_id, found in pairs.items()}


def manifest_for(model: Model, params: IndexBuildParams, files: dict[str, object]) -> Manifest:
    info = model.info
    return Manifest.model_validate(
        {
            "schema_version": SCHEMA_VERSION,
            "model_version": info.version,
            "created_at_ms": info.created_at_ms,
            "algorithm": info.algorithm,
            "engine": info.engine,
            "trained_on": info.trained_on,
            "parameters": info.parameters,
            "regularization": model.regularization,
            "alpha": model.alpha,
            "num_users": info.num_users,
            "num_items": info.num_items,
            "num_interactions": info.num_interactions,
            "factors": info.factors,
            "data": info.statistics,
            "metrics": info.metrics,
            "index": IndexEntry(
                m=info.index_m or params.m,
                ef_construction=info.index_ef_construction or params.ef_construction,
                recall_at_10=info.index_recall_at_10,
                ef_search=info.index_ef_search,
            ),
            "similar_index": _index_entry(info.similar_index),
            "images": _images_entry(model),
            "files": files,
        }
    )


def _index_entry(facts: IndexFacts | None) -> IndexEntry | None:
    if facts is None:
        return None
    return IndexEntry(
        m=facts.m,
        ef_construction=facts.ef_construction,
        recall_at_10=facts.recall_at_10,
        ef_search=facts.ef_search,
    )


def _images_entry(model: Model) -> ImagesEntry | None:
    visual = model.visual
    if visual is None:
        return None
    return ImagesEntry(
        backbone=visual.backbone,
        backbone_dim=visual.backbone_dim,
        dim=visual.dim,
        adapter=visual.adapter is not None,
        adapter_raw_weight=visual.adapter.raw_weight if visual.adapter is not None else 0.0,
        adapter_classes=visual.adapter.classes if visual.adapter is not None else 0,
        adapter_class_weight=visual.adapter.class_weight if visual.adapter is not None else 0.0,
        adapter_class_temperature=(
            visual.adapter.class_temperature if visual.adapter is not None else 1.0
        ),
        items_with_images=len(visual.rows),
        cold_items=visual.cold_items,
        projection=visual.projection is not None,
        projection_r2=visual.projection_r2,
    )


def _read_visual(
    directory: Path, manifest: Manifest, params: IndexSearchParams
) -> VisualPart | None:
    images = manifest.images
    if images is None:
        return None
    rows = load_array(directory / IMAGE_ROWS, np.int64, (images.items_with_images,))
    embeddings = load_array(directory / IMAGE_EMBEDDINGS, np.float32, (len(rows), images.dim))
    if len(rows) and (rows.min() < 0 or rows.max() >= manifest.num_items):
        raise ValueError("image rows point outside the item table")
    if len(np.unique(rows)) != len(rows):
        raise ValueError("image rows name an item twice")
    projection = None
    if images.projection:
        projection = _read_projection(directory, images.backbone_dim, manifest.factors)
    adapter = None
    if images.adapter:
        adapter = _read_adapter(directory, images)
    return VisualPart(
        backbone=images.backbone,
        backbone_dim=images.backbone_dim,
        rows=rows,
        embeddings=embeddings,
        index=_load_index(embeddings, "cosine", directory / VISUAL_INDEX, params.visual),
        projection=projection,
        adapter=adapter,
        n_items=manifest.num_items,
        cold_items=images.cold_items,
        projection_r2=images.projection_r2,
    )


def _read_adapter(directory: Path, images: ImagesEntry) -> VisualAdapter:
    """The visual adapter, its arrays' shapes checked against the manifest (the learned part
    is what the space holds beyond the raw dimensions and the class probabilities)."""
    learned = images.dim - images.backbone_dim - images.adapter_classes
    if learned < 1:
        raise ValueError("the visual adapter's space is not wider than the backbone's")
    mean = load_array(directory / ADAPTER_FILES[0], np.float32, (images.backbone_dim,))
    components = load_array(
        directory / ADAPTER_FILES[1], np.float32, (images.backbone_dim, learned)
    )
    class_weights = class_bias = None
    if images.adapter_classes:
        shapes = ((images.backbone_dim, images.adapter_classes), (images.adapter_classes,))
        class_weights, class_bias = (
            load_array(directory / name, np.float32, shape)
            for name, shape in zip(ADAPTER_CLASS_FILES, shapes, strict=True)
        )
        if not (np.isfinite(class_weights).all() and np.isfinite(class_bias).all()):
            raise ValueError("the visual adapter's class weights are not all finite")
    return VisualAdapter(
        mean,
        components,
        images.adapter_raw_weight,
        class_weights,
        class_bias,
        images.adapter_class_temperature,
        images.adapter_class_weight,
    )


def _read_projection(directory: Path, backbone_dim: int, factors: int) -> Projection:
    """The cold-start projection, each array's shape checked against the manifest's
    dimensions before it is used (a wrong shape once escaped as an IndexError)."""
    w1 = load_array(directory / PROJECTION_FILES[0], np.float32, None)
    if w1.ndim != 2 or w1.shape[0] != backbone_dim or w1.shape[1] < 1:
        raise ValueError(f"{PROJECTION_FILES[0]}: shape {w1.shape}, expected ({backbone_dim}, h)")
    hidden = int(w1.shape[1])
    b1 = load_array(directory / PROJECTION_FILES[1], np.float32, (hidden,))
    w2 = load_array(directory / PROJECTION_FILES[2], np.float32, (hidden, factors))
    b2 = load_array(directory / PROJECTION_FILES[3], np.float32, (factors,))
    return Projection(w1, b1, w2, b2)


def _load_index(vectors: FloatArray, metric: Metric, path: Path, search: SearchParams) -> ItemIndex:
    """An HNSW file checked against its vectors' count and dimension before hnswlib reads it
    (hnswlib follows whatever entry point and links the file holds)."""
    count, dim = vectors.shape
    with open_regular(path.parent, path.name, "model") as handle:
        try:
            graph = read_hnsw_file(handle, count, dim)
        except HnswFileError as exc:
            raise ValueError(
                f"{path.name}: not an index of {count} {dim}-d vectors: {exc}"
            ) from None
    return ItemIndex.load(vectors, metric, graph.params(), search)


def _check_ids(ids: list[Any], what: str, expected: int) -> None:
    if len(ids) != expected:
        raise ValueError(f"{what}: {len(ids)} ids, the manifest says {expected}")
    if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{what}: ids must be distinct, non-empty strings")


def _check_history(indptr: npt.NDArray[Any], indices: npt.NDArray[Any], num_items: int) -> None:
    if indptr[0] != 0 or indptr[-1] != len(indices) or bool((np.diff(indptr) < 0).any()):
        raise ValueError("interaction history: row pointers are not 0..nnz ascending")
    if len(indices) and (indices.min() < 0 or indices.max() >= num_items):
        raise ValueError("interaction history: an item column is out of range")


def _index_facts(entry: IndexEntry | None) -> IndexFacts | None:
    if entry is None:
        return None
    return IndexFacts(entry.m, entry.ef_construction, entry.ef_search, entry.recall_at_10)


def read_model(directory: Path, manifest: Manifest, params: IndexSearchParams) -> Model:
    users = pq.read_table(directory / USERS).column("user_id").to_pylist()
    items = pq.read_table(directory / ITEMS)
    item_ids = items.column("item_id").to_pylist()
    categories = [c or NO_CATEGORY for c in items.column("category").to_pylist()]
    names = [NO_CATEGORY, *sorted(set(categories) - {NO_CATEGORY})]
    codes = {name: code for code, name in enumerate(names)}
    item_categories = np.asarray([codes[c] for c in categories], dtype=np.int32)
    popularity = items.column("popularity").to_numpy().astype(np.float32)

    user_factors = load_array(
        directory / USER_FACTORS, np.float32, (manifest.num_users, manifest.factors)
    )
    item_factors = load_array(
        directory / ITEM_FACTORS, np.float32, (manifest.num_items, manifest.factors)
    )
    indptr = load_array(directory / HISTORY_INDPTR, np.int64, (manifest.num_users + 1,))
    indices = load_array(directory / HISTORY_INDICES, np.int32, None)
    data = load_array(directory / HISTORY_DATA, np.float32, indices.shape)
    _check_ids(users, USERS, manifest.num_users)
    _check_ids(item_ids, ITEMS, manifest.num_items)
    if len(popularity) != manifest.num_items:
        raise ValueError(f"{ITEMS}: popularity column does not match the item count")
    _check_history(indptr, indices, manifest.num_items)
    for name, factors in ((USER_FACTORS, user_factors), (ITEM_FACTORS, item_factors)):
        if not np.isfinite(factors).all():
            raise ValueError(f"{name}: not every factor is a finite number")
    history = sp.csr_matrix((data, indices, indptr), shape=(manifest.num_users, manifest.num_items))

    info = ModelInfo(
        version=manifest.model_version,
        algorithm=manifest.algorithm,
        num_users=manifest.num_users,
        num_items=manifest.num_items,
        num_interactions=manifest.num_interactions,
        factors=manifest.factors,
        parameters=dict(manifest.parameters),
        created_at_ms=manifest.created_at_ms,
        trained_on=manifest.trained_on,
        index_recall_at_10=manifest.index.recall_at_10,
        index_ef_search=manifest.index.ef_search,
        index_m=manifest.index.m,
        index_ef_construction=manifest.index.ef_construction,
        similar_index=_index_facts(manifest.similar_index),
        engine=manifest.engine,
        image_embedding_dim=manifest.images.dim if manifest.images else 0,
        statistics=dict(manifest.data),
        metrics=dict(manifest.metrics),
    )
    return Model(
        info=info,
        users=IdMap(users),
        items=IdMap(item_ids),
        user_factors=user_factors,
        item_factors=item_factors,
        user_items=history,
        item_popularity=popularity,
        item_categories=item_categories,
        category_names=names,
        user_index=_load_index(
            item_factors, "ip", directory / USER_INDEX, params.user(manifest.index.ef_search)
        ),
        similar_index=_load_index(
            item_factors,
            "cosine",
            directory / SIMILAR_INDEX,
            params.similar(manifest.similar_index.ef_search if manifest.similar_index else 0),
        ),
        regularization=manifest.regularization,
        alpha=manifest.alpha,
        visual=_read_visual(directory, manifest, params),
        dislikes=_read_dislikes(directory, manifest),
    )


def load_array(
    path: Path, dtype: type[np.generic], shape: tuple[int, ...] | None
) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.load(path, allow_pickle=False)
    if array.dtype != dtype:
        raise ValueError(f"{path.name}: dtype {array.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{path.name}: shape {array.shape}, expected {shape}")
    return array
