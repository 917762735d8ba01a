"""Artefacts: atomic publication, verification before loading, rejection of damage."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from recsvc.artifacts import ModelStore
from recsvc.artifacts.hnsw_header import HnswFileError, read_hnsw_file
from recsvc.core.model import Model
from recsvc.errors import ArtifactError
from recsvc.index import DEFAULT_EF_SEARCH, ItemIndex
from recsvc.index.params import GraphParams, SearchParams
from tests.conftest import BUILD, SEARCH


@pytest.fixture
def store_copy(model_store: Path, tmp_path: Path) -> ModelStore:
    copy = tmp_path / "store"
    shutil.copytree(model_store, copy)
    return ModelStore(copy)


def test_round_trip_keeps_everything(model: Model, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    store.publish(model, BUILD)
    loaded = store.load_latest(SEARCH)
    assert loaded.version == model.version
    assert loaded.users.ids == model.users.ids
    assert loaded.items.ids == model.items.ids
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    np.testing.assert_array_equal(loaded.user_items.toarray(), model.user_items.toarray())
    assert loaded.category_names == model.category_names
    assert loaded.info == model.info


def test_latest_points_at_the_newest_published_version(model: Model, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    store.publish(model, BUILD)
    second = replace(model, info=replace(model.info, version=store.new_version()))
    store.publish(second, BUILD)
    assert store.latest_version() == second.version
    assert store.list_versions() == sorted([model.version, second.version])


def test_failed_publish_leaves_nothing_visible(model: Model, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    store.publish(model, BUILD)
    # An index without an HNSW graph cannot be saved: publication fails half-way.
    broken_index = ItemIndex(model.item_factors, "ip", None)
    broken = replace(
        model, info=replace(model.info, version=store.new_version()), user_index=broken_index
    )
    with pytest.raises(ValueError, match="no HNSW graph"):
        store.publish(broken, BUILD)
    assert store.latest_version() == model.version
    assert store.list_versions() == [model.version]
    assert list(store.staging_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["item_factors.npy", "user_index.hnsw", "users.parquet"])
def test_corrupted_file_is_rejected(store_copy: ModelStore, name: str) -> None:
    version = store_copy.latest_version()
    assert version is not None
    path = store_copy.versions_dir / version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name} fails its sha256 check"):
        store_copy.load_latest(SEARCH)


def test_truncated_file_is_rejected(store_copy: ModelStore) -> None:
    version = store_copy.latest_version()
    assert version is not None
    path = store_copy.versions_dir / version / "similar_index.hnsw"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated"):
        store_copy.load_latest(SEARCH)


def test_unknown_schema_version_is_rejected(store_copy: ModelStore) -> None:
    version = store_copy.latest_version()
    assert version is not None
    manifest_path = store_copy.versions_dir / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema version 99"):
        store_copy.load_latest(SEARCH)


def test_missing_manifest_and_empty_store(store_copy: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no model published"):
        ModelStore(tmp_path / "empty").load_latest(SEARCH)
    version = store_copy.latest_version()
    assert version is not None
    (store_copy.versions_dir / version / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        store_copy.load_latest(SEARCH)


def test_arrays_are_never_unpickled(store_copy: ModelStore) -> None:
    """An object array (which needs pickle) in place of the factors is refused, even with a
    matching checksum."""
    version = store_copy.latest_version()
    assert version is not None
    directory = store_copy.versions_dir / version
    np.save(directory / "item_factors.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    manifest = json.loads((directory / "manifest.json").read_text())
    from recsvc.artifacts.manifest import file_entry

    manifest["files"]["item_factors.npy"] = file_entry(directory / "item_factors.npy").model_dump()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unreadable"):
        store_copy.load_latest(SEARCH)


def test_a_model_is_served_at_the_ef_its_training_chose(model: Model, tmp_path: Path) -> None:
    """ef_search 0 at load means the manifest's ef; an explicit ef wins; a manifest from before
    ef tuning (no ef recorded) is served at the default."""
    assert model.info.index_ef_search > 0  # chosen at training
    store = ModelStore(tmp_path / "s")
    tuned = replace(model, info=replace(model.info, index_ef_search=24))
    store.publish(tuned, BUILD)
    manifest = json.loads((store.versions_dir / tuned.version / "manifest.json").read_text())
    assert manifest["index"]["ef_search"] == 24
    assert store.load_latest(replace(SEARCH, user_ef=0)).user_index.hnsw.ef == 24
    assert store.load_latest(replace(SEARCH, user_ef=99)).user_index.hnsw.ef == 99
    version = store.new_version()
    older = replace(model, info=replace(model.info, index_ef_search=0, version=version))
    store.publish(older, BUILD)
    loaded = store.load(version, replace(SEARCH, user_ef=0))
    assert loaded.user_index.hnsw.ef == DEFAULT_EF_SEARCH


@pytest.mark.parametrize(("count", "dim", "m"), [(1, 8, 16), (300, 12, 4), (2500, 16, 8)])
def test_index_files_hnswlib_writes_pass_the_header_check(
    tmp_path: Path, count: int, dim: int, m: int
) -> None:
    """What hnswlib 0.8 writes is what the check expects, on one element and on several levels."""
    vectors = np.random.default_rng(count).standard_normal((count, dim)).astype(np.float32)
    index = ItemIndex.build(vectors, "ip", GraphParams(m, 40, 1, 1), SearchParams(10, 1, 0.0))
    index.save_hnsw(tmp_path / "i.hnsw")
    with (tmp_path / "i.hnsw").open("rb") as handle:
        header = read_hnsw_file(handle, count, dim).header
    assert (header.count, header.max_elements, header.m, header.max_m0) == (count, count, m, 2 * m)
    assert header.entry_point < count
    assert (header.max_level > 0) == (count > 100)
    with (tmp_path / "i.hnsw").open("rb") as handle, pytest.raises(HnswFileError):
        read_hnsw_file(handle, count + 1, dim)


@pytest.mark.parametrize(("count", "dim", "m"), [(1, 8, 16), (300, 12, 4), (2500, 16, 8)])
def test_the_graph_read_from_a_file_searches_as_hnswlib_loading_it(
    tmp_path: Path, count: int, dim: int, m: int
) -> None:
    """Serving builds the index from the checked file's arrays (not hnswlib's load_index,
    which holds the GIL far longer): same graph, so the same neighbours at the same scores."""
    rng = np.random.default_rng(count)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    search = SearchParams(12, 1, 0.0)
    built = ItemIndex.build(vectors, "ip", GraphParams(m, 40, 1, 1), search)
    built.save_hnsw(tmp_path / "i.hnsw")
    loaded = hnswlib.Index(space="ip", dim=dim)
    loaded.load_index(str(tmp_path / "i.hnsw"), max_elements=count)
    loaded.set_ef(12)
    with (tmp_path / "i.hnsw").open("rb") as handle:
        read = ItemIndex.load(vectors, "ip", read_hnsw_file(handle, count, dim).params(), search)
    assert read.hnsw is not None
    assert (read.hnsw.get_current_count(), read.hnsw.M, read.hnsw.ef) == (count, m, 12)
    queries = rng.standard_normal((50, dim)).astype(np.float32)
    k = min(count, 10)
    expected_labels, expected_distances = loaded.knn_query(queries, k=k)
    labels, distances = read.hnsw.knn_query(queries, k=k)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(distances, expected_distances)
    assert read.hnsw.get_items([count - 1])[0] == pytest.approx(vectors[count - 1].tolist())


def _upper_level_cases(path: Path, count: int, dim: int) -> dict[str, tuple[bytes, str]]:
    """Crafted upper levels of a valid file: (its bytes, the error they must give)."""
    with path.open("rb") as handle:
        graph = read_hnsw_file(handle, count, dim)
    data = path.read_bytes()
    h = graph.header
    per_level = 4 * (h.max_m + 1)
    sizes = 4 + graph.levels.astype(np.int64) * per_level
    offsets = 96 + count * h.size_data_per_element + np.cumsum(sizes) - sizes
    owner = int(np.flatnonzero(graph.levels)[0])
    flat = int(np.flatnonzero(graph.levels == 0)[0])
    size_at, first_list = int(offsets[owner]), int(offsets[owner]) + 4

    def patched(*edits: tuple[str, int, int]) -> bytes:
        out = bytearray(data)
        for fmt, at, value in edits:
            struct.pack_into(fmt, out, at, value)
        return bytes(out)

    one_link = ("<H", first_list, 1)
    return {
        "size": (patched(("<I", size_at, per_level + 4)), r"is not 1\.\.\d+ levels"),
        "too many links": (patched(("<H", first_list, h.max_m + 1)), "links > maxM"),
        "link past the end": (patched(one_link, ("<I", first_list + 4, count)), "leaves"),
        "link to level 0": (patched(one_link, ("<I", first_list + 4, flat)), "leaves the level"),
        "lists past the end": (data[: int(offsets[-1]) + 2], "past the end"),
    }


@pytest.mark.parametrize(
    "case", ["size", "too many links", "link past the end", "link to level 0", "lists past the end"]
)
def test_crafted_upper_levels_are_refused(tmp_path: Path, case: str) -> None:
    count, dim = 2500, 8
    vectors = np.random.default_rng(3).standard_normal((count, dim)).astype(np.float32)
    index = ItemIndex.build(vectors, "ip", GraphParams(8, 40, 1, 1), SearchParams(10, 1, 0.0))
    index.save_hnsw(tmp_path / "i.hnsw")
    crafted, message = _upper_level_cases(tmp_path / "i.hnsw", count, dim)[case]
    (tmp_path / "c.hnsw").write_bytes(crafted)
    with (tmp_path / "c.hnsw").open("rb") as handle, pytest.raises(HnswFileError, match=message):
        read_hnsw_file(handle, count, dim)
