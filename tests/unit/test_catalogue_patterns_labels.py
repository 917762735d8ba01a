"""Image patterns (slices of the id, nested layouts, bad patterns), embed runs that fail loudly,
and label columns taken from the catalogue itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.catalogue.embedding import EmbedOptions, embed_catalogue
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.catalogue.image_pattern import ImagePattern
from recsvc.catalogue.reader import Catalogue, CatalogueItem, CatalogueOptions, read_catalogue
from recsvc.errors import DataError
from recsvc.testing import ProductImages
from recsvc.vision.embedder import ImageEmbedder

INLINE = EmbedOptions(loader_workers=0, progress=False)


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("{item_id}.jpg", "0123456.jpg"),
        ("{item_id[:3]}/{item_id}.jpg", "012/0123456.jpg"),
        ("{item_id[-2:]}/{item_id[2:5]}.png", "56/234.png"),
        ("{item_id[0]}{item_id[-1]}/x", "06/x"),
        ("{item_id:.3}/{item_id}.jpg", "012/0123456.jpg"),
        ("{item_id:_>9}", "__0123456"),
        ("{{raw}}/{item_id}", "{raw}/0123456"),
        ("{item_id[100]}-{item_id[5:100]}", "-56"),
    ],
)
def test_image_pattern_renders_slices_and_specs(pattern: str, path: str) -> None:
    assert ImagePattern(pattern).path_for("0123456") == path


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("{item_id[:3}/{item_id}.jpg", "expected '}'"),
        ("{id}.jpg", "unknown field"),
        ("{item_id.upper}.jpg", "unknown field"),
        ("{item_id[::2]}.jpg", "unknown field"),
        ("{item_id[]}.jpg", "empty index"),
        ("{item_id!r}.jpg", "conversion"),
        ("{item_id:{width}}.jpg", "nested"),
        ("{item_id:d}.jpg", "format spec"),
        ("{item_id.jpg", "image pattern"),
        ("photo.jpg", "no {item_id} field"),
        ("{}.jpg", "unknown field"),
        ("{0}.jpg", "unknown field"),
    ],
)
def test_bad_image_pattern_is_one_line_naming_it(pattern: str, reason: str) -> None:
    with pytest.raises(DataError) as error:
        ImagePattern(pattern)
    message = str(error.value)
    assert repr(pattern) in message and reason in message and "\n" not in message


def _nested_layout(products: ProductImages, root: Path) -> Path:
    """The products' photos as ``<first 3 characters>/<id>.jpg`` under ``root``, and a catalogue
    without an image column."""
    lines = ["item_id,category"]
    for item_id in products.copy_nested(root, 6):
        lines.append(f"{item_id},{products.kinds[item_id]}")
    catalogue = root / "catalogue.csv"
    catalogue.write_text("\n".join(lines) + "\n")
    return catalogue


def test_nested_layout_is_read_and_embedded(
    tmp_path: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    catalogue_file = _nested_layout(products, tmp_path / "shop")
    options = CatalogueOptions(image_pattern="{item_id[:3]}/{item_id}.jpg")
    catalogue = read_catalogue(catalogue_file, options)
    first = products.ids[0]
    assert catalogue.items[0].image == tmp_path / "shop" / first[:3] / f"{first}.jpg"
    out = tmp_path / "emb.parquet"
    report = embed_catalogue(catalogue, embedder, out, INLINE)
    assert (report.embedded, report.failed) == (6, 0)
    assert report.problem(0.05) is None
    assert EmbeddingTable.load(out).item_ids == products.ids[:6]
    with pytest.raises(DataError, match=r"image pattern '\{item_id\[:3\}"):
        read_catalogue(catalogue_file, CatalogueOptions(image_pattern="{item_id[:3}"))


def test_embed_with_no_readable_image_writes_nothing(
    tmp_path: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    catalogue_file = _nested_layout(products, tmp_path / "shop")
    wrong = read_catalogue(catalogue_file, CatalogueOptions(image_pattern="{item_id}.jpg"))
    out = tmp_path / "emb.parquet"
    report = embed_catalogue(wrong, embedder, out, INLINE)
    assert (report.embedded, report.failed) == (0, 6)
    assert not out.exists()
    problem = report.problem(1.0)  # failing everything is an error whatever the share allowed
    assert problem is not None and problem.startswith("no image could be read")
    assert "cannot read" in problem and problem.count(products.ids[0]) >= 1

    nothing = Catalogue([CatalogueItem("a", None), CatalogueItem("b", None)])
    empty_report = embed_catalogue(nothing, embedder, out, INLINE)
    assert not out.exists()
    assert "none of the 2 items has an image" in (empty_report.problem(1.0) or "")


def test_embed_over_the_failure_share_writes_what_succeeded(
    tmp_path: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    good = [CatalogueItem(i, products.path(i)) for i in products.ids[:8]]
    missing = [CatalogueItem(f"gone{n}", tmp_path / f"gone{n}.jpg") for n in range(2)]
    out = tmp_path / "emb.parquet"
    report = embed_catalogue(Catalogue(good + missing), embedder, out, INLINE)
    assert (report.embedded, report.failed) == (8, 2)
    assert len(EmbeddingTable.load(out).item_ids) == 8
    problem = report.problem(0.1)
    assert problem is not None and "2 of 10 images failed (20.0%" in problem
    assert "gone0: cannot read" in problem
    assert report.problem(0.2) is None  # at the limit: fine


def test_label_columns_come_from_the_catalogue(tmp_path: Path) -> None:
    """A catalogue without the fashion columns: low-cardinality text columns are labels; ids,
    numbers, free text and sparse columns are not; a missing name lists the columns."""
    rows = ["sku,department,material,price,title,year,rare"]
    for n in range(60):
        rare = "x" if n % 5 == 0 else ""
        rows.append(
            f"s{n},{['home', 'garden', 'toys'][n % 3]},{['wood', 'steel'][n % 2]},{n * 1.5},"
            f"product number {n},{2000 + n % 4},{rare}"
        )
    path = tmp_path / "shop.csv"
    path.write_text("\n".join(rows) + "\n")
    catalogue = read_catalogue(path, CatalogueOptions(item_column="sku", images=False))
    assert catalogue.detect_label_columns() == ["department", "material"]
    labels = catalogue.labels()
    assert labels["department"]["s4"] == "garden" and len(labels["material"]) == 60
    assert catalogue.labels(["title"])["title"]["s1"] == "product number 1"
    with pytest.raises(DataError) as error:
        catalogue.labels(["gender", "department", "baseColour"])
    message = str(error.value)
    assert "'gender', 'baseColour'" in message
    assert "department, material, price, title, year, rare" in message
