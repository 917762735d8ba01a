"""Reading an item catalogue (CSV, TSV or Parquet): ids, images, categories, attributes.

One row per item. Columns are found by name unless given: the item id (``item_id``, ``id``,
...), the image (a path, relative to ``image_dir`` or absolute, or the encoded bytes in a
Parquet binary column), the category, and every other column kept as a text attribute. A
catalogue without an image column can name its files with ``image_pattern`` (e.g.
``{item_id}.jpg`` in ``image_dir``). Malformed rows are skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsvc.data.interaction_files import ITEM_COLUMNS, column_names, detect_format, find_column
from recsvc.data.matrix import FileFormat
from recsvc.errors import DataError

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_path", "image_file", "path", "image_bytes", "image_url")
CATEGORY_COLUMNS = ("category", "category_id", "product_type")


@dataclass(frozen=True)
class CatalogueOptions:
    """How to read a catalogue (every column name is found automatically unless given)."""

    file_format: FileFormat = "auto"
    item_column: str | None = None
    image_column: str | None = None
    category_column: str | None = None
    image_dir: Path | None = None
    image_pattern: str | None = None


@dataclass(frozen=True)
class CatalogueItem:
    """One product: ``image`` is a file path or the encoded bytes (or None: no image)."""

    item_id: str
    image: Path | bytes | None
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Catalogue:
    items: list[CatalogueItem]
    rows_skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def categories(self) -> dict[str, str]:
        return {item.item_id: item.category for item in self.items if item.category}


def read_catalogue(path: Path, options: CatalogueOptions | None = None) -> Catalogue:
    """Read ``path`` into a :class:`Catalogue`. Raises DataError when unreadable or unusable."""
    options = options or CatalogueOptions()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path) if options.file_format == "auto" else options.file_format
    skipped: list[str] = []
    table = _read_table(path, fmt, skipped)
    names = table.column_names
    item_col = _pick(names, options.item_column, (*ITEM_COLUMNS, "id"), path, "item id")
    image_col = _pick(names, options.image_column, IMAGE_COLUMNS, path, None)
    category_col = _pick(names, options.category_column, CATEGORY_COLUMNS, path, None)
    if image_col is None and options.image_pattern is None:
        log.info("%s: no image column and no image pattern: items have no images", path)
    base = options.image_dir or path.parent
    attribute_cols = [c for c in names if c not in {item_col, image_col, category_col}]

    items: list[CatalogueItem] = []
    seen: set[str] = set()
    for row in table.to_pylist():
        item_id = _text(row.get(item_col))
        if not item_id or item_id in seen:
            skipped.append(f"item {item_id!r}: {'missing' if not item_id else 'repeated'} id")
            continue
        seen.add(item_id)
        image = _image_of(row.get(image_col) if image_col else None, item_id, base, options)
        attributes = {c: _text(row.get(c)) for c in attribute_cols if _text(row.get(c))}
        category = _text(row.get(category_col)) if category_col else ""
        items.append(CatalogueItem(item_id, image, category, attributes))
    if not items:
        raise DataError(f"{path}: no usable rows")
    if skipped:
        log.warning("%s: %d rows skipped, e.g. %s", path, len(skipped), skipped[:3])
    return Catalogue(items, rows_skipped=len(skipped), examples=skipped[:10])


def _read_table(path: Path, fmt: FileFormat, skipped: list[str]) -> pa.Table:
    def on_invalid_row(row: Any) -> str:
        place = f"line {row.number}" if row.number else f"row {row.text[:60]!r}"
        skipped.append(f"{place}: {row.actual_columns} fields, expected {row.expected_columns}")
        return "skip"

    try:
        if fmt == "parquet":
            return pq.read_table(path)
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if fmt in ("tsv", "movielens") else ",",
                invalid_row_handler=on_invalid_row,
            ),
            # Everything as text: ids like "0012" must not become numbers.
            convert_options=pacsv.ConvertOptions(
                strings_can_be_null=False,
                column_types=dict.fromkeys(column_names(path, fmt), pa.string()),
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: {exc}") from exc


def _pick(
    names: list[str], given: str | None, candidates: tuple[str, ...], path: Path, role: str | None
) -> str | None:
    if given is not None:
        if given not in names:
            raise DataError(f"{path}: no column {given!r}; columns are {names}")
        return given
    found = find_column(names, candidates)
    if found is None and role is not None:
        raise DataError(f"{path}: no {role} column (tried {', '.join(candidates)}); name it")
    return found


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def _image_of(
    value: object, item_id: str, base: Path, options: CatalogueOptions
) -> Path | bytes | None:
    if isinstance(value, bytes) and value:
        return value
    name = _text(value)
    if not name and options.image_pattern:
        name = options.image_pattern.format(item_id=item_id)
    if not name:
        return None
    candidate = Path(name)
    return candidate if candidate.is_absolute() else base / candidate


def read_categories(path: Path, file_format: FileFormat = "auto") -> dict[str, str]:
    """Read an item catalogue (item id and category columns) into {item_id: category}."""
    categories = read_catalogue(path, CatalogueOptions(file_format=file_format)).categories()
    if not categories:
        raise DataError(f"{path}: needs an item id column and a 'category' column")
    return categories
