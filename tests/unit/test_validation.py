"""validate_interactions: the fast path for ordinary events and the exact checks behind it."""

from __future__ import annotations

import pytest

from recsvc.config import ServingSettings
from recsvc.core.interactions import RawInteraction, validate_interactions
from recsvc.core.model import IdMap
from recsvc.core.queries import Limits
from recsvc.core.state import EventType
from recsvc.errors import InvalidArgument

NOW_MS = 1_764_000_000_000
WEIGHTS = dict.fromkeys(EventType, 1.0) | {EventType.PURCHASE: 5.0}


def raw(**fields: object) -> RawInteraction:
    base: dict[str, object] = {
        "user_id": "u1",
        "item_id": "i1",
        "event_type": EventType.VIEW,
        "weight": None,
        "timestamp_ms": 0,
        "event_id": "e1",
    }
    return RawInteraction(**(base | fields))  # type: ignore[arg-type]


def validate(*events: RawInteraction) -> list:
    return validate_interactions(
        list(events), Limits.from_settings(ServingSettings()), WEIGHTS, now_ms=NOW_MS
    )


def test_defaults_resolved_and_item_ids_shared_with_the_model() -> None:
    ids = IdMap([f"item-{n}" for n in range(3)])
    sent = "".join(["item-", "2"])  # an equal string, not the id map's object
    (event,) = validate(raw(item_id=sent, event_type=EventType.PURCHASE))
    assert (event.weight, event.timestamp_ms) == (5.0, NOW_MS)
    assert event.item_id is ids.ids[2]


def test_non_ascii_ids_are_measured_in_bytes() -> None:
    # 100 two-byte characters: 200 bytes, within the 256-byte id limit.
    (event,) = validate(raw(user_id="é" * 100, event_id="ü" * 64))
    assert event.user_id == "é" * 100
    # 130 characters, 260 bytes: over it, though shorter than 256 characters.
    with pytest.raises(InvalidArgument, match=r"interactions\[1\]\.user_id"):
        validate(raw(), raw(user_id="é" * 130))
    with pytest.raises(InvalidArgument, match=r"interactions\[0\]\.event_id"):
        validate(raw(event_id="ü" * 65))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"item_id": "x" * 257}, "item_id"),
        ({"event_id": "e" * 129}, "event_id"),
        ({"event_type": None}, "event_type"),
        ({"weight": 0.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"weight": float("inf")}, "weight"),
        ({"timestamp_ms": 1_700_000_000}, "timestamp_ms"),  # seconds, not milliseconds
        ({"timestamp_ms": NOW_MS + 2 * 86_400_000}, "timestamp_ms"),
        # A NUL would end the id in C strings (logs, files, tools): ids could merge.
        ({"user_id": "u\x00x"}, "user_id"),
        ({"item_id": "i\x00"}, "item_id"),
        ({"event_id": "\x00e"}, "event_id"),
        # Two bad fields: the first in field order is named.
        ({"user_id": "", "event_type": None}, "user_id"),
    ],
)
def test_each_bad_field_is_named(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"interactions\[2\]\.{field}"):
        validate(raw(), raw(), raw(**fields))
