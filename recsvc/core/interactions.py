"""Validation of recorded interactions: every bad field is named by its position."""

from __future__ import annotations

import math
import sys
import time
from typing import NamedTuple

from recsvc.core.queries import MAX_ID_BYTES, Limits, check_batch_size, check_id
from recsvc.core.state import EventType, Interaction
from recsvc.errors import InvalidArgument

MAX_EVENT_ID_BYTES = 128
# Ours are 32 hex digits; a caller's own id (e.g. from a front end) may be longer.
MAX_RECOMMENDATION_ID_BYTES = 128
# Timestamps are Unix milliseconds; this rejects seconds passed by mistake and far futures.
_EARLIEST_MS = 946_684_800_000  # 2000-01-01
# How far in the future a timestamp may lie (clock skew); ForgetUser's tombstones cover it too.
FUTURE_SLACK_MS = 24 * 3600 * 1000


class RawInteraction(NamedTuple):
    """An interaction as the caller sent it (``event_type`` None: an unknown enum value).
    A named tuple for the reason :class:`Interaction` is one."""

    user_id: str
    item_id: str
    event_type: EventType | None
    weight: float | None
    timestamp_ms: int
    event_id: str
    recommendation_id: str = ""  # the response that led to the event (empty: none)
    position: int | None = None  # the item's place in that response, from 0


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
    latest_ms = now_ms + FUTURE_SLACK_MS
    for position, item in enumerate(raw):
        user_id, item_id, event_type, weight, timestamp, event_id, recommendation_id, shown_at = (
            item
        )
        if weight is None and event_type is not None:
            # None for a type without a default (FORGET, the service's own): refused below.
            weight = default_weights.get(event_type)
        timestamp = timestamp or now_ms
        # One test for the common case (ASCII ids: their length is their size in bytes);
        # the field-by-field checks run only to name what failed, or for non-ASCII ids.
        if not (
            0 < len(user_id) <= MAX_ID_BYTES
            and 0 < len(item_id) <= MAX_ID_BYTES
            and 0 < len(event_id) <= MAX_EVENT_ID_BYTES
            and user_id.isascii()
            and item_id.isascii()
            and event_id.isascii()
            and "\x00" not in user_id
            and "\x00" not in item_id
            and "\x00" not in event_id
            and event_type is not None
            and event_type is not EventType.FORGET
            and weight is not None
            and 0 < weight < math.inf
            and _EARLIEST_MS <= timestamp <= latest_ms
            and len(recommendation_id) <= MAX_RECOMMENDATION_ID_BYTES
            and recommendation_id.isascii()
            and "\x00" not in recommendation_id
            and (shown_at is None or shown_at >= 0)
        ):
            event_type, weight = _check_interaction(position, item, weight, timestamp, latest_ms)
        # Item ids interned: a user's history then holds the very string objects of the
        # model's id map, and fold-in's id -> row lookups hit them in cache.
        valid.append(
            Interaction(
                user_id,
                sys.intern(item_id),
                event_type,
                weight,
                timestamp,
                event_id,
                recommendation_id,
                shown_at,
            )
        )
    return valid


def _check_interaction(
    position: int, item: RawInteraction, weight: float | None, timestamp: int, latest_ms: int
) -> tuple[EventType, float]:
    """Raise InvalidArgument naming the first bad field of ``item``; its event type and
    weight when it is valid after all (a non-ASCII id within its size in bytes)."""
    field = f"interactions[{position}]"
    check_id(item.user_id, f"{field}.user_id")
    check_id(item.item_id, f"{field}.item_id")
    check_id(item.event_id, f"{field}.event_id")
    if len(item.event_id.encode()) > MAX_EVENT_ID_BYTES:
        raise InvalidArgument(f"{field}.event_id", f"must be at most {MAX_EVENT_ID_BYTES} bytes")
    if item.event_type is None or item.event_type is EventType.FORGET or weight is None:
        raise InvalidArgument(f"{field}.event_type", "unknown event type")
    if not (math.isfinite(weight) and weight > 0):
        raise InvalidArgument(f"{field}.weight", f"must be a positive number, got {weight}")
    if not _EARLIEST_MS <= timestamp <= latest_ms:
        raise InvalidArgument(
            f"{field}.timestamp_ms", f"{timestamp} is not a plausible Unix time in milliseconds"
        )
    if item.recommendation_id:
        check_id(item.recommendation_id, f"{field}.recommendation_id")
        if len(item.recommendation_id.encode()) > MAX_RECOMMENDATION_ID_BYTES:
            raise InvalidArgument(
                f"{field}.recommendation_id",
                f"must be at most {MAX_RECOMMENDATION_ID_BYTES} bytes",
            )
    if item.position is not None and item.position < 0:
        raise InvalidArgument(f"{field}.position", f"must be 0 or more, got {item.position}")
    return item.event_type, weight
