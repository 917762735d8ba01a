"""Reading interaction files (CSV, TSV, Parquet, MovieLens u.data) into a user-item matrix.

Files are read in blocks (pyarrow's streaming CSV reader, Parquet row-group batches) and only
the four columns used are kept, so a file much larger than memory with wide rows still loads.
Every malformed row is counted and reported with its file, row and column; ``strict`` fails on
the first instead. Duplicate (user, item) pairs are aggregated: weights summed, the latest
timestamp kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsvc.data.matrix import (
    EXAMPLES_KEPT,
    FileFormat,
    Interactions,
    ReadOptions,
    ReadReport,
    aggregate,
)
from recsvc.errors import DataError

log = logging.getLogger(__name__)


# Header names we recognise, lower-cased, most common first.
USER_COLUMNS = ("user_id", "user", "userid", "customer_id", "visitor_id", "visitorid")
ITEM_COLUMNS = ("item_id", "item", "itemid", "movie_id", "movieid", "product_id", "article_id")
WEIGHT_COLUMNS = ("weight", "rating", "value", "count", "score", "strength")
TIMESTAMP_COLUMNS = ("timestamp", "ts", "time", "event_time", "unix_ts")
EVENT_COLUMNS = ("event", "event_type", "action", "type")
MOVIELENS_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
CSV_BLOCK_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 1 << 20


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


def find_column(names: list[str], candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` that names a column (case-insensitively), or None."""
    by_lower = {name.lower(): name for name in names}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    return None


def read_interactions(path: Path, options: ReadOptions | None = None) -> Interactions:
    """Read an interaction file: user and item columns required; weight, timestamp and event
    type optional. Raises DataError for a missing file, missing columns, no valid rows, or (in
    strict mode) the first malformed row."""
    options = options or ReadOptions()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path) if options.file_format == "auto" else options.file_format
    report = ReadReport(str(path))
    columns = _choose_columns(path, fmt, options)
    users: list[pa.Array] = []
    items: list[pa.Array] = []
    weights: list[npt.NDArray[np.float32]] = []
    stamps: list[npt.NDArray[np.int64]] = []
    first_row = 1
    for batch in _batches(path, fmt, columns, options, report):
        parsed = _parse_batch(batch, columns, options, report, first_row)
        first_row += batch.num_rows
        report.rows_read += batch.num_rows
        users.append(parsed[0])
        items.append(parsed[1])
        weights.append(parsed[2])
        stamps.append(parsed[3])
    if report.rows_read == 0:
        raise DataError(f"{path}: holds no interactions")
    kept = sum(len(u) for u in users)
    report.rows_skipped = report.rows_read - kept
    if kept == 0:
        raise DataError(
            f"{path}: none of its {report.rows_read} rows is valid; first problems: "
            + "; ".join(report.examples[:3])
        )
    if report.rows_skipped:
        log.warning(
            "%s: skipped %d of %d rows: %s",
            path,
            report.rows_skipped,
            report.rows_read,
            dict(report.problems),
        )
    return aggregate(
        pa.chunked_array(users, pa.string()),
        pa.chunked_array(items, pa.string()),
        np.concatenate(weights),
        np.concatenate(stamps) if columns["timestamp"] else None,
        options,
        report,
    )


# ------------------------------------------------------------------------------ reading


def _choose_columns(path: Path, fmt: FileFormat, options: ReadOptions) -> dict[str, str | None]:
    names = column_names(path, fmt)

    def pick(given: str | None, candidates: tuple[str, ...], role: str) -> str | None:
        if given is not None:
            if given not in names:
                raise DataError(f"{path}: no column {given!r} for the {role}; found {names}")
            return given
        return find_column(names, candidates)

    chosen = {
        "user": pick(options.user_column, USER_COLUMNS, "user"),
        "item": pick(options.item_column, ITEM_COLUMNS, "item"),
        "weight": pick(options.weight_column, WEIGHT_COLUMNS, "weight"),
        "timestamp": pick(options.timestamp_column, TIMESTAMP_COLUMNS, "timestamp"),
        "event": pick(options.event_column, EVENT_COLUMNS, "event type")
        if options.event_weights or options.event_column
        else None,
    }
    if chosen["user"] is None or chosen["item"] is None:
        raise DataError(
            f"{path}: needs a user column (one of {', '.join(USER_COLUMNS)}) and an item column "
            f"(one of {', '.join(ITEM_COLUMNS)}), or --user-column/--item-column; found {names}"
        )
    if chosen["event"] is not None and not options.event_weights:
        raise DataError(f"{path}: an event column needs event weights (e.g. view=1,cart=3)")
    return chosen


