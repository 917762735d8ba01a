"""The Parquet interaction store: append-only parts written by the ingest worker, read by
training.

Layout::

    <store>/ingest_date=YYYY-MM-DD/part-<first>-<last>.parquet   one file per ingested batch

A part is written to a temporary file, fsynced and renamed into place; a repeated event id (a
batch ingested twice after a crash) is read once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsvc.core.state import Interaction
from recsvc.data.matrix import Interactions, interactions_from_arrays
from recsvc.durable import replace_atomically
from recsvc.store.codec import COLUMNS, EventColumns, interactions_to_columns

SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("weight", pa.float32()),
        ("timestamp_ms", pa.int64()),
    ]
)


class InteractionStore:
    """The Parquet interaction store (append-only parts)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def write_part(self, events: list[Interaction], first: str, last: str) -> Path:
        """Durably write one batch; returns the part's path (existing parts are kept)."""
        return self.write_columns(interactions_to_columns(events), first, last)

    def write_columns(self, columns: EventColumns, first: str, last: str) -> Path:
        """:meth:`write_part` for events given as columns (as the file log stores them)."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        directory = self.root / f"ingest_date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{first}-{last}.parquet"
        table = pa.table({name: pa.array(columns[name]) for name in COLUMNS}).cast(SCHEMA)
        replace_atomically(final, lambda temporary: pq.write_table(table, temporary))
        return final

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("ingest_date=*/part-*.parquet"))

    def read(self) -> pa.Table:
        """Every ingested event once (a repeated event_id keeps its first copy)."""
        parts = self.parts()
        if not parts:
            return SCHEMA.empty_table()
        table = pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in parts)
        _, first = np.unique(
            table.column("event_id").to_numpy(zero_copy_only=False), return_index=True
        )
        return table.take(pa.array(np.sort(first)))

    def count(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts())

    def interactions(self) -> Interactions:
        table = self.read()
        return interactions_from_arrays(
            table.column("user_id"),
            table.column("item_id"),
            table.column("weight").to_numpy(zero_copy_only=False).astype(np.float32),
            pc.divide(table.column("timestamp_ms"), 1000)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64),
            source=str(self.root),
        )
