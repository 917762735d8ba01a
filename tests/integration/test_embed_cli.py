"""`recsvc embed` and `recsvc eval --images` as a user runs them: loud failures, nested image
layouts, and cold-start attributes from the catalogue's own columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.testing import ProductImages
from tests.helpers import run_recsvc as run
from tests.helpers import run_recsvc_process


def _nested_shop(products: ProductImages, root: Path, count: int = 12) -> Path:
    """Photos at ``<first 3 characters of the id>/<id>.jpg``; a catalogue without an image
    column and without any of the fashion data set's columns."""
    lines = ["product_id,department,material,price"]
    for n, item_id in enumerate(products.copy_nested(root, count)):
        lines.append(f"{item_id},{products.kinds[item_id]},{['wood', 'steel'][n % 2]},{n}.5")
    catalogue = root / "shop.csv"
    catalogue.write_text("\n".join(lines) + "\n")
    return catalogue


@pytest.mark.slow
def test_bad_image_pattern_is_one_line(tmp_path: Path, products: ProductImages) -> None:
    catalogue = _nested_shop(products, tmp_path / "shop", count=2)
    out = tmp_path / "emb.parquet"
    result = run(
        "embed",
        "--catalogue",
        str(catalogue),
        "--image-pattern",
        "{item_id[:3]/{item_id}.jpg",
        "--out",
        str(out),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "image pattern '{item_id[:3]/{item_id}.jpg'" in lines[0]
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.slow
def test_embed_fails_loudly_and_reads_nested_layouts(
    tmp_path: Path, products: ProductImages
) -> None:
    catalogue = _nested_shop(products, tmp_path / "shop")
    out = tmp_path / "emb.parquet"
    embed = ["embed", "--catalogue", str(catalogue), "--out", str(out)]
    flat = run(*embed, "--image-pattern", "{item_id}.jpg", "--loader-workers", "0", "--no-progress")
    assert flat.returncode == 1, flat.stderr
    assert "no image could be read (12 tried, nothing written)" in flat.stderr
    assert f"{products.ids[0]}: cannot read" in flat.stderr
    assert not out.exists()

    # As processes from here: the default loader processes read the nested layout and report
    # the failures (the in-process runs above decode inline).
    nested = run_recsvc_process(
        *embed, "--image-pattern", "{item_id[:3]}/{item_id}.jpg", "--no-progress"
    )
    assert nested.returncode == 0, nested.stderr
    assert json.loads(nested.stdout)["embedded"] == 12

    # Two photos gone: 2 of 12 is over 5% but not over 20%.
    for item_id in products.ids[:2]:
        (tmp_path / "shop" / item_id[:3] / f"{item_id}.jpg").unlink()
    again = [*embed, "--image-pattern", "{item_id[:3]}/{item_id}.jpg", "--no-progress"]
    over = run(*again, "--loader-workers", "0")
    assert over.returncode == 1, over.stderr
    assert "2 of 12 images failed (16.7%, more than the allowed 5.0%)" in over.stderr
    assert json.loads(over.stdout)["reused"] == 10
    allowed = run_recsvc_process(*again, "--max-failure-share", "0.2")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["failed"] == 2


@pytest.mark.slow
def test_eval_takes_cold_start_attributes_from_the_catalogue(
    tmp_path: Path, products: ProductImages, embedding_table: Path
) -> None:
    catalogue = _nested_shop(products, tmp_path / "shop", count=len(products.ids))
    evaluate = ["eval", "--images", str(embedding_table), "--catalogue", str(catalogue)]
    small = ["--users", "200", "--holdout", "20", "--json", "--log-level", "INFO"]
    missing = run(*evaluate, "--attributes", "gender,department,baseColour", *small)
    assert missing.returncode == 2
    assert "no column 'gender', 'baseColour'" in missing.stderr
    assert "department, material, price" in missing.stderr

    detected = run(*evaluate, *small)
    assert detected.returncode == 0, detected.stderr
    result = json.loads(detected.stdout)
    # The table's category, then the text columns with few values (price is a number).
    assert result["cold_start"]["attributes"] == ["category", "department", "material"]
    assert "no image column" not in detected.stderr


@pytest.mark.slow
def test_sharded_embed_and_merge_as_an_indexed_job_runs_them(
    tmp_path: Path, products: ProductImages, embedding_table: Path
) -> None:
    out = tmp_path / "emb.parquet"
    embed = ["embed", "--catalogue", str(products.catalogue), "--out", str(out), "--no-progress"]
    embed += ["--loader-workers", "0"]
    assert run(*embed, "--shard", "2/2").returncode == 2  # numbered from 0
    first = run(*embed, "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["out"] == f"{out}.part-0-of-2"
    # The other shard as a pod of an Indexed Job gets it: the count set, the index from k8s.
    second = run_recsvc_process(*embed, RECSVC_IMAGES__SHARD_COUNT="2", JOB_COMPLETION_INDEX="1")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["shard"] == "1/2"
    assert not out.exists()

    missing = run("embed-merge", "--parts", "3", "--out", str(out))
    assert missing.returncode == 1 and "emb.parquet.part-2-of-3: missing" in missing.stderr
    merged = run("embed-merge", "--parts", "2", "--out", str(out))
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout)["items"] == len(products.ids)
    table, single = EmbeddingTable.load(out), EmbeddingTable.load(embedding_table)
    assert table.item_ids == single.item_ids
    assert np.array_equal(table.vectors, single.vectors)