def column_names(path: Path, fmt: FileFormat) -> list[str]:
    if fmt == "movielens":
        return list(MOVIELENS_COLUMNS)
    try:
        if fmt == "parquet":
            return list(pq.ParquetFile(path).schema_arrow.names)
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 16),
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if fmt == "tsv" else ",", invalid_row_handler=lambda _: "skip"
            ),
        )
        return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: {exc}") from exc


def _batches(
    path: Path,
    fmt: FileFormat,
    columns: dict[str, str | None],
    options: ReadOptions,
    report: ReadReport,
) -> Iterator[pa.RecordBatch]:
    wanted = [c for c in columns.values() if c is not None]
    try:
        if fmt == "parquet":
            yield from pq.ParquetFile(path).iter_batches(
                batch_size=PARQUET_BATCH_ROWS, columns=wanted
            )
            return

        def on_invalid_row(row: Any) -> str:
            if options.strict:
                return "error"  # pyarrow raises, naming the row; we add the file
            report.rows_read += 1
            problem = f"{row.actual_columns} fields, expected {row.expected_columns}"
            place = f"line {row.number}" if row.number else f"row {row.text[:80]!r}"
            report.record([place], 1, "*", problem, strict=False)
            return "skip"

        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                block_size=CSV_BLOCK_BYTES,
                column_names=list(MOVIELENS_COLUMNS) if fmt == "movielens" else None,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter="," if fmt == "csv" else "\t", invalid_row_handler=on_invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types=dict.fromkeys(wanted, pa.string()),
                strings_can_be_null=False,
            ),
        )
        yield from reader
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: {exc}") from exc


def _parse_batch(
    batch: pa.RecordBatch,
    columns: dict[str, str | None],
    options: ReadOptions,
    report: ReadReport,
    first_row: int,
) -> tuple[pa.Array, pa.Array, npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Validate one batch; return its valid rows' users, items, weights and timestamps."""
    n = batch.num_rows
    valid = np.ones(n, dtype=bool)

    def flag(bad: npt.NDArray[np.bool_], column: str, problem: str) -> None:
        offsets = np.flatnonzero(bad & valid)
        if len(offsets):
            places = [f"row {first_row + int(o)}" for o in offsets[:EXAMPLES_KEPT]]
            report.record(places, len(offsets), column, problem, options.strict)
            valid[bad] = False

    ids = {}
    for role in ("user", "item"):
        name = columns[role]
        assert name is not None
        values = batch.column(name).cast(pa.string())
        empty = pc.fill_null(pc.equal(pc.utf8_length(values), 0), True)
        flag(empty.to_numpy(zero_copy_only=False), name, "empty id")
        ids[role] = values

    weights = np.ones(n, dtype=np.float64)
    if (name := columns["weight"]) is not None:
        weights = _to_float(batch.column(name))
        flag(np.isnan(weights), name, "not a number")
        flag(~np.isfinite(weights) | (weights <= 0), name, "weight must be a positive number")
    if (name := columns["event"]) is not None:
        events = batch.column(name).cast(pa.string()).to_pylist()
        factors = np.array([options.event_weights.get(e or "", np.nan) for e in events])
        flag(np.isnan(factors), name, "unknown event type")
        weights = weights * np.nan_to_num(factors)
    stamps = np.zeros(n, dtype=np.int64)
    if (name := columns["timestamp"]) is not None:
        parsed = _to_epoch_seconds(batch.column(name))
        flag(parsed < 0, name, "not a Unix time or ISO-8601 date")
        stamps = np.maximum(parsed, 0)

    mask = pa.array(valid)
    return (
        ids["user"].filter(mask),
        ids["item"].filter(mask),
        weights[valid].astype(np.float32),
        stamps[valid],
    )


def _to_float(column: pa.Array) -> npt.NDArray[np.float64]:
    """Floats, NaN where a value is not a number (fast path for clean columns)."""
    try:
        return np.asarray(
            column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([_float_or_nan(v) for v in column.to_pylist()], dtype=np.float64)


def _float_or_nan(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _to_epoch_seconds(column: pa.Array) -> npt.NDArray[np.int64]:
    """Unix seconds (ints, or ISO-8601 dates); -1 where a value cannot be read as a time."""
    try:
        return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        parsed = column.cast(pa.timestamp("s")).cast(pa.int64())
        return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([_epoch_or_minus_one(v) for v in column.to_pylist()], dtype=np.int64)


def _epoch_or_minus_one(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        try:
            scalar = pa.scalar(str(value)).cast(pa.timestamp("s")).cast(pa.int64())
            return int(scalar.as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return -1
