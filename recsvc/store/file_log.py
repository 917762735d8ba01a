"""The embedded mode's event log: an append-only JSON-lines file, fsynced before each ack.

Each line holds up to LINE_EVENTS interactions as one JSON object of columns (lines of one
object per interaction, the earlier format, are read too). Idempotency on event_id uses the
set of ids in the file, read once at start. A crash in the middle of a write can leave a
partial last line; it is skipped (and reported) when the log is read, and the interactions on
it were never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from recsvc.core.state import AppendResult, Interaction
from recsvc.durable import append_durably
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


class FileEventLog:
    """EventLog in one append-only file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_tail(self.path)
        self._seen: set[str] = set()
        for columns in read_event_columns(self.path):
            self._seen.update(columns["event_id"])
        self._lock = asyncio.Lock()

    async def append(self, interactions: list[Interaction]) -> AppendResult:
        async with self._lock:
            fresh: list[Interaction] = []
            ids: set[str] = set()
            for event in interactions:
                if event.event_id not in self._seen and event.event_id not in ids:
                    fresh.append(event)
                    ids.add(event.event_id)
            if fresh:
                lines = "".join(
                    interactions_to_columns_json(fresh[start : start + LINE_EVENTS]) + "\n"
                    for start in range(0, len(fresh), LINE_EVENTS)
                )
                try:
                    await asyncio.to_thread(append_durably, self.path, lines.encode())
                except OSError as exc:
                    raise StoreUnavailable(f"event log {self.path}: {exc}") from exc
                self._seen |= ids
            return AppendResult(fresh, len(interactions) - len(fresh))

    async def close(self) -> None:
        return None


def drop_partial_tail(path: Path) -> None:
    """Cut a line left incomplete by a crash (it was never acknowledged), so that the next
    append starts on a line of its own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping %d bytes of an incomplete last line", path, len(data) - keep)
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


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
