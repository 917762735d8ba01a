"""ModelStore: publish model versions atomically; find, verify and load them.

Publishing writes a version into ``.staging``, fsyncs every file and the directory, renames it
into ``versions/`` and only then switches ``LATEST`` (write a temporary file, fsync, rename).
A crash at any point leaves either the old or the new version visible, never a partial one.
Loading verifies the manifest and the sha256 of every file before any file is parsed: hnswlib
checks neither the integrity nor the dimension of what it reads.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsvc.artifacts.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SCHEMA_VERSION,
    ImagesEntry,
    IndexEntry,
    Manifest,
    file_entry,
    sha256_of,
)
from recsvc.config import DEFAULT_EF_SEARCH
from recsvc.core.model import NO_CATEGORY, IdMap, Model, ModelInfo, VisualPart
from recsvc.core.projection import Projection, VisualAdapter
from recsvc.durable import fsync_path, replace_bytes_atomically, write_durably
from recsvc.errors import ArtifactError
from recsvc.index import IndexParams, ItemIndex

log = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
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
PROJECTION_FILES = (
    "projection.w1.npy",
    "projection.b1.npy",
    "projection.w2.npy",
    "projection.b2.npy",
)
ADAPTER_FILES = ("visual_adapter.mean.npy", "visual_adapter.components.npy")
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


class ModelStore:
    """A directory of model versions (see :mod:`recsvc.artifacts`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"

    # ----------------------------------------------------------------- reading

    def latest_version(self) -> str | None:
        """The version LATEST points to, or None when nothing was published yet."""
        try:
            version = (self.root / LATEST_NAME).read_text().strip()
        except FileNotFoundError:
            return None
        if not version:
            raise ArtifactError(f"{self.root / LATEST_NAME} is empty")
        return version

    def list_versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir())

    def read_manifest(self, version: str) -> Manifest:
        """A version's manifest, parsed and checked against this server's schema (files are
        not checked: see :meth:`verify`)."""
        if not _VERSION_NAME.fullmatch(version):
            raise ArtifactError(f"{version!r} is not a model version name")
        directory = self.versions_dir / version
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactError(f"model {version}: {MANIFEST_NAME} is missing in {directory}")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"model {version}: {MANIFEST_NAME} is implausibly large")
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_bytes())
        except ValueError as exc:
            raise ArtifactError(f"model {version}: invalid {MANIFEST_NAME}: {exc}") from exc
        if manifest.schema_version != SCHEMA_VERSION:
            raise ArtifactError(
                f"model {version}: schema version {manifest.schema_version}, this server reads "
                f"{SCHEMA_VERSION}"
            )
        if manifest.model_version != version:
            raise ArtifactError(f"model {version}: manifest names version {manifest.model_version}")
        required = set(REQUIRED_FILES)
        if manifest.images is not None:
            required |= {IMAGE_ROWS, IMAGE_EMBEDDINGS, VISUAL_INDEX}
            if manifest.images.projection:
                required |= set(PROJECTION_FILES)
            if manifest.images.adapter:
                required |= set(ADAPTER_FILES)
        missing = required - manifest.files.keys()
        if missing:
            raise ArtifactError(f"model {version}: manifest lacks {sorted(missing)}")
        return manifest

    def verify(self, version: str) -> Manifest:
        """Check a version's manifest and every file's size and sha256; return the manifest."""
        manifest = self.read_manifest(version)
        directory = self.versions_dir / version
        for name, entry in manifest.files.items():
            path = directory / name
            if not path.is_file():
                raise ArtifactError(f"model {version}: file {name} is missing")
            if path.stat().st_size != entry.bytes:
                raise ArtifactError(
                    f"model {version}: file {name} has {path.stat().st_size} bytes, "
                    f"manifest says {entry.bytes} (truncated or replaced)"
                )
            if sha256_of(path) != entry.sha256:
                raise ArtifactError(f"model {version}: file {name} fails its sha256 check")
        return manifest

    def load(self, version: str, params: IndexParams) -> Model:
        """Verify, then load a version into a :class:`Model`. Raises ArtifactError."""
        manifest = self.verify(version)
        directory = self.versions_dir / version
        try:
            return _read_model(directory, manifest, params)
        except (OSError, ValueError, KeyError, RuntimeError, pa.ArrowException) as exc:
            raise ArtifactError(f"model {version}: unreadable: {exc}") from exc

    def load_factors(self, version: str) -> tuple[list[str], list[str], Any, Any]:
        """A verified version's user ids, item ids, user factors and item factors only (what a
        warm-started retraining needs; no index is read)."""
        manifest = self.verify(version)
        directory = self.versions_dir / version
        try:
            users = pq.read_table(directory / USERS).column("user_id").to_pylist()
            items = pq.read_table(directory / ITEMS).column("item_id").to_pylist()
            shape_u = (manifest.num_users, manifest.factors)
            shape_i = (manifest.num_items, manifest.factors)
            user_factors = _load_array(directory / USER_FACTORS, np.float32, shape_u)
            item_factors = _load_array(directory / ITEM_FACTORS, np.float32, shape_i)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise ArtifactError(f"model {version}: unreadable: {exc}") from exc
        return users, items, user_factors, item_factors

    def load_latest(self, params: IndexParams) -> Model:
        version = self.latest_version()
        if version is None:
            raise ArtifactError(f"no model published in {self.root}; run `recsvc train` first")
        return self.load(version, params)

    # ----------------------------------------------------------------- writing

    def new_version(self) -> str:
        """A fresh version id, later than every published one (UTC time, microseconds)."""
        version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S-%f")
        published = self.list_versions()
        while published and version <= published[-1]:
            time.sleep(0.001)
            version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S-%f")
        return version

    def publish(self, model: Model, index_params: IndexParams) -> Path:
        """Write ``model`` as a new version and point LATEST at it. Returns its directory."""
        version = model.version
        final = self.versions_dir / version
        if final.exists():
            raise ArtifactError(f"model {version} already exists in {self.root}")
        with self._staging(version) as staging:
            files = _write_model_files(staging, model)
            manifest = _manifest_for(
                model, index_params, {n: file_entry(staging / n) for n in files}
            )
            write_durably(staging / MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
            fsync_path(staging)
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
            fsync_path(self.versions_dir)
        self.point_latest_to(version)
        log.info("published model %s to %s", version, final)
        return final

    def point_latest_to(self, version: str) -> None:
        """Atomically switch LATEST to ``version`` (which must verify)."""
        self.verify(version)
        replace_bytes_atomically(self.root / LATEST_NAME, f"{version}\n".encode())

    def delete(self, version: str) -> None:
        """Remove a published version; the one LATEST points to cannot be removed."""
        self.read_manifest(version)
        if version == self.latest_version():
            raise ArtifactError(f"model {version} is the latest version; it cannot be removed")
        directory = self.versions_dir / version
        if not directory.is_dir():
            raise ArtifactError(f"model {version} does not exist in {self.root}")
        # Rename first so that a reader never sees a half-deleted version.
        doomed = self.staging_dir / f"deleting-{version}"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        os.rename(directory, doomed)
        shutil.rmtree(doomed)

    def collect_garbage(self, keep: int) -> list[str]:
        """Keep the ``keep`` newest versions and LATEST; remove the rest and abandoned staging
        directories (of processes no longer running). Returns the versions removed."""
        latest = self.latest_version()
        versions = self.list_versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != latest]
        for version in doomed:
            self.delete(version)
        if self.staging_dir.is_dir():
            for leftover in self.staging_dir.iterdir():
                owner = leftover.suffix.lstrip(".")
                if not (owner.isdigit() and _process_alive(int(owner))):
                    shutil.rmtree(leftover, ignore_errors=True)
        return doomed

    @contextmanager
    def _staging(self, version: str) -> Iterator[Path]:
        """A private directory to write into; removed on any failure or interruption."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = self.staging_dir / f"{version}.{os.getpid()}"
        staging.mkdir()
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _write_model_files(directory: Path, model: Model) -> list[str]:
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
    for name, array in arrays.items():
        with (directory / name).open("wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    model.user_index.save_hnsw(directory / USER_INDEX)
    model.similar_index.save_hnsw(directory / SIMILAR_INDEX)
    names = [USERS, ITEMS, *arrays, USER_INDEX, SIMILAR_INDEX]
    if visual is not None:
        visual.index.save_hnsw(directory / VISUAL_INDEX)
        names.append(VISUAL_INDEX)
    for name in names:
        fsync_path(directory / name)
    return names


def _manifest_for(model: Model, params: IndexParams, files: dict[str, object]) -> Manifest:
    info = model.info
    return Manifest.model_validate(
        {
            "schema_version": SCHEMA_VERSION,
            "model_version": info.version,
            "created_at_ms": info.created_at_ms,
            "algorithm": info.algorithm,
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
                m=params.m,
                ef_construction=params.ef_construction,
                recall_at_10=info.index_recall_at_10,
                ef_search=info.index_ef_search,
            ),
            "images": _images_entry(model),
            "files": files,
        }
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
        items_with_images=len(visual.rows),
        cold_items=int(model.info.statistics.get("cold_items", 0)),
        projection=visual.projection is not None,
        projection_r2=model.info.statistics.get("projection_r2"),
    )


def _read_visual(directory: Path, manifest: Manifest, params: IndexParams) -> VisualPart | None:
    images = manifest.images
    if images is None:
        return None
    rows = _load_array(directory / IMAGE_ROWS, np.int64, None)
    embeddings = _load_array(directory / IMAGE_EMBEDDINGS, np.float32, (len(rows), images.dim))
    if len(rows) and (rows.min() < 0 or rows.max() >= manifest.num_items):
        raise ValueError("image rows point outside the item table")
    projection = None
    if images.projection:
        w1, b1, w2, b2 = (_load_array(directory / n, np.float32, None) for n in PROJECTION_FILES)
        projection = Projection(w1, b1, w2, b2)
        if projection.input_dim != images.backbone_dim or projection.output_dim != manifest.factors:
            raise ValueError("the projection does not map image embeddings to item factors")
    adapter = None
    if images.adapter:
        mean, components = (_load_array(directory / n, np.float32, None) for n in ADAPTER_FILES)
        adapter = VisualAdapter(mean, components, images.adapter_raw_weight)
        if adapter.input_dim != images.backbone_dim or adapter.output_dim != images.dim:
            raise ValueError("the visual adapter does not fit the image embeddings")
    return VisualPart(
        backbone=images.backbone,
        backbone_dim=images.backbone_dim,
        rows=rows,
        embeddings=embeddings,
        index=ItemIndex.load(
            embeddings,
            "cosine",
            directory / VISUAL_INDEX,
            replace(params, ef_search=params.similar_ef_search),
        ),
        projection=projection,
        adapter=adapter,
        n_items=manifest.num_items,
    )


def _read_model(directory: Path, manifest: Manifest, params: IndexParams) -> Model:
    users = pq.read_table(directory / USERS).column("user_id").to_pylist()
    items = pq.read_table(directory / ITEMS)
    item_ids = items.column("item_id").to_pylist()
    categories = [c or NO_CATEGORY for c in items.column("category").to_pylist()]
    names = [NO_CATEGORY, *sorted(set(categories) - {NO_CATEGORY})]
    codes = {name: code for code, name in enumerate(names)}
    item_categories = np.asarray([codes[c] for c in categories], dtype=np.int32)
    popularity = items.column("popularity").to_numpy().astype(np.float32)

    user_factors = _load_array(
        directory / USER_FACTORS, np.float32, (manifest.num_users, manifest.factors)
    )
    item_factors = _load_array(
        directory / ITEM_FACTORS, np.float32, (manifest.num_items, manifest.factors)
    )
    indptr = _load_array(directory / HISTORY_INDPTR, np.int64, (manifest.num_users + 1,))
    indices = _load_array(directory / HISTORY_INDICES, np.int32, None)
    data = _load_array(directory / HISTORY_DATA, np.float32, indices.shape)
    if len(users) != manifest.num_users or len(item_ids) != manifest.num_items:
        raise ValueError("id maps do not match the manifest's counts")
    if indptr[-1] != len(indices) or (len(indices) and indices.max() >= manifest.num_items):
        raise ValueError("interaction history is inconsistent")
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
        user_index=ItemIndex.load(
            item_factors, "ip", directory / USER_INDEX, _user_search(params, manifest)
        ),
        similar_index=ItemIndex.load(
            item_factors,
            "cosine",
            directory / SIMILAR_INDEX,
            replace(params, ef_search=params.similar_ef_search),
        ),
        regularization=manifest.regularization,
        alpha=manifest.alpha,
        visual=_read_visual(directory, manifest, params),
    )


def _user_search(params: IndexParams, manifest: Manifest) -> IndexParams:
    """``params`` with ef_search 0 (the server's default) resolved to the ef training chose."""
    if params.ef_search:
        return params
    return replace(params, ef_search=manifest.index.ef_search or DEFAULT_EF_SEARCH)


def _load_array(
    path: Path, dtype: type[np.generic], shape: tuple[int, ...] | None
) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.load(path, allow_pickle=False)
    if array.dtype != dtype:
        raise ValueError(f"{path.name}: dtype {array.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{path.name}: shape {array.shape}, expected {shape}")
    return array


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
