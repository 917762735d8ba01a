"""The embedded mode's event log: append-only JSON-lines segments, fsynced before each ack.

Each line holds up to LINE_EVENTS interactions as one JSON object of columns (lines of one
object per interaction, the earlier format, are read too). One process writes the log.

Segments. The log is one byte sequence cut into files, each named by where it starts in it::

    events.jsonl                                  the active segment: appends go here
    events.<start, 15 digits>-<newest ms>.jsonl   closed segments (their bytes never change)
    events.jsonl.base                             offset where the oldest kept segment begins

Once the active segment holds ``segment_bytes`` or more it is renamed to a closed segment
named by its start offset and the newest event timestamp in it, and a new empty active segment
begins where it ended. A log offset (what the ingest worker's checkpoint and part names hold)
thus means the same byte before and after any rotation, and a log that never rotated is read
as before (it starts at offset 0). :func:`delete_ingested_segments` (the ingest worker's job)
deletes the oldest closed segments once they are ingested and older than the start-up replay
window; it records in ``.base`` where the kept log begins before it deletes, so that the
active segment's start can always be worked out: the end of the newest closed segment, or
``.base`` when none is left. A crash between any two steps of a rotation or a deletion leaves
a log that reads the same: renamed but no new active segment (one is created at start-up and
by the next append), ``.base`` written but the segment not yet deleted (it is kept).

Nothing acknowledged is lost and nothing unacknowledged is left behind: an append that fails
(ENOSPC, EIO, any OSError) is cut back to the last complete line before it answers, and a
line torn by a crash is cut at start-up, so a later append never joins a torn line (which
would make an acknowledged line unreadable). An append whose caller is cancelled finishes (or
fails) before the next append starts, so that a retry finds its event_ids.

Idempotency on event_id remembers the most recent ``max_ids`` ids (read back at start from
the newest segments, the active one first, until ``max_ids`` are found): a retry older than
that window is accepted as new. Each remembered id also says whether the users' state was
updated after it was logged (:meth:`FileEventLog.confirm`); a retry of a logged but
unconfirmed event comes back as ``pending`` for the caller to apply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from recsvc.core.state import AppendResult, EventType, Interaction
from recsvc.durable import append_durably, fsync_path, replace_bytes_atomically
from recsvc.errors import StoreUnavailable
from recsvc.store.codec import (
    ALL_COLUMNS,
    COLUMNS,
    EventColumns,
    columns_from_json,
    interactions_to_columns_json,
)

log = logging.getLogger(__name__)

# Interactions per line: big enough that encoding is one cheap call per line, small enough
# that the ingest worker can cut its parts close to their configured size.
LINE_EVENTS = 100

# Default of store.dedupe_max_ids_in_process: about 200 bytes of memory per id.
DEFAULT_MAX_IDS = 200_000

# Default of store.event_log_segment_bytes: the active segment is closed past this size.
DEFAULT_SEGMENT_BYTES = 64 << 20


class RecentIds:
    """The most recent ``max_ids`` event ids (least recently seen dropped first), each with
    whether the users' state was updated after it was logged."""

    def __init__(self, max_ids: int) -> None:
        self.max_ids = max_ids
        self._ids: OrderedDict[str, bool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, event_id: str) -> bool | None:
        """None: unknown; False: logged, state not confirmed; True: logged and applied."""
        confirmed = self._ids.get(event_id)
        if confirmed is not None:
            self._ids.move_to_end(event_id)
        return confirmed

    def add(self, event_ids: Iterable[str], confirmed: bool) -> None:
        for event_id in event_ids:
            self._ids[event_id] = confirmed
            self._ids.move_to_end(event_id)
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def add_older(self, event_ids: list[str]) -> None:
        """Remember ``event_ids`` (confirmed) as seen before every id remembered now, as
        far as the window has room: start-up reads the segments newest first."""
        room = self.max_ids - len(self._ids)
        if room <= 0:
            return
        known = self._ids
        self._ids = OrderedDict()
        for event_id in event_ids[-room:]:
            self._ids[event_id] = True
        for event_id, confirmed in known.items():
            self._ids[event_id] = confirmed
            self._ids.move_to_end(event_id)

    def confirm(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            if event_id in self._ids:
                self._ids[event_id] = True


class FileEventLog:
    """EventLog in append-only segment files (the active one: ``path``)."""

    def __init__(
        self,
        path: Path,
        max_ids: int = DEFAULT_MAX_IDS,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.path = Path(path)
        self.segment_bytes = segment_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_active(self.path)
        # Where the last complete line ends: what an append that failed is cut back to.
        self._end = drop_partial_tail(self.path)
        # Where the active segment begins in the log, and its newest event timestamp (the
        # name its rotation gives it; None: no event yet).
        self._start = active_start(self.path)
        self._newest_ms: int | None = None
        self._ids = RecentIds(max_ids)
        for index, segment in enumerate(reversed(log_segments(self.path))):
            ids: list[str] = []
            for columns in read_event_columns(segment.path):
                ids.extend(columns["event_id"])
                if index == 0:
                    self._newest_ms = _newest(columns["timestamp_ms"], self._newest_ms)
            self._ids.add_older(ids)
            if len(self._ids) >= max_ids:
                break
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[AppendResult]] = set()

    async def append(self, interactions: list[Interaction]) -> AppendResult:
        # The write runs in a task of its own, which the caller's cancellation does not stop
        # (the thread writing the file could not be stopped anyway): the lock stays held until
        # the file is written and the ids remembered, so a retry finds them.
        task = asyncio.get_running_loop().create_task(self._append(interactions))
        self._writes.add(task)
        task.add_done_callback(self._written)
        return await asyncio.shield(task)

    def _written(self, task: asyncio.Task[AppendResult]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller may be gone (the error reached it if not)

    async def _append(self, interactions: list[Interaction]) -> AppendResult:
        async with self._lock:
            fresh: list[Interaction] = []
            pending: list[Interaction] = []
            in_batch: set[str] = set()
            for event in interactions:
                if event.event_id in in_batch:
                    continue
                in_batch.add(event.event_id)
                confirmed = self._ids.get(event.event_id)
                if confirmed is None:
                    fresh.append(event)
                elif not confirmed:
                    pending.append(event)
            if fresh:
                lines = "".join(
                    interactions_to_columns_json(fresh[start : start + LINE_EVENTS]) + "\n"
                    for start in range(0, len(fresh), LINE_EVENTS)
                )
                try:
                    self._end = await asyncio.to_thread(self._write, lines.encode())
                except OSError as exc:
                    raise StoreUnavailable(f"event log {self.path}: not recorded ({exc})") from exc
                self._ids.add((event.event_id for event in fresh), confirmed=False)
                stamps = [event.timestamp_ms for event in fresh]
                self._newest_ms = _newest(stamps, self._newest_ms)
                if self._end >= self.segment_bytes:
                    await asyncio.to_thread(self._rotate)
            return AppendResult(fresh, len(interactions) - len(fresh), pending)

    def _write(self, content: bytes) -> int:
        _create_active(self.path)  # a rotation that died before creating it
        return append_durably(self.path, content, self._end)

    def _rotate(self) -> None:
        """Close the active segment and begin a new one where it ended. The events are on
        disk already: a rotation that fails is logged and tried again after the next append."""
        closed = self.path.with_name(_closed_name(self.path, self._start, self._newest_ms or 0))
        try:
            with self.path.open("rb+") as handle:  # nothing past the last complete line
                if handle.seek(0, os.SEEK_END) > self._end:
                    handle.truncate(self._end)
                    os.fsync(handle.fileno())
            os.rename(self.path, closed)
            fsync_path(self.path.parent)
        except OSError as exc:
            log.warning("event log %s: not rotated (%s); trying again later", self.path, exc)
            return
        self._start += self._end
        self._end = 0
        self._newest_ms = None
        try:
            _create_active(self.path)
        except OSError as exc:  # the next append creates it
            log.warning("event log %s: new segment not created yet (%s)", self.path, exc)
        log.info("event log: closed segment %s", closed.name)

    async def confirm(self, events: list[Interaction]) -> None:
        self._ids.confirm(event.event_id for event in events)

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def drop_partial_tail(path: Path) -> int:
    """Cut a line left incomplete by a crash (it was never acknowledged), so that the next
    append starts on a line of its own; returns the file's size after it (0: no file)."""
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        keep = _end_of_last_line(handle, size)
        if keep == size:
            return size
        log.warning("%s: dropping %d bytes of an incomplete last line", path, size - keep)
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return keep


def _end_of_last_line(handle: IO[bytes], size: int, chunk: int = 1 << 16) -> int:
    """The offset just past the file's last newline (0 if none), reading back from the end."""
    position = size
    while position > 0:
        start = max(0, position - chunk)
        handle.seek(start)
        data = handle.read(position - start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def read_event_columns(path: Path) -> Iterator[EventColumns]:
    """The columns of every complete line of an event file, in order (partial or unreadable
    lines are skipped and reported)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:  # no log yet, or a segment deleted since it was listed
        return
    with handle:
        for number, line in enumerate(handle, start=1):
            try:
                yield columns_from_json(line)
            except ValueError as exc:
                log.warning("%s: line %d is not a complete event (%s); skipped", path, number, exc)


def read_events_since(path: Path, since_ms: int) -> Iterator[list[Interaction]]:
    """The interactions of the event log whose ``timestamp_ms`` is ``since_ms`` or later,
    one list per line, streaming, oldest segment first (closed segments whose newest event is
    older are not opened): the replay reader of embedded mode's start-up. A line that is not
    a complete event (a torn tail, a hand edit) is skipped and reported."""
    for segment in log_segments(path):
        if segment.newest_ms is not None and segment.newest_ms < since_ms:
            continue
        for columns in read_event_columns(segment.path):
            try:
                events = [
                    Interaction(user, item, EventType(kind), float(weight), int(ts), event_id)
                    for event_id, user, item, kind, weight, ts in zip(
                        *(columns[name] for name in COLUMNS), strict=True
                    )
                    if int(ts) >= since_ms
                ]
            except (TypeError, ValueError) as exc:
                log.warning("%s: a line of events not replayed (%s)", segment.path, exc)
                continue
            if events:
                yield events


def read_columns_from(path: Path, offset: int, max_events: int) -> tuple[EventColumns, int]:
    """The events of the complete lines from log offset ``offset`` on (across segments), as
    columns, stopping before a line that would take them past ``max_events`` (one line is
    always taken); returns them and the log offset just past the last line read (an
    incomplete last line is left for later). Offsets before the oldest kept segment (deleted)
    are skipped with a warning."""
    columns: EventColumns = {name: [] for name in ALL_COLUMNS}
    count = 0
    position = offset
    while True:
        segment, handle = _open_segment_at(path, position)
        if handle is None:
            return columns, position
        with handle:
            if position < segment.start:
                log.warning(
                    "%s: log bytes %d-%d were deleted before they were read; skipped",
                    path,
                    position,
                    segment.start,
                )
                position = segment.start
            handle.seek(position - segment.start)
            for line in handle:
                if not line.endswith(b"\n"):
                    if segment.newest_ms is None:  # being written: read it next time
                        return columns, position
                    log.warning("%s: incomplete last line skipped", segment.path)
                    position = segment.end
                    break
                try:
                    part = columns_from_json(line)
                except ValueError as exc:
                    log.warning("%s: bad event line at byte %d skipped (%s)", path, position, exc)
                    position += len(line)
                    continue
                size = len(part["event_id"])
                if count and count + size > max_events:
                    return columns, position
                position += len(line)
                count += size
                for name in ALL_COLUMNS:
                    columns[name].extend(part[name])
        if segment.newest_ms is None:  # the active segment: read to its end
            return columns, position


# -- segments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One file of the event log: where it starts in the log, its size, and for a closed
    segment the newest event timestamp in it (None: the active segment)."""

    path: Path
    start: int
    size: int
    newest_ms: int | None

    @property
    def end(self) -> int:
        return self.start + self.size


def _closed_pattern(active: Path) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(active.stem)}\.(\d{{15}})-(\d+){re.escape(active.suffix)}")


def _closed_name(active: Path, start: int, newest_ms: int) -> str:
    return f"{active.stem}.{start:015d}-{max(newest_ms, 0)}{active.suffix}"


def base_path(active: Path) -> Path:
    """The file that says where the oldest kept segment begins (after deletions)."""
    return active.with_name(active.name + ".base")


def closed_segments(active: Path) -> list[Segment]:
    """The closed segments of the log whose active segment is ``active``, oldest first."""
    pattern = _closed_pattern(active)
    found: list[Segment] = []
    if not active.parent.is_dir():
        return found
    for entry in os.scandir(active.parent):
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            size = entry.stat().st_size
        except FileNotFoundError:  # deleted since the listing
            continue
        found.append(Segment(Path(entry.path), int(match[1]), size, int(match[2])))
    return sorted(found, key=lambda segment: segment.start)


def _read_base(active: Path) -> int:
    try:
        return int(base_path(active).read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def _active_start(closed: list[Segment], base: int) -> int:
    return max([base, *(segment.end for segment in closed)])


def active_start(active: Path) -> int:
    """Where the active segment begins in the log: the end of the newest closed segment, or
    where the kept log begins when every closed segment was deleted (0: never rotated)."""
    # Listed before .base is read: a deletion writes .base before it deletes, so a segment
    # missing from the listing has its end in .base.
    closed = closed_segments(active)
    return _active_start(closed, _read_base(active))


def log_segments(active: Path) -> list[Segment]:
    """Every segment of the log, oldest first, the active one (maybe empty) last."""
    closed = closed_segments(active)
    start = _active_start(closed, _read_base(active))
    try:
        size = active.stat().st_size
    except FileNotFoundError:  # between a rotation's rename and the new segment
        size = 0
    return [*closed, Segment(active, start, size, None)]


def _open_segment_at(active: Path, offset: int) -> tuple[Segment, IO[bytes] | None]:
    """The segment holding log offset ``offset`` (the oldest kept one if it was deleted, the
    active one at or past its start), opened; None when there is nothing at ``offset`` yet.

    The active segment's start is worked out from the closed segments, which a rotation
    changes: it is listed before and after the active segment is opened, and the open is
    tried again if a rotation came in between (the file opened may be a closed one by now)."""
    while True:
        segments = log_segments(active)
        segment = next((s for s in segments if offset < s.end), segments[-1])
        if segment.newest_ms is not None:
            try:
                return segment, segment.path.open("rb")
            except FileNotFoundError:  # deleted since the listing: list again
                continue
        try:
            handle = segment.path.open("rb")
        except FileNotFoundError:  # rotated, the new segment not created yet
            return segment, None
        if active_start(active) == segment.start:
            return segment, handle
        handle.close()


def delete_ingested_segments(active: Path, ingested_to: int, older_than_ms: int) -> list[Path]:
    """Delete the oldest closed segments that end at or before log offset ``ingested_to``
    (the ingest worker's checkpoint) and whose newest event is older than ``older_than_ms``
    (the start-up replay still reads younger ones); stops at the first one that must stay, so
    the kept log is one run of bytes. Returns the deleted paths.

    ``.base`` is written (atomically) before a segment is deleted: a crash in between leaves
    the segment, deleted next time."""
    deleted: list[Path] = []
    for segment in closed_segments(active):
        if segment.end > ingested_to or (segment.newest_ms or 0) >= older_than_ms:
            break
        if _read_base(active) < segment.end:
            replace_bytes_atomically(base_path(active), str(segment.end).encode())
        segment.path.unlink(missing_ok=True)
        deleted.append(segment.path)
    if deleted:
        fsync_path(active.parent)
        log.info(
            "event log: deleted %d ingested segments up to log byte %d", len(deleted), ingested_to
        )
    return deleted


def _create_active(path: Path) -> None:
    """Create an empty active segment if there is none, durably (its directory entry too)."""
    if not path.exists():
        path.touch()
        fsync_path(path.parent)


def _newest(stamps: Iterable[object], newest: int | None) -> int | None:
    for stamp in stamps:
        try:
            value = int(stamp)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            continue
        if newest is None or value > newest:
            newest = value
    return newest
