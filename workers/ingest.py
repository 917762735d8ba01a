"""Ingestion: the event log -> a partitioned Parquet interaction store, effectively once.

Store layout::

    <store>/ingest_date=YYYY-MM-DD/part-<first>-<last>.parquet   one file per ingested batch
    <store>/_checkpoint.json                                      file mode: log offset done

A batch is written to a temporary file, fsynced and renamed into place before the source is
told it is done (the checkpoint, or XACK for a Redis Stream). A crash after the write but before
that repeats the batch at most once: file mode finds the part that starts at its checkpoint and
skips it; Redis mode re-delivers the pending entries, and readers drop repeated event ids, so
every acknowledged event is counted exactly once.

File mode reads the event log's segments (recsvc/store/file_log.py) by log offset, which a
rotation does not change, so the checkpoint and the part names (part-<first>-<end offset>)
mean the same bytes before and after one. After a round it deletes the closed segments that
lie wholly before its checkpoint and whose newest event is older than the start-up replay's
window (``history_ttl_seconds``); the checkpoint is saved before, so a crash in between leaves
a segment that the next round deletes.

With ``store.event_partitions`` N > 1 the log is N streams (recsvc.store.names.EventPartitions);
the worker reads every stream of every partition count listed in ``{prefix}:{ev}:layouts`` (and
of its own count and of the single stream, whatever the set says), each with the one consumer
group, whose delivery position and pending entries are that stream's checkpoint. The parts of
partition p of N are named ``part-n<N>p<p>_<first>-<last>``: ids of two streams may coincide.

After each round each Redis Stream is trimmed (XTRIM MINID) up to the first entry that some
consumer group still needs: the oldest pending entry, or the first one not yet delivered. The
stream then holds only unacknowledged events, and a consumer that crashed between reading and
acknowledging loses nothing: its pending entries stay until they are reclaimed and acknowledged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from recsvc.backends import event_log_path, event_partitions, sync_redis
from recsvc.config import Settings
from recsvc.data.interaction_store import InteractionStore
from recsvc.durable import replace_bytes_atomically
from recsvc.errors import ConfigError, StoreUnavailable
from recsvc.store.clients import REDIS_ERRORS
from recsvc.store.codec import (
    interaction_from_json,
)
from recsvc.store.file_log import delete_ingested_segments, read_columns_from
from recsvc.store.names import INGEST_GROUP, EventPartitions, event_layouts_key

log = logging.getLogger(__name__)

CHECKPOINT = "_checkpoint.json"
# A part of the file ingester: part-<first byte>-<byte after the last>, 15 digits each.
_OFFSET_PART = re.compile(r"part-(\d{15})-(\d{15})")
GROUP = INGEST_GROUP


class FileLogIngester:
    """Ingests the embedded mode's event log, tracking a log offset; deletes the closed
    segments it is done with once they are older than ``replay_window_ms`` (None: never)."""

    def __init__(
        self,
        log_path: Path,
        store: InteractionStore,
        batch_size: int,
        replay_window_ms: int | None = None,
    ) -> None:
        self.log_path = Path(log_path)
        self.store = store
        self.batch_size = batch_size
        self.replay_window_ms = replay_window_ms

    def run_once(self) -> int:
        """Ingest what is new; returns the number of events written."""
        written = self._ingest()
        if self.replay_window_ms is not None:
            now_ms = int(time.time() * 1000)
            delete_ingested_segments(
                self.log_path, self._checkpoint(), now_ms - self.replay_window_ms
            )
        return written

    def _ingest(self) -> int:
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
        # Only this ingester's parts are named by byte offsets; others (`recsvc import`'s, a
        # Redis ingester's) are not about this file.
        for part in self.store.parts():
            match = _OFFSET_PART.fullmatch(part.stem)
            if match and int(match[1]) == offset:
                return int(match[2])
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
        label: str = "",
    ) -> None:
        self.redis = client
        self.stream = stream
        self.label = label  # names this stream's parts apart from other partitions' ones
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
            first = ids[0].replace("-", "_")
            if self.label:
                first = f"{self.label}_{first}"
            self.store.write_part(events, first, ids[-1].replace("-", "_"))
            self.redis.xack(self.stream, GROUP, *ids)
            written += len(events)
        trimmed = trim_acknowledged(self.redis, self.stream)
        if trimmed:
            log.info("ingest: trimmed %d acknowledged entries from %s", trimmed, self.stream)
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


class PartitionedStreamIngester:
    """Ingests every partition stream of the event log (one RedisStreamIngester each, one
    consumer group, one checkpoint per stream): those of ``partitions`` and of every partition
    count recorded in the layouts set, so that events written before a change of the count
    are drained too."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        partitions: EventPartitions,
        store: InteractionStore,
        batch_size: int,
        consumer: str | None = None,
        reclaim_after_ms: int = 30_000,
    ) -> None:
        self.redis = client
        self.partitions = partitions
        self.store = store
        self.batch_size = batch_size
        self.consumer = consumer
        self.reclaim_after_ms = reclaim_after_ms
        self._ingesters: dict[str, RedisStreamIngester] = {}

    def run_once(self) -> int:
        written = 0
        for layout in partition_layouts(self.redis, self.partitions):
            for partition in range(layout.count):
                written += self._ingester(layout, partition).run_once()
        return written

    def _ingester(self, layout: EventPartitions, partition: int) -> RedisStreamIngester:
        stream = layout.stream_key(partition)
        if stream not in self._ingesters:
            self._ingesters[stream] = RedisStreamIngester(
                self.redis,  # type: ignore[arg-type]  # the commands used are single-key
                stream,
                self.store,
                self.batch_size,
                self.consumer,
                self.reclaim_after_ms,
                label=layout.label(partition),
            )
        return self._ingesters[stream]


