"""Validation of recorded interactions: every bad field is named by its position."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from recsvc.core.queries import Limits, check_batch_size, check_id
from recsvc.core.state import EventType, Interaction
from recsvc.errors import InvalidArgument

MAX_EVENT_ID_BYTES = 128
# Timestamps are Unix milliseconds; this rejects seconds passed by mistake and far futures.
_EARLIEST_MS = 946_684_800_000  # 2000-01-01
_FUTURE_SLACK_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class RawInteraction:
    """An interaction as the caller sent it (``event_type`` None: an unknown enum value)."""

    user_id: str
    item_id: str
    event_type: EventType | None
    weight: float | None
    timestamp_ms: int
    event_id: str


def validate_interactions(
    raw: list[RawInteraction],
    limits: Limits,
    default_weights: dict[EventType, float],
    now_ms: int | None = None,
) -> list[Interaction]:
    """Check every interaction; resolve weights (the event type's default when unset) and
    timestamps (now when unset). The first bad field raises InvalidArgument, e.g.
    ``interactions[3].weight: must be a positive number``."""
    check_batch_size(len(raw), limits, "interactions")
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    valid: list[Interaction] = []
    for position, item in enumerate(raw):
        field = f"interactions[{position}]"
        check_id(item.user_id, f"{field}.user_id")
        check_id(item.item_id, f"{field}.item_id")
        check_id(item.event_id, f"{field}.event_id")
        if len(item.event_id.encode()) > MAX_EVENT_ID_BYTES:
            raise InvalidArgument(
                f"{field}.event_id", f"must be at most {MAX_EVENT_ID_BYTES} bytes"
            )
        if item.event_type is None:
            raise InvalidArgument(f"{field}.event_type", "unknown event type")
        weight = default_weights[item.event_type] if item.weight is None else item.weight
        if not (math.isfinite(weight) and weight > 0):
            raise InvalidArgument(f"{field}.weight", f"must be a positive number, got {weight}")
        timestamp = item.timestamp_ms or now_ms
        if not _EARLIEST_MS <= timestamp <= now_ms + _FUTURE_SLACK_MS:
            raise InvalidArgument(
                f"{field}.timestamp_ms", f"{timestamp} is not a plausible Unix time in milliseconds"
            )
        valid.append(
            Interaction(
                item.user_id, item.item_id, item.event_type, weight, timestamp, item.event_id
            )
        )
    return valid
