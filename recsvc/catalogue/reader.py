"""Reading an item catalogue (CSV, TSV or Parquet): ids, images, categories, attributes.

One row per item. Columns are found by name unless given: the item id (``item_id``, ``id``,
...), the image (a path, relative to ``image_dir`` or absolute, or the encoded bytes in a
Parquet binary column), the category, and every other column kept as a text attribute. A
catalogue without an image column can name its files with ``image_pattern`` (e.g.
``{item_id}.jpg`` or ``{item_id[:3]}/{item_id}.jpg`` in ``image_dir``; see
``recsvc.catalogue.image_pattern``). Malformed rows are skipped and counted, never fatal.

**Label columns** (what the cold-start simulation gives shoppers preferences over, and what the
visual space learns from) are the category plus the attribute columns that look like labels:
at most ``MAX_LABEL_VALUES`` distinct values, at least two, filled in for at least half of
the items, and not all numbers (a year or a price is not a kind of product). Or name them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsvc.catalogue.image_pattern import ImagePattern
from recsvc.data.interaction_files import ITEM_COLUMNS, column_names, detect_format, find_column
from recsvc.data.matrix import FileFormat
from recsvc.errors import DataError

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_path", "image_file", "path", "image_bytes", "image_url")
CATEGORY_COLUMNS = ("category", "category_id", "product_type")
CATEGORY = "category"  # the label name of the category column, whatever the file calls it
MAX_LABEL_VALUES = 50
MIN_LABEL_FILLED = 0.5


@dataclass(frozen=True)
class CatalogueOptions:
    """How to read a catalogue (every column name is found automatically unless given)."""

    file_format: FileFormat = "auto"
    item_column: str | None = None
    image_column: str | None = None
    category_column: str | None = None
    image_dir: Path | None = None
    image_pattern: str | None = None
    images: bool = True  # False: the caller needs no images (no note when there are none)


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
    attribute_columns: list[str] = field(default_factory=list)
    category_column: str | None = None

    def categories(self) -> dict[str, str]:
        return {item.item_id: item.category for item in self.items if item.category}

    def label_names(self) -> list[str]:
        """Every name :meth:`labels` accepts: ``category`` (when the file has one) and the
        attribute columns."""
        return ([CATEGORY] if self.category_column else []) + self.attribute_columns

    def labels(self, names: list[str] | None = None) -> dict[str, dict[str, str]]:
        """{label name: {item_id: value}} for ``names``, or for the detected label columns
        (see the module docstring). A name the catalogue lacks raises DataError listing the
        names it has."""
        if names is None:
            names = self.detect_label_columns()
        unknown = [name for name in names if name not in self.label_names()]
        if unknown:
            raise DataError(
                f"no column {', '.join(map(repr, unknown))} in the catalogue; its columns are "
                f"{', '.join(self.label_names()) or '(none besides the id and image)'}"
            )
        return {name: self._column(name) for name in names}

    def _column(self, name: str) -> dict[str, str]:
        if name == CATEGORY:
            return self.categories()
        return {i.item_id: v for i in self.items if (v := i.attributes.get(name, ""))}

    def detect_label_columns(self) -> list[str]:
        """The category and the attribute columns that look like labels (module docstring)."""
        found = [CATEGORY] if self.categories() else []
        for name in self.attribute_columns:
            values = list(self._column(name).values())
            distinct = set(values)
            if (
                2 <= len(distinct) <= MAX_LABEL_VALUES
                and len(values) >= MIN_LABEL_FILLED * len(self.items)
                and not all(_is_number(v) for v in distinct)
            ):
                found.append(name)
        return found


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_catalogue(path: Path, options: CatalogueOptions | None = None) -> Catalogue:
    """Read ``path`` into a :class:`Catalogue`. Raises DataError when unreadable or unusable."""
    options = options or CatalogueOptions()
    pattern = ImagePattern(options.image_pattern) if options.image_pattern else None
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path) if options.file_format == "auto" else options.file_format
    skipped: list[str] = []
    table = _read_table(path, fmt, skipped)
    names = table.column_names
    item_col = _pick(names, options.item_column, (*ITEM_COLUMNS, "id"), path, "item id")
    image_col = _pick(names, options.image_column, IMAGE_COLUMNS, path, None)
    category_col = _pick(names, options.category_column, CATEGORY_COLUMNS, path, None)
    if options.images and image_col is None and pattern is None:
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
        image = (
            _image_of(row.get(image_col) if image_col else None, item_id, base, pattern)
            if options.images
            else None
        )
        attributes = {c: _text(row.get(c)) for c in attribute_cols if _text(row.get(c))}
        category = _text(row.get(category_col)) if category_col else ""
        items.append(CatalogueItem(item_id, image, category, attributes))
    if not items:
        raise DataError(f"{path}: no usable rows")
    if skipped:
        log.warning("%s: %d rows skipped, e.g. %s", path, len(skipped), skipped[:3])
    return Catalogue(
        items,
        rows_skipped=len(skipped),
        examples=skipped[:10],
        attribute_columns=attribute_cols,
        category_column=category_col,
    )


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
    value: object, item_id: str, base: Path, pattern: ImagePattern | None
) -> Path | bytes | None:
    if isinstance(value, bytes) and value:
        return value
    name = _text(value)
    if not name and pattern is not None:
        name = pattern.path_for(item_id)
    if not name:
        return None
    candidate = Path(name)
    return candidate if candidate.is_absolute() else base / candidate


def read_categories(path: Path, file_format: FileFormat = "auto") -> dict[str, str]:
    """Read an item catalogue (item id and category columns) into {item_id: category}."""
    options = CatalogueOptions(file_format=file_format, images=False)
    categories = read_catalogue(path, options).categories()
    if not categories:
        raise DataError(f"{path}: needs an item id column and a 'category' column")
    return categories