def partition_layouts(client: Any, partitions: EventPartitions) -> list[EventPartitions]:
    """Every partition count the event log may hold events under: the single stream, this
    process's count and those the servers recorded; fewest first."""
    recorded: Any = client.smembers(event_layouts_key(partitions.prefix))
    counts = {1, partitions.count} | {int(count) for count in recorded}
    return [EventPartitions(partitions.prefix, count) for count in sorted(counts)]


def logged_stream_keys(client: Any, prefix: str, partitions: int = 1) -> list[str]:
    """The key of every stream that may hold logged events (for tests and tools)."""
    layouts = partition_layouts(client, EventPartitions(prefix, partitions))
    return [key for layout in layouts for key in layout.stream_keys()]


def trim_acknowledged(client: redis.Redis, stream: str) -> int:
    """Drop the stream's entries that every consumer group has acknowledged; returns how many.

    An entry is kept if any group has it pending or has not been delivered it yet. The groups'
    delivery positions are read before their pending entries: an entry delivered between the
    two reads is then either past the position read or among the pending ones, never dropped.
    Without a group nothing is trimmed (nobody has read anything)."""
    groups: Any = client.xinfo_groups(stream)
    if not groups:
        return 0
    keep_from = [_next_id(group["last-delivered-id"]) for group in groups]
    for group in groups:
        pending: Any = client.xpending(stream, group["name"])
        if pending["pending"]:
            keep_from.append(_parse_id(pending["min"]))
    ms, seq = min(keep_from)
    return int(client.xtrim(stream, minid=f"{ms}-{seq}", approximate=False))


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return int(ms), int(seq)


def _next_id(entry_id: bytes | str) -> tuple[int, int]:
    """The smallest id after ``entry_id`` (XTRIM MINID keeps ids at or above it)."""
    ms, seq = _parse_id(entry_id)
    return ms, seq + 1


def build_ingest_round(settings: Settings, event_log: Path | None = None) -> Callable[[], int]:
    """The ingest worker's round, wired from the settings: the Redis Stream when
    ``redis_url`` is set, else the event log file (``event_log``, or the server's)."""
    w = settings.workers
    store = InteractionStore(w.interaction_store)
    ingest: Callable[[], int]
    if settings.redis_url:
        ingester: PartitionedStreamIngester | None = None

        def ingest_stream() -> int:
            # Made in the first round, not before: a Redis still starting is a failed round
            # (retried), not a failed start.
            nonlocal ingester
            if ingester is None:
                ingester = PartitionedStreamIngester(
                    sync_redis(settings), event_partitions(settings), store, w.batch_size
                )
            return ingester.run_once()

        ingest = ingest_stream
    else:
        ingest = FileLogIngester(
            event_log or event_log_path(settings),
            store,
            w.batch_size,
            replay_window_ms=settings.store.history_ttl_seconds * 1000,
        ).run_once

    def ingest_round() -> int:
        try:
            written = ingest()
        except redis.AuthenticationError as exc:
            # A wrong password does not heal by waiting: end, so that the pod shows it.
            raise ConfigError(f"redis: {exc}") from exc
        except REDIS_ERRORS as exc:
            if not settings.redis_url:
                raise
            raise StoreUnavailable(f"redis: ingest round failed: {exc}") from exc
        maintain_store(store, w.store_compact_min_parts, w.store_retention_days)
        return written

    return ingest_round


def maintain_store(
    store: InteractionStore, min_parts: int, retention_days: int, now: datetime | None = None
) -> None:
    """After an ingest round: merge partitions of many parts, drop those past retention (0:
    none). Runs after the round's checkpoint or XACK, so it never merges a part that a crashed
    round's recovery still looks for."""
    if retention_days:
        today = (now or datetime.now(UTC)).date()
        store.drop_partitions_before((today - timedelta(days=retention_days)).isoformat())
    store.compact(min_parts)
