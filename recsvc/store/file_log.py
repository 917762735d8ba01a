"""The embedded mode's event log: an append-only JSON-lines file, fsynced before each ack.

Each line holds up to LINE_EVENTS interactions as one JSON object of columns (lines of one
object per interaction, the earlier format, are read too). One process writes the file.

Nothing acknowledged is lost and nothing unacknowledged is left behind: an append that fails
(ENOSPC, EIO, any OSError) is cut back to the last complete line before it answers, and a
line torn by a crash is cut at start-up, so a later append never joins a torn line (which
would make an acknowledged line unreadable). An append whose caller is cancelled finishes (or
fails) before the next append starts, so that a retry finds its event_ids.

Idempotency on event_id remembers the most recent ``max_ids`` ids (read from the file's end
at start): a retry older than that window is accepted as new. Each remembered id also says
whether the users' state was updated after it was logged (:meth:`FileEventLog.confirm`); a
retry of a logged but unconfirmed event comes back as ``pending`` for the caller to apply.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from recsvc.core.state import AppendResult, EventType, Interaction
from recsvc.durable import append_durably, fsync_path
from recsvc.errors import StoreUnavailable
from recsvc.store.codec import (
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

    def confirm(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            if event_id in self._ids:
                self._ids[event_id] = True


class FileEventLog:
    """EventLog in one append-only file."""

    def __init__(self, path: Path, max_ids: int = DEFAULT_MAX_IDS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
            fsync_path(self.path.parent)
        # Where the last complete line ends: what an append that failed is cut back to.
        self._end = drop_partial_tail(self.path)
        self._ids = RecentIds(max_ids)
        for columns in read_event_columns(self.path):
            self._ids.add(columns["event_id"], confirmed=True)
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
                    self._end = await asyncio.to_thread(
                        append_durably, self.path, lines.encode(), self._end
                    )
                except OSError as exc:
                    raise StoreUnavailable(f"event log {self.path}: not recorded ({exc})") from exc
                self._ids.add((event.event_id for event in fresh), confirmed=False)
            return AppendResult(fresh, len(interactions) - len(fresh), pending)

    async def confirm(self, event_ids: list[str]) -> None:
        self._ids.confirm(event_ids)

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
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                yield columns_from_json(line)
            except ValueError as exc:
                log.warning("%s: line %d is not a complete event (%s); skipped", path, number, exc)


def read_events_since(path: Path, since_ms: int) -> Iterator[list[Interaction]]:
    """The interactions of the event file whose ``timestamp_ms`` is ``since_ms`` or later,
    one list per line, streaming: the replay reader of embedded mode's start-up. A line that
    is not a complete event (a torn tail, a hand edit) is skipped and reported."""
    for columns in read_event_columns(path):
        try:
            events = [
                Interaction(user, item, EventType(kind), float(weight), int(ts), event_id)
                for event_id, user, item, kind, weight, ts in zip(
                    *(columns[name] for name in COLUMNS), strict=True
                )
                if int(ts) >= since_ms
            ]
        except (TypeError, ValueError) as exc:
            log.warning("%s: a line of events not replayed (%s)", path, exc)
            continue
        if events:
            yield events


def read_columns_from(path: Path, offset: int, max_events: int) -> tuple[EventColumns, int]:
    """The events of the complete lines from byte ``offset`` on, as columns, stopping before
    a line that would take them past ``max_events`` (one line is always taken); returns them
    and the offset just past the last line read (an incomplete last line is left for later)."""
    columns: EventColumns = {name: [] for name in COLUMNS}
    count = 0
    if not path.exists():
        return columns, offset
    with path.open("rb") as handle:
        handle.seek(offset)
        position = offset
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                part = columns_from_json(line)
            except ValueError as exc:
                log.warning("%s: bad event line at byte %d skipped (%s)", path, position, exc)
                position += len(line)
                continue
            size = len(part["event_id"])
            if count and count + size > max_events:
                break
            position += len(line)
            count += size
            for name in COLUMNS:
                columns[name].extend(part[name])
    return columns, position
