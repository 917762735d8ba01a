"""The embedded mode's event log: an append-only JSON-lines file, fsynced before each ack.

Idempotency on event_id uses the set of ids in the file, read once at start. A crash in the
middle of a write can leave a partial last line; it is skipped (and reported) when the log is
read, and the interactions on it were never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from recsvc.core.state import AppendResult, Interaction
from recsvc.errors import StoreUnavailable
from recsvc.store.codec import interaction_from_json, interaction_to_json

log = logging.getLogger(__name__)


class FileEventLog:
    """EventLog in one append-only file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_tail(self.path)
        self._seen: set[str] = {event.event_id for event in read_event_file(self.path)}
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
                lines = "".join(interaction_to_json(e) + "\n" for e in fresh)
                try:
                    await asyncio.to_thread(self._write_durably, lines.encode())
                except OSError as exc:
                    raise StoreUnavailable(f"event log {self.path}: {exc}") from exc
                self._seen |= ids
            return AppendResult(fresh, len(interactions) - len(fresh))

    def _write_durably(self, data: bytes) -> None:
        with self.path.open("ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

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


def read_event_file(path: Path) -> Iterator[Interaction]:
    """Every complete interaction in an event file, in order (partial lines are skipped)."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                yield interaction_from_json(line)
            except (ValueError, KeyError) as exc:
                log.warning("%s: line %d is not a complete event (%s); skipped", path, number, exc)


def read_events_from(path: Path, offset: int, max_events: int) -> tuple[list[Interaction], int]:
    """Up to ``max_events`` complete events starting at byte ``offset``; returns them and the
    offset just past the last one (an incomplete last line is left for later)."""
    events: list[Interaction] = []
    if not path.exists():
        return events, offset
    with path.open("rb") as handle:
        handle.seek(offset)
        position = offset
        for line in handle:
            if not line.endswith(b"\n") or len(events) >= max_events:
                break
            position += len(line)
            try:
                events.append(interaction_from_json(line))
            except (ValueError, KeyError) as exc:
                log.warning("%s: bad event at byte %d skipped (%s)", path, position, exc)
    return events, position
