"""Interactions as a user-item matrix: how a file was read (options and report), and the
aggregation of raw (user, item, weight, timestamp) rows into one entry per pair."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from recsvc.errors import DataError

FileFormat = Literal["auto", "csv", "tsv", "parquet", "movielens"]
EXAMPLES_KEPT = 10


@dataclass(frozen=True)
class ReadOptions:
    """How to read an interaction file.

    Column names are found automatically (see the *_COLUMNS lists) unless given. With an event
    column, each row's weight is multiplied by its event type's weight (``event_weights``);
    an event type not listed there is a malformed row.
    """

    file_format: FileFormat = "auto"
    user_column: str | None = None
    item_column: str | None = None
    weight_column: str | None = None
    timestamp_column: str | None = None
    event_column: str | None = None
    event_weights: dict[str, float] = field(default_factory=dict)
    strict: bool = False
    min_user_interactions: int = 1
    min_item_interactions: int = 1


@dataclass
class ReadReport:
    """What reading found: counts, and the first malformed rows as examples."""

    path: str
    rows_read: int = 0
    rows_skipped: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    duplicates_aggregated: int = 0
    users_filtered: int = 0
    items_filtered: int = 0

    def record(
        self, places: list[str], count: int, column: str, problem: str, strict: bool
    ) -> None:
        """Count ``count`` rows with ``problem``; ``places`` ("row 7", "line 9") locate the
        first ones. Strict mode raises on the first."""
        messages = [f"{self.path}: {place}, column {column!r}: {problem}" for place in places]
        if strict and messages:
            raise DataError(f"{messages[0]} (strict mode)")
        self.problems[f"{column}: {problem}"] += count
        self.examples.extend(messages[: EXAMPLES_KEPT - len(self.examples)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_skipped": self.rows_skipped,
            "problems": dict(self.problems),
            "examples": self.examples,
            "duplicates_aggregated": self.duplicates_aggregated,
            "users_filtered": self.users_filtered,
            "items_filtered": self.items_filtered,
        }


@dataclass(frozen=True)
class Interactions:
    """Aggregated interactions.

    Attributes
    ----------
    user_ids, item_ids : list of str
        The caller's ids: row ``u`` of ``matrix`` is ``user_ids[u]``,
        column ``i`` is ``item_ids[i]``.
    matrix : csr_matrix float32, shape (n_users, n_items)
        Summed weights of every (user, item) pair.
    timestamps : csr_matrix int64 with the structure of ``matrix``, or None
        Latest Unix time (seconds) of each pair, when the file has timestamps.
    report : ReadReport
    dislikes : dict of user id -> tuple of item ids
        Pairs disliked (not in ``matrix``: zero confidence); the model never recommends them.
    """

    user_ids: list[str]
    item_ids: list[str]
    matrix: sp.csr_matrix
    timestamps: sp.csr_matrix | None
    report: ReadReport
    dislikes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def num_interactions(self) -> int:
        return int(self.matrix.nnz)

    @property
    def rows_read(self) -> int:
        return self.report.rows_read

    def statistics(self) -> dict[str, Any]:
        users, items = self.matrix.shape
        return {
            "users": users,
            "items": items,
            "interactions": self.num_interactions,
            "density": round(self.num_interactions / max(1, users * items), 6),
            "rows_read": self.report.rows_read,
            "rows_skipped": self.report.rows_skipped,
        }


def interactions_from_arrays(
    users: pa.ChunkedArray | pa.Array,
    items: pa.ChunkedArray | pa.Array,
    weights: npt.NDArray[np.float32],
    stamps: npt.NDArray[np.int64] | None,
    source: str,
) -> Interactions:
    """Aggregate already-validated interactions (e.g. from the Parquet interaction store)."""
    if len(weights) == 0:
        raise DataError(f"{source}: holds no interactions")
    report = ReadReport(source, rows_read=len(weights))
    return aggregate(
        pa.chunked_array([users]) if isinstance(users, pa.Array) else users,
        pa.chunked_array([items]) if isinstance(items, pa.Array) else items,
        weights,
        stamps,
        ReadOptions(),
        report,
    )


# ------------------------------------------------------------------------------ aggregation


def aggregate(
    users: pa.ChunkedArray,
    items: pa.ChunkedArray,
    weights: npt.NDArray[np.float32],
    stamps: npt.NDArray[np.int64] | None,
    options: ReadOptions,
    report: ReadReport,
) -> Interactions:
    user_codes, user_ids = _encode(users)
    item_codes, item_ids = _encode(items)
    # One entry per (user, item): weights summed, latest timestamp kept.
    keys = user_codes * len(item_ids) + item_codes
    order = np.argsort(keys, kind="stable")
    unique_keys, starts = np.unique(keys[order], return_index=True)
    report.duplicates_aggregated = int(len(keys) - len(unique_keys))
    pair_weights = np.add.reduceat(weights[order], starts).astype(np.float32)
    pair_stamps = np.maximum.reduceat(stamps[order], starts) if stamps is not None else None
    rows = (unique_keys // len(item_ids)).astype(np.int64)
    cols = (unique_keys % len(item_ids)).astype(np.int64)

    keep = _min_count_filter(rows, cols, options, len(user_ids), len(item_ids))
    if not keep.all():
        rows, cols, pair_weights = rows[keep], cols[keep], pair_weights[keep]
        pair_stamps = pair_stamps[keep] if pair_stamps is not None else None
        if len(rows) == 0:
            raise DataError(
                f"{report.path}: no interactions are left after the minimum-count filters"
            )
    used_users, rows = np.unique(rows, return_inverse=True)
    used_items, cols = np.unique(cols, return_inverse=True)
    report.users_filtered = len(user_ids) - len(used_users)
    report.items_filtered = len(item_ids) - len(used_items)
    shape = (len(used_users), len(used_items))
    matrix = sp.csr_matrix((pair_weights, (rows, cols)), shape=shape, dtype=np.float32)
    timestamps = None
    if pair_stamps is not None:
        timestamps = sp.csr_matrix((pair_stamps, (rows, cols)), shape=shape, dtype=np.int64)
    return Interactions(
        [user_ids[u] for u in used_users],
        [item_ids[i] for i in used_items],
        matrix,
        timestamps,
        report,
    )


def _min_count_filter(
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    options: ReadOptions,
    n_users: int,
    n_items: int,
) -> npt.NDArray[np.bool_]:
    """Pairs kept by the minimum-count filters, applied until stable (a k-core)."""
    keep = np.ones(len(rows), dtype=bool)
    if options.min_user_interactions <= 1 and options.min_item_interactions <= 1:
        return keep
    while True:
        user_counts = np.bincount(rows[keep], minlength=n_users)
        item_counts = np.bincount(cols[keep], minlength=n_items)
        new_keep = keep & (user_counts[rows] >= options.min_user_interactions)
        new_keep &= item_counts[cols] >= options.min_item_interactions
        if (new_keep == keep).all():
            return keep
        keep = new_keep


def _encode(ids: pa.ChunkedArray) -> tuple[npt.NDArray[np.int64], list[str]]:
    encoded = ids.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist()
