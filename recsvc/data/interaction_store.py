"""The Parquet interaction store: append-only parts written by the ingest worker, read by
training.

Layout::

    <store>/ingest_date=YYYY-MM-DD/part-<first>-<last>.parquet   one file per ingested batch

    <store>/ingest_date=YYYY-MM-DD/part-import-<sha256[:16]>-<chunk>.parquet   `recsvc import`
    <store>/_imports/<sha256>.json                               a history file fully imported

A part is written to a temporary file, fsynced and renamed into place; a repeated event id (a
batch ingested twice after a crash, a file imported twice) is read once.

Compaction (:meth:`InteractionStore.compact`, run by the ingest worker) merges a partition's
parts into one ``part-merged-<digest>.parquet`` without repeated event ids, written atomically
before the parts it replaces are deleted: a crash in between leaves both, which readers read
once and the next compaction merges.

ForgetUser tombstones (event type ``forget``, recsvc.data.event_filters) are kept like any
event; a part that holds some first records them under ``_forget_pending/`` (before the part
is written), and the next compaction rewrites every partition holding events they cover
without those events, whatever its number of parts, then clears the record. The tombstones
stay: training drops the events they cover even before compaction, and a late event of a
forgotten user is dropped the same way. Retention (:meth:`InteractionStore.drop_partitions_before`)
deletes whole ``ingest_date=`` partitions, imported history included. A reader that finds a part
gone under it lists the parts again (the merged part is in place before its sources go).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsvc.core.state import Interaction
from recsvc.data.event_filters import FORGET, forgotten_rows, tombstones, training_events
from recsvc.data.matrix import Interactions, interactions_from_arrays
from recsvc.durable import replace_atomically, replace_bytes_atomically
from recsvc.store.codec import ALL_COLUMNS, EventColumns, interactions_to_columns

log = logging.getLogger(__name__)

T = TypeVar("T")

# Tombstones ingested but not yet applied by a compaction (one JSON file each).
FORGET_PENDING = "_forget_pending"
# When the last tombstone was ingested (the train worker retrains after it).
FORGET_LATEST = "_forget_latest.json"

# Parquet metadata key of a merged part: the JSON list of the part names it replaces.
MERGED_FROM = "recsvc.merged_from"

BASE_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("weight", pa.float32()),
        ("timestamp_ms", pa.int64()),
    ]
)
# With attribution (nullable; parts written before these columns existed read them as null).
SCHEMA = pa.schema(
    [
        *BASE_SCHEMA,
        ("recommendation_id", pa.string()),
        ("position", pa.int32()),
        ("experiment", pa.string()),
        ("arm", pa.string()),
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
        size = len(columns["event_id"])
        table = pa.table(
            {name: pa.array(columns.get(name) or [None] * size) for name in ALL_COLUMNS}
        ).cast(SCHEMA)
        return self.write_table(table, f"part-{first}-{last}.parquet")

    def write_table(self, table: pa.Table, name: str) -> Path:
        """Durably write one part named ``name`` under today's ``ingest_date=`` directory (its
        tombstones recorded for the next compaction first)."""
        self._record_tombstones(table)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        directory = self.root / f"ingest_date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / name
        replace_atomically(final, lambda temporary: pq.write_table(table, temporary))
        return final

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("ingest_date=*/part-*.parquet"))

    def read(self) -> pa.Table:
        """Every ingested event once (a repeated event_id keeps its first copy)."""
        return _unique_events(_retry_if_compacted(lambda: _read_parts(self.parts())))

    def count(self) -> int:
        return _retry_if_compacted(
            lambda: sum(int(pq.ParquetFile(p).metadata.num_rows) for p in self.parts())
        )

    def compact(self, min_parts: int) -> int:
        """Merge each partition holding ``min_parts`` parts or more into one part without
        repeated event ids, and each partition holding events that a recorded tombstone covers
        into one part without them; returns the number of parts it replaced. A merged part
        names its sources in its metadata, so that sources left by a compaction that died
        while deleting them are deleted by the next one (however few remain)."""
        marks, pending = self._pending_tombstones()
        replaced = 0
        for directory in sorted(self.root.glob("ingest_date=*")):
            _finish_merges(directory)
            sources = sorted(directory.glob("part-*.parquet"))
            covered = bool(sources) and marks.num_rows > 0 and _covers(sources, marks)
            if len(sources) < min_parts and not covered:
                continue
            table = _unique_events(_read_parts(sources))
            if covered:
                forgotten = forgotten_rows(table, marks)
                table = table.filter(pa.array(~forgotten))
                log.info(
                    "istore: %s: %d events of forgotten users removed",
                    directory.name,
                    int(forgotten.sum()),
                )
            _merge(directory, sources, table)
            replaced += len(sources)
        for record in pending:  # every partition is rewritten: the records are done
            record.unlink(missing_ok=True)
        return replaced

    def _record_tombstones(self, table: pa.Table) -> None:
        """Record the tombstones of a part about to be written (one small file each, named
        by event id: writing one twice is harmless)."""
        marks = table.filter(pc.equal(table.column("event_type"), FORGET))
        if marks.num_rows == 0:
            return
        directory = self.root / FORGET_PENDING
        directory.mkdir(parents=True, exist_ok=True)
        # For the train worker: a ForgetUser since the last training makes training due.
        stamp = {"ingested_at_ms": int(time.time() * 1000)}
        replace_bytes_atomically(self.root / FORGET_LATEST, json.dumps(stamp).encode())
        for event_id, user_id, stamp in zip(
            marks.column("event_id").to_pylist(),
            marks.column("user_id").to_pylist(),
            marks.column("timestamp_ms").to_pylist(),
            strict=True,
        ):
            name = hashlib.sha256(str(event_id).encode()).hexdigest()[:32] + ".json"
            record = {"user_id": user_id, "timestamp_ms": stamp, "event_id": event_id}
            replace_bytes_atomically(directory / name, json.dumps(record).encode())

    def latest_tombstone_ms(self) -> int:
        """When a part holding a tombstone was last written (Unix ms; 0: never)."""
        try:
            return int(json.loads((self.root / FORGET_LATEST).read_text())["ingested_at_ms"])
        except FileNotFoundError:
            return 0

    def _pending_tombstones(self) -> tuple[pa.Table, list[Path]]:
        """The recorded tombstones not yet applied by a compaction, as
        :func:`recsvc.data.event_filters.tombstones` (and their record files)."""
        records = sorted((self.root / FORGET_PENDING).glob("*.json"))
        rows = [json.loads(path.read_text()) for path in records]
        table = pa.table(
            {
                "user_id": pa.array([row["user_id"] for row in rows], pa.string()),
                "event_type": pa.array([FORGET] * len(rows), pa.string()),
                "timestamp_ms": pa.array([row["timestamp_ms"] for row in rows], pa.int64()),
            }
        )
        return tombstones(table), records

    def drop_partitions_before(self, day: str) -> list[str]:
        """Delete the ``ingest_date=`` partitions of days before ``day`` (YYYY-MM-DD); returns
        the days dropped."""
        dropped: list[str] = []
        for directory in sorted(self.root.glob("ingest_date=*")):
            partition_day = directory.name.split("=", 1)[1]
            if partition_day >= day:
                continue
            for part in directory.iterdir():
                part.unlink(missing_ok=True)
            directory.rmdir()
            dropped.append(partition_day)
        if dropped:
            log.info("istore: dropped the partitions of %s (retention)", ", ".join(dropped))
        return dropped

    def interactions(self) -> Interactions:
        """What training uses of the store (recsvc.data.event_filters: forgotten users' events,
        impressions and disliked pairs left out; the dislikes kept aside)."""
        usable = training_events(self.read())
        table = usable.positives
        interactions = interactions_from_arrays(
            table.column("user_id"),
            table.column("item_id"),
            table.column("weight").to_numpy(zero_copy_only=False).astype(np.float32),
            pc.divide(table.column("timestamp_ms"), 1000)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64),
            source=str(self.root),
        )
        return replace(interactions, dislikes=usable.dislikes)


def _merge(directory: Path, sources: list[Path], table: pa.Table) -> None:
    """Replace ``sources`` by one part holding ``table`` (written before they are deleted)."""
    names = [p.name for p in sources]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    merged = directory / f"part-merged-{digest[:16]}.parquet"
    table = table.replace_schema_metadata({MERGED_FROM: json.dumps(names)})
    replace_atomically(merged, partial(pq.write_table, table))
    _delete_sources(merged, names)
    log.info("istore: merged %d parts of %s (%d events)", len(names), directory.name, len(table))


def _covers(parts: list[Path], marks: pa.Table) -> bool:
    """Whether any event of ``parts`` is covered by a tombstone of ``marks`` (three columns
    read, not the whole partition)."""
    columns = ["user_id", "event_type", "timestamp_ms"]
    table = pa.concat_tables(pq.read_table(p, columns=columns) for p in parts)
    return bool(forgotten_rows(table, marks).any())


def _read_parts(parts: list[Path]) -> pa.Table:
    if not parts:
        return SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in parts)


def _unique_events(table: pa.Table) -> pa.Table:
    """``table`` with each event_id once (its first copy), in order."""
    _, first = np.unique(table.column("event_id").to_numpy(zero_copy_only=False), return_index=True)
    return table.take(pa.array(np.sort(first)))


def _finish_merges(directory: Path) -> None:
    for merged in directory.glob("part-merged-*.parquet"):
        metadata = pq.read_schema(merged).metadata or {}
        sources = metadata.get(MERGED_FROM.encode())
        if sources:
            _delete_sources(merged, json.loads(sources))


def _delete_sources(merged: Path, names: list[str]) -> None:
    for name in names:
        if name != merged.name:
            (merged.parent / name).unlink(missing_ok=True)


def _retry_if_compacted(read: Callable[[], T], attempts: int = 5) -> T:
    """``read()`` again when a part it listed was deleted by a compaction meanwhile."""
    for _ in range(attempts - 1):
        try:
            return read()
        except FileNotFoundError:
            continue
    return read()


# ------------------------------------------------------------------------------ import

IMPORTS = "_imports"
IMPORT_EVENT_TYPE = "import"
IMPORT_CHUNK_ROWS = 500_000


@dataclass(frozen=True)
class ImportResult:
    """What one ``recsvc import`` of a file did (``skipped``: its content was imported before)."""

    path: str
    sha256: str
    events: int
    parts_written: int
    skipped: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_interactions(
    store: InteractionStore,
    path: Path,
    read: Callable[[], Interactions],
    sha256: str,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Write a history file's interactions (``read``: the file as ``recsvc train`` reads it, one
    event per user-item pair with its summed weight and latest timestamp) into the store,
    idempotently; the file is read only when its content was not imported before.

    Event ids are ``import:<sha256[:16]>:<pair>``, so a part written twice is read once; a
    finished file is recorded under ``_imports/<sha256>.json`` and importing the same content
    again writes nothing. Parts are named by chunk number, so an import that stopped halfway
    resumes at the first chunk not yet written.
    """
    marker = store.root / IMPORTS / f"{sha256}.json"
    if marker.exists():
        log.info("%s: already imported (sha256 %s)", path, sha256[:16])
        return ImportResult(str(path), sha256, 0, 0, skipped=True)
    interactions = read()
    log.info("%s: %d interactions to import", path, interactions.num_interactions)
    coo = interactions.matrix.tocoo()
    stamps = (
        np.asarray(interactions.timestamps[coo.row, coo.col]).ravel().astype(np.int64)
        if interactions.timestamps is not None
        else np.zeros(coo.nnz, np.int64)
    )
    users = np.asarray(interactions.user_ids, dtype=object)
    items = np.asarray(interactions.item_ids, dtype=object)
    tag = sha256[:16]
    chunks = max(1, -(-coo.nnz // chunk_rows))
    written = 0
    for chunk in range(chunks):
        name = f"part-import-{tag}-{chunk:06d}.parquet"
        if not any(store.root.glob(f"ingest_date=*/{name}")):
            rows = slice(chunk * chunk_rows, (chunk + 1) * chunk_rows)
            pairs = np.arange(coo.nnz)[rows]
            table = pa.table(
                {
                    "event_id": pa.array([f"import:{tag}:{p}" for p in pairs], pa.string()),
                    "user_id": pa.array(users[coo.row[rows]], pa.string()),
                    "item_id": pa.array(items[coo.col[rows]], pa.string()),
                    "event_type": pa.array([IMPORT_EVENT_TYPE] * len(pairs), pa.string()),
                    "weight": pa.array(coo.data[rows].astype(np.float32)),
                    "timestamp_ms": pa.array(stamps[rows] * 1000),
                },
                schema=BASE_SCHEMA,
            )
            store.write_table(table, name)
            written += 1
        if on_chunk is not None:
            on_chunk(chunk + 1, chunks)
    record = {"path": str(path), "sha256": sha256, "events": int(coo.nnz)}
    marker.parent.mkdir(parents=True, exist_ok=True)
    replace_bytes_atomically(marker, json.dumps(record).encode())
    return ImportResult(str(path), sha256, int(coo.nnz), written, skipped=False)
