"""ImpressionLog: what experiment users were shown, appended to the event log off the call's path.

Each response to a user in an experiment (the holdout included) becomes one IMPRESSION event
per item, carrying the recommendation id, the item's position, the experiment and the arm:
``recsvc report`` divides the clicks attributed to them by them. The call only queues them (a
list append); a background task appends them to the event log in batches. Impressions are
measurement, not data anyone acknowledged: when the queue is full (the log is slow or down)
new ones are dropped and counted, and a batch the log refuses is counted as lost, never
retried. Interactions recorded by callers never pass through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from recsvc.core.queries import Recommendation
from recsvc.core.state import EventLog, EventType, Interaction
from recsvc.errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class ImpressionStats:
    """Counters the metrics layer reads."""

    logged: int = 0  # appended to the event log
    dropped: int = 0  # not queued: the queue was full
    failed: int = 0  # queued, but the event log refused or timed out their batch


class ImpressionLog:
    """Queues impressions and appends them to ``events`` in the background (:meth:`run`).

    Parameters
    ----------
    events : the namespace's event log
    weight : the weight recorded with an impression (events.impression; unused by training)
    max_pending : impressions queued at most; beyond, new ones are dropped and counted
    batch_events : impressions per append
    flush_seconds : longest an impression waits for its batch to fill
    append_timeout : longest one append may take before its batch counts as lost
    """

    def __init__(
        self,
        events: EventLog,
        weight: float = 1.0,
        max_pending: int = 100_000,
        batch_events: int = 1_000,
        flush_seconds: float = 0.5,
        append_timeout: float = 5.0,
    ) -> None:
        self.events = events
        self.weight = weight
        self.max_pending = max_pending
        self.batch_events = batch_events
        self.flush_seconds = flush_seconds
        self.append_timeout = append_timeout
        self.stats = ImpressionStats()
        self._pending: list[Interaction] = []
        self._full = asyncio.Event()
        self._failing = False

    def offer(self, user_id: str, result: Recommendation) -> None:
        """Queue the impressions of one tagged response (cheap: no I/O)."""
        items = result.items
        if not items:
            return
        if len(self._pending) + len(items) > self.max_pending:
            self.stats.dropped += len(items)
            return
        now_ms = int(time.time() * 1000)
        recommendation_id, experiment, arm = result.recommendation_id, result.experiment, result.arm
        weight, impression = self.weight, EventType.IMPRESSION
        self._pending.extend(
            Interaction(
                user_id,
                item.item_id,
                impression,
                weight,
                now_ms,
                f"imp:{recommendation_id}:{position}",
                recommendation_id,
                position,
                experiment,
                arm,
            )
            for position, item in enumerate(items)
        )
        if len(self._pending) >= self.batch_events:
            self._full.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Append queued impressions until cancelled (then :meth:`flush` what is left)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_seconds)
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        """Append everything queued now, a batch at a time."""
        while self._pending:
            batch = self._pending[: self.batch_events]
            del self._pending[: self.batch_events]
            await self._append(batch)

    async def _append(self, batch: list[Interaction]) -> None:
        try:
            async with asyncio.timeout(self.append_timeout):
                await self.events.append(batch)
        except (StoreUnavailable, TimeoutError) as exc:
            self.stats.failed += len(batch)
            if not self._failing:  # once per outage
                log.warning("impressions: %d not logged (%s); counting losses", len(batch), exc)
            self._failing = True
            return
        if self._failing:
            log.info("impressions: the event log takes them again")
        self._failing = False
        self.stats.logged += len(batch)
