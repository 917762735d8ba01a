"""Ingestion: the event log -> a partitioned Parquet interaction store, effectively once.

Store layout::

    <store>/ingest_date=YYYY-MM-DD/part-<first>-<last>.parquet   one file per ingested batch
    <store>/_checkpoint.json                                      file mode: byte offset done

A batch is written to a temporary file, fsynced and renamed into place before the source is
told it is done (the checkpoint, or XACK for a Redis Stream). A crash after the write but before
that repeats the batch at most once: file mode finds the part that starts at its checkpoint and
skips it; Redis mode re-delivers the pending entries, and readers drop repeated event ids, so
every acknowledged event is counted exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from recsvc.core.state import Interaction
from recsvc.durable import replace_atomically, replace_bytes_atomically
from recsvc.store.codec import (
    COLUMNS,
    EventColumns,
    interaction_from_json,
    interactions_to_columns,
)
from recsvc.store.file_log import read_columns_from
from workers.interactions import Interactions, interactions_from_arrays

log = logging.getLogger(__name__)

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
CHECKPOINT = "_checkpoint.json"
GROUP = "recsvc-ingest"


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


class FileLogIngester:
    """Ingests the embedded mode's event-log file, tracking a byte offset."""

    def __init__(self, log_path: Path, store: InteractionStore, batch_size: int) -> None:
        self.log_path = Path(log_path)
        self.store = store
        self.batch_size = batch_size

    def run_once(self) -> int:
        """Ingest what is new; returns the number of events written."""
        written = 0
        while True:
            offset = self._checkpoint()
            done = self._part_starting_at(offset)
            if done is not None:  # a crash came between writing a part and the checkpoint
                self._save_checkpoint(done)
                continue
            columns, end = read_columns_from(self.log_path, offset, self.batch_size)
            if end == offset:
                return written
            count = len(columns["event_id"])
            if count:
                self.store.write_columns(columns, f"{offset:015d}", f"{end:015d}")
            self._save_checkpoint(end)
            written += count

    def _part_starting_at(self, offset: int) -> int | None:
        for part in self.store.parts():
            first, last = part.stem.split("-")[1:3]
            if int(first) == offset:
                return int(last)
        return None

    def _checkpoint(self) -> int:
        path = self.store.root / CHECKPOINT
        if not path.exists():
            return 0
        return int(json.loads(path.read_text())["offset"])

    def _save_checkpoint(self, offset: int) -> None:
        self.store.root.mkdir(parents=True, exist_ok=True)
        content = json.dumps({"source": str(self.log_path), "offset": offset})
        replace_bytes_atomically(self.store.root / CHECKPOINT, content.encode())


class RedisStreamIngester:
    """Ingests the Redis Stream with a consumer group; acknowledges after the durable write and
    reclaims entries left pending by a crashed consumer."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        store: InteractionStore,
        batch_size: int,
        consumer: str | None = None,
        reclaim_after_ms: int = 30_000,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.store = store
        self.batch_size = batch_size
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.reclaim_after_ms = reclaim_after_ms
        try:
            client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run_once(self) -> int:
        written = 0
        for entries in self._batches():
            events = [interaction_from_json(fields[b"event"]) for _, fields in entries]
            ids = [entry_id.decode() for entry_id, _ in entries]
            self.store.write_part(events, ids[0].replace("-", "_"), ids[-1].replace("-", "_"))
            self.redis.xack(self.stream, GROUP, *ids)
            written += len(events)
        return written

    def _batches(self) -> Iterator[list[Any]]:
        # First what a crashed consumer left pending, then new entries.
        start = "0-0"
        while True:
            claim: Any = self.redis.xautoclaim(
                self.stream,
                GROUP,
                self.consumer,
                self.reclaim_after_ms,
                start,
                count=self.batch_size,
            )
            start, claimed = claim[0], claim[1]
            if claimed:
                yield claimed
            if start in (b"0-0", "0-0"):
                break
        while True:
            response: Any = self.redis.xreadgroup(
                GROUP, self.consumer, {self.stream: ">"}, count=self.batch_size
            )
            if not response or not response[0][1]:
                return
            yield response[0][1]
