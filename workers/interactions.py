"""Reading interaction files (CSV, TSV, Parquet, MovieLens u.data) into a user-item matrix."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsvc.errors import DataError

log = logging.getLogger(__name__)

FileFormat = Literal["auto", "csv", "tsv", "parquet", "movielens"]

# Header names we recognise, lower-cased, most common first.
USER_COLUMNS = ("user_id", "user", "userid", "customer_id", "visitor_id", "visitorid")
ITEM_COLUMNS = ("item_id", "item", "itemid", "movie_id", "movieid", "product_id", "article_id")
WEIGHT_COLUMNS = ("weight", "rating", "value", "count", "score", "strength")
TIMESTAMP_COLUMNS = ("timestamp", "ts", "time", "event_time", "unix_ts")
MOVIELENS_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class Interactions:
    """Aggregated interactions.

    Attributes
    ----------
    user_ids, item_ids : list of str
        The caller's ids: row ``u`` of ``matrix`` is ``user_ids[u]``,
        column ``i`` is ``item_ids[i]``.
    matrix : csr_matrix float32, shape (n_users, n_items)
        Summed weights of every (user, item) pair (duplicates aggregated).
    rows_read : int
        Rows in the input, before dropping invalid ones and aggregating duplicates.
    rows_dropped : int
        Rows dropped because their weight was missing, not finite or not positive.
    """

    user_ids: list[str]
    item_ids: list[str]
    matrix: sp.csr_matrix
    rows_read: int
    rows_dropped: int

    @property
    def num_interactions(self) -> int:
        return int(self.matrix.nnz)


def detect_format(path: Path) -> FileFormat:
    name = path.name.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".zst")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name == "u.data":
        return "movielens"
    if name.endswith(".csv"):
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the name; pass --format")


def read_table(path: Path, file_format: FileFormat = "auto") -> pa.Table:
    """Read a CSV/TSV/Parquet/u.data file into an Arrow table, with clear errors."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path) if file_format == "auto" else file_format
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "movielens":
            return pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=list(MOVIELENS_COLUMNS)),
                parse_options=pacsv.ParseOptions(delimiter="\t"),
                convert_options=pacsv.ConvertOptions(
                    column_types={"user_id": pa.string(), "item_id": pa.string()}
                ),
            )
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: {exc}") from exc


def find_column(table: pa.Table, candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` that names a column (case-insensitively), or None."""
    by_lower = {name.lower(): name for name in table.column_names}
    for candidate in candidates:
        if candidate in by_lower:
            return str(by_lower[candidate])
    return None


def read_interactions(path: Path, file_format: FileFormat = "auto") -> Interactions:
    """Read an interaction file: user and item columns required, weight optional (default 1).

    Raises DataError for a missing file, missing columns, unparseable values or no valid rows.
    """
    table = read_table(path, file_format)
    user_col = find_column(table, USER_COLUMNS)
    item_col = find_column(table, ITEM_COLUMNS)
    if user_col is None or item_col is None:
        raise DataError(
            f"{path}: needs a user column (one of {', '.join(USER_COLUMNS)}) and an item column "
            f"(one of {', '.join(ITEM_COLUMNS)}); found {table.column_names}"
        )
    rows_read = table.num_rows
    if rows_read == 0:
        raise DataError(f"{path}: holds no interactions")
    users = _as_id_strings(table.column(user_col), path, user_col)
    items = _as_id_strings(table.column(item_col), path, item_col)
    weight_col = find_column(table, WEIGHT_COLUMNS)
    if weight_col is None:
        weights = np.ones(rows_read, dtype=np.float32)
    else:
        try:
            weights = table.column(weight_col).cast(pa.float32()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid as exc:
            raise DataError(f"{path}: column {weight_col!r} is not numeric: {exc}") from exc
    valid = np.isfinite(weights) & (weights > 0)
    valid &= ~(users.is_null().to_numpy(zero_copy_only=False))
    valid &= ~(items.is_null().to_numpy(zero_copy_only=False))
    valid &= pc.utf8_length(users.fill_null("")).to_numpy(zero_copy_only=False) > 0
    valid &= pc.utf8_length(items.fill_null("")).to_numpy(zero_copy_only=False) > 0
    dropped = int(rows_read - valid.sum())
    if dropped == rows_read:
        raise DataError(f"{path}: none of its {rows_read} rows has a valid user, item and weight")
    if dropped:
        log.warning(
            "%s: dropped %d of %d rows (empty id, or weight missing or <= 0)",
            path,
            dropped,
            rows_read,
        )
    mask = pa.array(valid)
    user_codes, user_ids = _encode(users.filter(mask))
    item_codes, item_ids = _encode(items.filter(mask))
    matrix = sp.coo_matrix(
        (weights[valid], (user_codes, item_codes)), shape=(len(user_ids), len(item_ids))
    ).tocsr()  # sums duplicate (user, item) pairs
    matrix.sum_duplicates()
    matrix.sort_indices()
    return Interactions(user_ids, item_ids, matrix.astype(np.float32), rows_read, dropped)


def read_categories(path: Path, file_format: FileFormat = "auto") -> dict[str, str]:
    """Read an item catalogue (item id and category columns) into {item_id: category}."""
    table = read_table(path, file_format)
    item_col = find_column(table, ITEM_COLUMNS)
    by_lower = {name.lower(): name for name in table.column_names}
    category_col = by_lower.get("category")
    if item_col is None or category_col is None:
        raise DataError(f"{path}: needs an item id column and a 'category' column")
    items = _as_id_strings(table.column(item_col), path, item_col).to_pylist()
    categories = table.column(category_col).cast(pa.string()).to_pylist()
    return {i: c for i, c in zip(items, categories, strict=True) if i and c}


def _as_id_strings(column: pa.ChunkedArray, path: Path, name: str) -> pa.Array:
    try:
        return column.cast(pa.string()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: column {name!r} cannot be read as ids: {exc}") from exc


def _encode(ids: pa.Array) -> tuple[np.ndarray, list[str]]:
    encoded = ids.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist()
