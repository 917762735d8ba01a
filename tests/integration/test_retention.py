"""Retention: what the learning loop keeps stays bounded by what is not yet ingested."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib

from recsvc.core.state import StoredItem
from recsvc.data.interaction_store import InteractionStore
from recsvc.store.item_log import FileItemLog, RedisItemLog
from recsvc.store.names import INGEST_GROUP, event_stream_key, item_data_key
from recsvc.store.redis_backend import RedisEventLog, connect
from tests.helpers import events, write_log
from workers.ingest import (
    FileLogIngester,
    RedisStreamIngester,
    maintain_store,
    trim_acknowledged,
)

STREAM = event_stream_key("recsvc")


def _record(url: str, n: int, start: int) -> None:
    async def record() -> None:
        client = connect(url, 1.0, 1.0)
        try:
            await RedisEventLog(client, "recsvc", 600).append(events(n, start=start))
        finally:
            await client.aclose()

    asyncio.run(record())


def _ingested_ids(store: InteractionStore) -> list[str]:
    return sorted(set(store.read().column("event_id").to_pylist()))


@pytest.mark.redis
def test_stream_keeps_only_unacknowledged_entries_after_ingest(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    store = InteractionStore(tmp_path / "store")
    ingester = RedisStreamIngester(client, STREAM, store, batch_size=40, consumer="a")
    for round_ in range(3):
        _record(redis_url, 100, start=100 * round_)
        assert client.xlen(STREAM) == 100
        assert ingester.run_once() == 100
        assert client.xlen(STREAM) == 0
    # Recorded after the round: not delivered yet, so kept by the next trim.
    _record(redis_url, 30, start=300)
    assert trim_acknowledged(client, STREAM) == 0
    assert client.xlen(STREAM) == 30
    assert ingester.run_once() == 30
    assert client.xlen(STREAM) == 0
    assert _ingested_ids(store) == sorted(f"e{k}" for k in range(330))


@pytest.mark.redis
def test_a_crash_between_read_and_ack_loses_nothing(redis_url: str, tmp_path: Path) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    store = InteractionStore(tmp_path / "store")
    _record(redis_url, 120, start=0)
    crashed = RedisStreamIngester(client, STREAM, store, batch_size=50, consumer="a")
    # Consumer "a" reads a batch and dies before writing or acknowledging it.
    client.xreadgroup(INGEST_GROUP, "a", {STREAM: ">"}, count=50)
    # Another consumer ingests the rest (reclaiming nothing yet) and trims: the 50 pending
    # entries, and everything after them, stay.
    other = RedisStreamIngester(
        client, STREAM, store, batch_size=50, consumer="b", reclaim_after_ms=3_600_000
    )
    assert other.run_once() == 70
    assert client.xpending(STREAM, INGEST_GROUP)["pending"] == 50
    assert client.xlen(STREAM) >= 50
    pending_ids = {
        e["message_id"] for e in client.xpending_range(STREAM, INGEST_GROUP, "-", "+", 100)
    }
    kept = {entry_id for entry_id, _ in client.xrange(STREAM)}
    assert pending_ids <= kept
    # Once reclaimed and acknowledged, they go too, and every event was ingested.
    survivor = RedisStreamIngester(
        client, STREAM, store, batch_size=50, consumer="c", reclaim_after_ms=0
    )
    assert survivor.run_once() == 50
    assert crashed.run_once() == 0
    assert client.xlen(STREAM) == 0
    assert _ingested_ids(store) == sorted(f"e{k}" for k in range(120))


@pytest.mark.redis
def test_trim_keeps_what_any_group_still_needs(redis_url: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    _record(redis_url, 10, start=0)
    assert trim_acknowledged(client, STREAM) == 0  # no group: nothing was read
    client.xgroup_create(STREAM, INGEST_GROUP, id="0")
    client.xgroup_create(STREAM, "slow-reader", id="0")
    read = client.xreadgroup(INGEST_GROUP, "a", {STREAM: ">"}, count=10)
    client.xack(STREAM, INGEST_GROUP, *[entry_id for entry_id, _ in read[0][1]])
    # The ingest group is done, the other group has read nothing: all entries stay.
    assert trim_acknowledged(client, STREAM) == 0
    read = client.xreadgroup("slow-reader", "b", {STREAM: ">"}, count=4)
    client.xack(STREAM, "slow-reader", *[entry_id for entry_id, _ in read[0][1]])
    assert trim_acknowledged(client, STREAM) == 4
    assert client.xlen(STREAM) == 6


def _item(item_id: str, revision: int) -> StoredItem:
    vector = np.full(4, revision, dtype=np.float32)
    return StoredItem(item_id, f"rev{revision}", {"n": str(revision)}, "efficientnet_lite0", vector)


def _temporaries(directory: Path) -> list[Path]:
    return list(directory.glob(".*.tmp"))


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


async def test_file_item_log_is_compacted_to_one_record_per_item(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    log = FileItemLog(path, compact_factor=3)
    ids = [f"i{k}" for k in range(20)]
    for revision in range(50):
        await log.put([_item(item_id, revision) for item_id in ids])
        # Before: 20 lines more per round, 1,000 after 50 rounds; now never above 3 x 20.
        assert _lines(path) <= 3 * len(ids)
    items = await log.read_all()
    assert sorted(items) == sorted(ids)
    assert {item.category for item in items.values()} == {"rev49"}
    assert all(np.array_equal(item.embedding, np.full(4, 49.0)) for item in items.values())
    assert not _temporaries(tmp_path)
    # A reopened log counts what is on disk and goes on compacting from there.
    reopened = FileItemLog(path, compact_factor=3)
    for revision in range(50, 60):
        await reopened.put([_item("i0", revision)])
    assert _lines(path) <= 3 * len(ids)
    assert (await reopened.read_all())["i0"].category == "rev59"
    assert len(FileItemLog.read_path(path)) == len(ids)


@pytest.mark.redis
async def test_redis_item_log_holds_one_field_per_item(redis_url: str) -> None:
    client = connect(redis_url, 1.0, 1.0)
    try:
        log = RedisItemLog(client, "recsvc")
        for revision in range(30):
            await log.put([_item(f"i{k}", revision) for k in range(10)])
        assert await client.hlen(item_data_key("recsvc")) == 10
        assert {item.category for item in (await log.read_all()).values()} == {"rev29"}
    finally:
        await client.aclose()


def test_file_ingest_goes_on_beside_parts_that_are_not_its_own(tmp_path: Path) -> None:
    # Before: an imported part (part-import-...) made the file ingester fail on int("import").
    store = InteractionStore(tmp_path / "store")
    imported = events(5, start=1000)
    store.write_part(imported, "import", "0123456789abcdef-000000")
    log_path = tmp_path / "events.jsonl"
    write_log(log_path, events(40))
    ingester = FileLogIngester(log_path, store, batch_size=25)
    assert ingester.run_once() == 40
    write_log(log_path, events(10, start=40))
    assert ingester.run_once() == 10
    assert _ingested_ids(store) == sorted(
        [f"e{k}" for k in range(50)] + [f"e{k}" for k in range(1000, 1005)]
    )


def test_interaction_store_compaction_merges_parts_and_drops_repeats(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "store")
    log_path = tmp_path / "events.jsonl"
    ingester = FileLogIngester(log_path, store, batch_size=10)
    for start in range(0, 95, 10):  # one line, and so one part, per append
        write_log(log_path, events(min(10, 95 - start), start=start))
    assert ingester.run_once() == 95
    # A batch ingested twice (a crash before its checkpoint, in the Redis ingester's way).
    store.write_part(events(10, start=20), "again", "again")
    assert len(store.parts()) == 11 and store.count() == 105
    maintain_store(store, min_parts=8, retention_days=0)
    assert len(store.parts()) == 1 and store.count() == 95
    assert _ingested_ids(store) == sorted(f"e{k}" for k in range(95))
    assert not _temporaries(store.parts()[0].parent)
    # Ingest goes on from its checkpoint beside the merged part; below min_parts nothing merges.
    for start in range(95, 125, 10):
        write_log(log_path, events(10, start=start))
    assert ingester.run_once() == 30
    maintain_store(store, min_parts=8, retention_days=0)
    assert len(store.parts()) == 4
    assert _ingested_ids(store) == sorted(f"e{k}" for k in range(125))


def test_a_crash_between_merge_and_delete_reads_each_event_once(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "store")
    for start in range(0, 50, 10):
        store.write_part(events(10, start=start), f"{start:015d}", f"{start + 10:015d}")
    sources = store.parts()
    kept = tmp_path / "kept"
    kept.mkdir()
    for part in sources:
        shutil.copy(part, kept / part.name)
    store.compact(min_parts=2)
    for part in kept.iterdir():  # as if the process died before deleting its sources
        shutil.copy(part, sources[0].parent / part.name)
    assert len(store.parts()) == 6 and store.count() == 100
    assert _ingested_ids(store) == sorted(f"e{k}" for k in range(50))
    assert len(store.read()) == 50
    # The next round deletes the leftovers, however few, even below min_parts.
    store.compact(min_parts=100)
    assert len(store.parts()) == 1 and store.count() == 50
    assert _ingested_ids(store) == sorted(f"e{k}" for k in range(50))


def test_partitions_past_retention_are_dropped(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "store")
    store.write_part(events(10), "a", "b")
    today = store.parts()[0].parent
    for day in ("2026-01-01", "2026-01-10", "2026-01-11"):
        old = store.root / f"ingest_date={day}"
        old.mkdir()
        shutil.copy(store.parts()[0], old / f"part-{day}-x.parquet")
    now = datetime(2026, 1, 12, 8, tzinfo=UTC)
    maintain_store(store, min_parts=100, retention_days=2, now=now)
    days = sorted(p.name for p in store.root.glob("ingest_date=*"))
    assert days == ["ingest_date=2026-01-10", "ingest_date=2026-01-11", today.name]
    maintain_store(store, min_parts=100, retention_days=0, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert len(list(store.root.glob("ingest_date=*"))) == 3  # 0: keep everything
