"""Sharded embedding: which shard an item goes to, parts that merge into the very table one run
writes, and merges that refuse missing, incomplete, corrupt or mismatched parts by name."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsvc.catalogue.embedding import EmbedOptions, embed_catalogue
from recsvc.catalogue.embedding_parts import merge_parts, part_info, part_path
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.catalogue.reader import Catalogue, read_catalogue
from recsvc.catalogue.shards import Shard, parse_shard, resolve_shard, shard_of
from recsvc.errors import ConfigError, DataError
from recsvc.testing import ProductImages
from recsvc.vision.backbones import load_backbone
from recsvc.vision.embedder import ImageEmbedder

# The session's whole table (tests/conftest.py) is embedded with these options but batch 32.
INLINE = EmbedOptions(loader_workers=0, progress=False)
SMALL = EmbedOptions(batch_size=2, loader_workers=0, progress=False)  # 1-2 images to embed
PARTS = 4
PINNED_SHARDS = [0, 0, 2, 3, 3, 2, 2, 0]  # of p000..p007 in 4 shards


def test_shards_are_parsed_and_assigned_by_a_stable_hash() -> None:
    assert parse_shard("2/4") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0", "1/2/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    # blake2b of the id, not Python's salted hash: pinned, so parts of runs in other processes
    # and on other machines (or an older recsvc) still fit together.
    assert [shard_of(f"p{n:03d}", 4) for n in range(8)] == PINNED_SHARDS
    ids = [f"item-{n}" for n in range(4000)]
    counts = np.bincount([shard_of(i, PARTS) for i in ids], minlength=PARTS)
    assert counts.min() > 900  # about a quarter each
    assert all(sum(Shard(k, PARTS).owns(i) for k in range(PARTS)) == 1 for i in ids[:200])


def test_the_shard_comes_from_the_settings_or_the_indexed_job() -> None:
    assert resolve_shard(1, None, {"JOB_COMPLETION_INDEX": "3"}) is None  # not sharded
    assert resolve_shard(4, 2, {"JOB_COMPLETION_INDEX": "3"}) == Shard(2, 4)
    assert resolve_shard(4, None, {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    with pytest.raises(ConfigError, match="RECSVC_IMAGES__SHARD_INDEX or run as a Kubernetes"):
        resolve_shard(4, None, {})
    with pytest.raises(ConfigError, match="between 0 and 3"):
        resolve_shard(4, None, {"JOB_COMPLETION_INDEX": "4"})
    with pytest.raises(ConfigError, match="shard_count is 1"):
        resolve_shard(1, 2, {})


@pytest.fixture(scope="module")
def parts(
    tmp_path_factory: pytest.TempPathFactory, products: ProductImages, embedder: ImageEmbedder
) -> Path:
    """The catalogue embedded as four shards: a folder with emb.parquet.part-{0..3}-of-4."""
    out = tmp_path_factory.mktemp("shards") / "emb.parquet"
    catalogue = read_catalogue(products.catalogue)
    for index in range(PARTS):
        report = embed_catalogue(catalogue, embedder, out, INLINE, shard=Shard(index, PARTS))
        mine = [i for i in products.ids if shard_of(i, PARTS) == index]
        assert report.embedded == len(mine) and report.failed == 0
    assert not out.exists()
    return out.parent


@pytest.fixture
def copied(parts: Path, tmp_path: Path) -> Path:
    """A private copy of the real parts; the merged table's path."""
    shutil.copytree(parts, tmp_path / "run")
    return tmp_path / "run" / "emb.parquet"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Four parts of a made-up 40-item catalogue (no CNN: for the merge's checks)."""
    rng = np.random.default_rng(0)
    ids = [f"i{n:02d}" for n in range(40)]
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    out = tmp_path / "emb.parquet"
    for index in range(PARTS):
        rows = [r for r, item_id in enumerate(ids) if shard_of(item_id, PARTS) == index]
        EmbeddingTable(
            "efficientnet_lite0",
            [ids[r] for r in rows],
            [f"sha{r}" for r in rows],
            ["x"] * len(rows),
            vectors[rows],
            weights_sha256="a" * 64,
            catalogue_rows=np.array(rows, dtype=np.int64),
            part_info=part_info(Shard(index, PARTS), ids, complete=True),
        ).save(part_path(out, Shard(index, PARTS)))
    return out


def test_merged_rows_follow_the_catalogue(out: Path) -> None:
    merge_parts(out, PARTS)
    merged = EmbeddingTable.load(out)
    assert merged.item_ids == [f"i{n:02d}" for n in range(40)]
    assert merged.sha256 == [f"sha{n}" for n in range(40)]
    rng = np.random.default_rng(0)
    assert np.array_equal(merged.vectors, rng.normal(size=(40, 8)).astype(np.float32))


@pytest.mark.slow
def test_four_shards_merge_into_the_table_of_one_run(embedding_table: Path, copied: Path) -> None:
    out = copied
    part = EmbeddingTable.load(part_path(out, Shard(1, PARTS)))
    assert part.part_info["shard"] == "1/4" and part.part_info["complete"] == "true"
    assert part.catalogue_rows is not None and list(part.catalogue_rows) == sorted(
        part.catalogue_rows
    )

    report = merge_parts(out, PARTS)
    assert len(report.merged) == PARTS and not report.missing and not report.incomplete
    merged, single = EmbeddingTable.load(out), EmbeddingTable.load(embedding_table)
    assert merged.item_ids == single.item_ids and report.items == len(single.item_ids)
    assert merged.sha256 == single.sha256 and merged.categories == single.categories
    assert (merged.backbone, merged.weights_sha256) == (single.backbone, single.weights_sha256)
    assert single.weights_sha256  # recorded
    assert np.array_equal(merged.vectors, single.vectors)  # bit for bit
    assert merged.catalogue_rows is None and not merged.part_info  # a whole table, as one run's


@pytest.mark.slow
def test_a_rerun_shard_resumes_from_its_part_or_from_the_merged_table(
    copied: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    out = copied
    catalogue = read_catalogue(products.catalogue)
    again = embed_catalogue(catalogue, embedder, out, INLINE, shard=Shard(0, PARTS))
    assert again.embedded == 0 and again.reused > 0
    merge_parts(out, PARTS)
    # Two shards instead of four: each starts from the merged table, nothing is embedded.
    for index in range(2):
        report = embed_catalogue(catalogue, embedder, out, INLINE, shard=Shard(index, 2))
        assert report.embedded == 0
    merge_parts(out, 2)
    assert EmbeddingTable.load(out).item_ids == products.ids


def test_a_shard_without_items_writes_an_empty_part(
    tmp_path: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    one = Catalogue([read_catalogue(products.catalogue).items[0]])
    out = tmp_path / "emb.parquet"
    for index in range(PARTS):
        embed_catalogue(one, embedder, out, SMALL, shard=Shard(index, PARTS))
    report = merge_parts(out, PARTS)
    assert report.items == 1 and len(report.merged) == PARTS
    assert EmbeddingTable.load(out).item_ids == [products.ids[0]]


def test_a_missing_part_is_named_and_nothing_is_written(out: Path) -> None:
    missing = part_path(out, Shard(2, PARTS))
    held, held_ids = missing.read_bytes(), EmbeddingTable.load(missing).item_ids
    missing.unlink()
    with pytest.raises(DataError, match=r"1 of 4 parts not ready: emb.parquet.part-2-of-4: miss"):
        merge_parts(out, PARTS)
    assert not out.exists()

    report = merge_parts(out, PARTS, allow_missing=True)
    assert report.missing == [missing.name] and len(report.merged) == 3
    merged = EmbeddingTable.load(out)
    assert len(merged.item_ids) == report.items == 40 - len(held_ids)

    # --wait: the merge looks again until the part appears (here: written on its first pause).
    out.unlink()
    pauses: list[float] = []

    def part_arrives(seconds: float) -> None:
        pauses.append(seconds)
        missing.write_bytes(held)

    report = merge_parts(out, PARTS, wait_seconds=60, poll_seconds=0.5, sleep=part_arrives)
    assert pauses == [0.5] and len(report.merged) == PARTS and not report.missing


def test_an_incomplete_part_is_not_merged(out: Path) -> None:
    path = part_path(out, Shard(3, PARTS))
    table = EmbeddingTable.load(path)
    replace(table, part_info={**table.part_info, "complete": "false"}).save(path)
    with pytest.raises(DataError, match="part-3-of-4: incomplete"):
        merge_parts(out, PARTS)
    assert merge_parts(out, PARTS, allow_missing=True).incomplete == [path.name]


@pytest.mark.parametrize("fault", ["corrupt", "other shard", "other weights", "other catalogue"])
def test_a_bad_part_is_named(out: Path, fault: str) -> None:
    path = part_path(out, Shard(1, PARTS))
    table = EmbeddingTable.load(path)
    if fault == "corrupt":
        path.write_bytes(path.read_bytes()[:100])
        expected = "part emb.parquet.part-1-of-4 is corrupt"
    elif fault == "other shard":
        shutil.copy(part_path(out, Shard(0, PARTS)), path)
        expected = "part emb.parquet.part-1-of-4 holds shard 0/4, not 1/4"
    elif fault == "other weights":
        replace(table, weights_sha256="0" * 64).save(path)
        expected = "parts do not agree: emb.parquet.part-1-of-4 was made with .*weights 000000"
    else:
        info = {**table.part_info, "catalogue_sha256": "f" * 32, "catalogue_items": "61"}
        replace(table, part_info=info).save(path)
        expected = r"part-1-of-4 was made with .*catalogue ffffff.* \(61 items\)"
    for allow_missing in (False, True):
        with pytest.raises(DataError, match=expected):
            merge_parts(out, PARTS, allow_missing=allow_missing)
    assert not out.exists()


def test_a_table_from_other_weights_is_embedded_again(
    tmp_path: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    two = Catalogue(read_catalogue(products.catalogue).items[:2])
    out = tmp_path / "emb.parquet"
    assert embed_catalogue(two, embedder, out, SMALL).embedded == 2
    table = EmbeddingTable.load(out)
    assert table.weights_sha256 == embedder.weights_sha256 != ""
    # Another load of the same weights (as in another shard's process) has the same digest:
    # nothing randomly initialised (the unused classifier) is part of it.
    assert load_backbone().weights_sha256 == embedder.weights_sha256
    replace(table, weights_sha256="0" * 64).save(out)
    assert embed_catalogue(two, embedder, out, SMALL).embedded == 2
    replace(table, weights_sha256="").save(out)  # from before weights were recorded: kept
    assert embed_catalogue(two, embedder, out, SMALL).reused == 2
