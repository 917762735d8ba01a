"""The file event log in segments (issue 15): it rotates past a size, the start-up replay and
the ingest worker read across segments by log offset, and a closed segment is deleted only
once it is ingested and older than the replay window. Real files throughout."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.config import Settings
from recsvc.core.state import EventType, Interaction
from recsvc.data.interaction_store import InteractionStore
from recsvc.store import file_log
from recsvc.store.file_log import (
    FileEventLog,
    Segment,
    base_path,
    closed_segments,
    delete_ingested_segments,
    log_segments,
    read_columns_from,
    read_event_columns,
    read_events_since,
)
from recsvc.testing import running_server, server_env
from workers.ingest import FileLogIngester, build_ingest_round

DAY_MS = 86_400_000
# Small segments: a line of 10 of these events is ~500 bytes, so about 5 lines each.
SEGMENT = 2_000


def batch(start: int, n: int = 10, timestamp_ms: int | None = None) -> list[Interaction]:
    """Events e{start}.. of a few users; timestamps from ``timestamp_ms`` (default: now)."""
    now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    return [
        Interaction(f"u{k % 7}", f"i{k % 13}", EventType.VIEW, 1.0, now + k, f"e{k}")
        for k in range(start, start + n)
    ]


def append(log: FileEventLog, events: list[Interaction]) -> None:
    asyncio.run(log.append(events))


def fill(log: FileEventLog, start: int, n: int, timestamp_ms: int | None = None) -> None:
    """Append events e{start}..e{start + n - 1} ten at a time (a rotation may follow each)."""
    for first in range(start, start + n, 10):
        append(log, batch(first, min(10, start + n - first), timestamp_ms))


def ids(columns: dict[str, list[object]]) -> list[object]:
    return columns["event_id"]


def ingested(store: InteractionStore) -> list[str]:
    """Every event id in the store's parts, repeats included (the store's reader would hide
    them; a repeat would be a bug)."""
    found = [
        i for part in store.parts() for i in pq.read_table(part).column("event_id").to_pylist()
    ]
    return sorted(found, key=lambda event_id: int(event_id[1:]))


def expected(n: int, start: int = 0) -> list[str]:
    return [f"e{k}" for k in range(start, start + n)]


def test_the_log_rotates_and_reads_as_one_run_of_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = FileEventLog(path, segment_bytes=SEGMENT)
    fill(log, 0, 200)
    closed = closed_segments(path)
    assert len(closed) >= 3
    segments = log_segments(path)
    assert segments[0].start == 0 and segments[-1].path == path
    for before, after in itertools.pairwise(segments):
        assert after.start == before.end, "segments follow each other without a gap"
    assert all(segment.size >= SEGMENT for segment in closed)
    name = re.fullmatch(r"events\.(\d{15})-(\d+)\.jsonl", closed[1].path.name)
    assert name is not None and int(name[1]) == closed[0].end
    # Its newest event's timestamp is in the name: the newest of the events it holds.
    stamps = [t for c in read_event_columns(closed[1].path) for t in c["timestamp_ms"]]
    assert closed[1].newest_ms == max(stamps)
    # The ingest worker's reader: everything from offset 0, and from any line boundary.
    everything, end = read_columns_from(path, 0, sys.maxsize)
    assert ids(everything) == expected(200) and end == segments[-1].end
    first, middle = read_columns_from(path, 0, 55)
    rest, final = read_columns_from(path, middle, sys.maxsize)
    assert ids(first) + ids(rest) == expected(200) and final == end
    # A log that never rotated reads as before: one file from offset 0.
    plain = tmp_path / "plain.jsonl"
    append(FileEventLog(plain), batch(0, 30))
    assert ids(read_columns_from(plain, 0, sys.maxsize)[0]) == expected(30)
    assert not closed_segments(plain)


def test_replay_reads_the_window_across_segments_and_skips_older_segments(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    log = FileEventLog(path, segment_bytes=SEGMENT)
    now = int(time.time() * 1000)
    for start in range(0, 80, 10):  # old: the first segments (~5 lines each)
        append(log, batch(start, 10, timestamp_ms=now - 10 * DAY_MS))
    for start in range(80, 160, 10):  # young: across segments
        append(log, batch(start, 10, timestamp_ms=now - 60_000))
    append(log, batch(160, 5, timestamp_ms=now))  # in the active segment
    assert len(closed_segments(path)) >= 3
    replayed = [e.event_id for events in read_events_since(path, now - DAY_MS) for e in events]
    assert replayed == expected(85, start=80)
    # An old segment is not even opened: unreadable, it changes nothing.
    oldest = closed_segments(path)[0]
    assert oldest.newest_ms is not None and oldest.newest_ms < now - DAY_MS
    oldest.path.chmod(0)
    try:
        again = [e.event_id for events in read_events_since(path, now - DAY_MS) for e in events]
    finally:
        oldest.path.chmod(0o644)
    assert again == replayed


def test_a_segment_is_deleted_only_once_ingested_and_older_than_the_window(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    store = InteractionStore(tmp_path / "store")
    log = FileEventLog(path, segment_bytes=SEGMENT)
    now = int(time.time() * 1000)
    fill(log, 0, 120, timestamp_ms=now - 10 * DAY_MS)
    closed = closed_segments(path)
    assert len(closed) >= 2
    # Older than the window but not ingested: kept.
    assert delete_ingested_segments(path, 0, now) == []
    # Ingested but inside the window (11 days): kept, and the ingester says the same.
    ingester = FileLogIngester(path, store, batch_size=25, replay_window_ms=11 * DAY_MS)
    assert ingester.run_once() == 120
    assert closed_segments(path) == closed
    # Ingested up to the middle of the second segment: only the first goes.
    assert delete_ingested_segments(path, closed[1].end - 1, now) == [closed[0].path]
    assert base_path(path).read_text() == str(closed[0].end)
    # A window of 1 day: every ingested closed segment goes; the active one stays.
    ingester = FileLogIngester(path, store, batch_size=25, replay_window_ms=DAY_MS)
    assert ingester.run_once() == 0
    assert closed_segments(path) == [] and path.exists()
    # The log goes on at the right offsets: a restarted writer starts where the log ended.
    reopened = FileEventLog(path, segment_bytes=SEGMENT)
    fill(reopened, 120, 60)
    assert log_segments(path)[0].start == closed[-1].end
    assert FileLogIngester(path, store, batch_size=25).run_once() == 60
    assert ingested(store) == expected(180)
    # What was deleted is gone from the replay too; what is young is replayed.
    replayed = [e.event_id for events in read_events_since(path, 0) for e in events]
    assert replayed[-60:] == expected(60, start=120) and "e0" not in replayed


def test_ingest_restarted_across_rotations_neither_skips_nor_repeats(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    store = InteractionStore(tmp_path / "store")
    log = FileEventLog(path, segment_bytes=SEGMENT)
    written = 0
    for round_number in range(6):
        for _ in range(3):
            append(log, batch(written, 7))
            written += 7
        # A new ingester each round, as a restarted worker; sometimes it crashed after
        # writing a part but before saving its checkpoint (the part names it, by offset).
        ingester = FileLogIngester(path, store, batch_size=9, replay_window_ms=DAY_MS)
        if round_number % 2:
            offset = ingester._checkpoint()
            columns, end = read_columns_from(path, offset, 9)
            store.write_columns(columns, f"{offset:015d}", f"{end:015d}")
        ingester.run_once()
        assert ingested(store) == expected(written)
    assert len(closed_segments(path)) >= 3  # young events: nothing deleted


def test_a_rotation_or_deletion_cut_short_by_a_crash_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    store = InteractionStore(tmp_path / "store")
    append(FileEventLog(path), batch(0, 30, timestamp_ms=1_000))
    # A rotation that died after its rename: no active segment.
    os.rename(path, path.with_name("events.000000000000000-1029.jsonl"))
    ingester = FileLogIngester(path, store, batch_size=25)
    assert ingester.run_once() == 30
    reopened = FileEventLog(path, segment_bytes=SEGMENT)  # start-up creates the new one
    assert path.exists() and log_segments(path)[-1].start == closed_segments(path)[-1].end
    assert asyncio.run(reopened.append(batch(0, 30))).duplicates == 30, "ids read back"
    append(reopened, batch(30, 5, timestamp_ms=2_000))
    # A deletion that died after writing .base: the segment is still there and still read.
    first = closed_segments(path)[0]
    base_path(path).write_text(str(first.end))
    assert ids(read_columns_from(path, 0, sys.maxsize)[0]) == expected(35)
    assert ingester.run_once() == 5
    assert delete_ingested_segments(path, ingester._checkpoint(), 10_000) == [first.path]
    assert ingested(store) == expected(35)
    # A fresh store whose checkpoint points into deleted bytes skips them (with a warning).
    fresh = InteractionStore(tmp_path / "fresh")
    assert FileLogIngester(path, fresh, batch_size=100).run_once() == 5
    assert ingested(fresh) == expected(5, start=30)


def test_idempotency_ids_are_bounded_and_read_back_from_the_newest_segments(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    log = FileEventLog(path, max_ids=50, segment_bytes=SEGMENT)
    fill(log, 0, 120)
    assert len(log._ids) == 50
    assert len(closed_segments(path)) == 2  # 50 events each, 20 in the active segment
    reopened = FileEventLog(path, max_ids=50, segment_bytes=SEGMENT)
    assert len(reopened._ids) == 50
    retry = asyncio.run(reopened.append(batch(70, 50)))
    assert retry.duplicates == 50, "the newest 50 ids, across segments, are remembered"
    older = asyncio.run(reopened.append(batch(60, 10)))
    assert len(older.accepted) == 10, "an id older than the window is new again"


@pytest.mark.slow
def test_a_server_rotates_its_log_and_replays_across_segments_after_a_kill(
    model_store: Path, tmp_path: Path
) -> None:
    """RECSVC_STORE__EVENT_LOG_SEGMENT_BYTES reaches the server: its log rotates while it
    records, and a killed server replays events from closed segments and the active one."""
    store = tmp_path / "models"
    shutil.copytree(model_store, store)
    log_path = tmp_path / "events.jsonl"
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(log_path),
        RECSVC_STORE__EVENT_LOG_SEGMENT_BYTES=str(64 * 1024),
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    args = ["serve", "--model-store", str(store), "--port", "0"]
    with running_server(args, env) as first, grpc.insecure_channel(first.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for start in range(0, 4000, 500):
            request = pb.RecordInteractionsRequest(
                interactions=[
                    pb.Interaction(user_id=f"u{k % 50}", item_id=f"i{k}", event_id=f"r{k}")
                    for k in range(start, start + 500)
                ]
            )
            assert stub.RecordInteractions(request, timeout=30).accepted == 500
        first.process.kill()
        first.process.wait(timeout=10)
    assert len(closed_segments(log_path)) >= 2
    with running_server(args, env) as second:
        output = "".join(second.output)
        assert re.search(r"replayed 4000 events of 50 users", output), output


def test_ingest_beside_a_writer_that_rotates_reads_every_event_once(tmp_path: Path) -> None:
    """The ingest worker reads while the server appends and rotates (a rotation between its
    listing of the segments and its open of the active one must not shift its offsets)."""
    path = tmp_path / "events.jsonl"
    store = InteractionStore(tmp_path / "store")
    log = FileEventLog(path, segment_bytes=1_000)  # a rotation every other append
    total = 600
    done = threading.Event()

    def write() -> None:
        try:
            for start in range(0, total, 5):
                append(log, batch(start, 5))
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    ingester = FileLogIngester(path, store, batch_size=7, replay_window_ms=DAY_MS)
    while not done.is_set():
        ingester.run_once()
    writer.join()
    ingester.run_once()
    assert len(closed_segments(path)) > 20
    assert ingested(store) == expected(total)


def test_the_ingest_worker_deletes_by_the_history_ttl_setting(tmp_path: Path) -> None:
    """build_ingest_round wires RECSVC_STORE__HISTORY_TTL_SECONDS as the replay window."""
    path = tmp_path / "events.jsonl"
    log = FileEventLog(path, segment_bytes=SEGMENT)
    now = int(time.time() * 1000)
    fill(log, 0, 100, timestamp_ms=now - 2 * 3_600_000)  # two hours old
    fill(log, 100, 100, timestamp_ms=now)
    settings = Settings(
        model_store=tmp_path / "models",
        store={"event_log_path": path, "history_ttl_seconds": 3600},
        workers={"interaction_store": tmp_path / "store"},
    )
    assert build_ingest_round(settings)() == 200
    kept = log_segments(path)
    assert kept[0].start > 0 and all(s.newest_ms is None or s.newest_ms >= now for s in kept)
    replayed = [e.event_id for events in read_events_since(path, now - 3_600_000) for e in events]
    assert replayed == expected(100, start=100)


def test_a_rotation_between_listing_and_opening_does_not_shift_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the reader guards against, made to happen: it lists the segments, the writer
    rotates and fills the new active segment past the reader's offset, then the reader opens
    `events.jsonl`. Without the second listing it would read the new segment at the old one's
    offsets (skipping events)."""
    path = tmp_path / "events.jsonl"
    store = InteractionStore(tmp_path / "store")
    log = FileEventLog(path, segment_bytes=SEGMENT)
    fill(log, 0, 30)  # 3 lines, ~1,500 bytes: no rotation yet
    ingester = FileLogIngester(path, store, batch_size=1_000)
    assert ingester.run_once() == 30
    fill(log, 30, 10)
    real_listing = file_log.log_segments
    writes = [0]

    def listing_then_rotation(active: Path) -> list[Segment]:
        segments = real_listing(active)
        if not writes[0]:
            writes[0] = 1
            fill(log, 40, 10)  # past segment_bytes: rotates
            fill(log, 50, 40)  # the new active segment, longer than the reader's offset
            assert log_segments(path)[-1].size > ingester._checkpoint() - segments[-1].start
        return segments

    monkeypatch.setattr(file_log, "log_segments", listing_then_rotation)
    assert ingester.run_once() == 60 and writes[0]
    assert ingested(store) == expected(90)
