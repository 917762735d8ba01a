"""How interactions and vectors are written to storage (shared by the Redis and file backends)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.core.state import EventType, Interaction


def interaction_to_json(interaction: Interaction) -> str:
    record: dict[str, Any] = {
        "event_id": interaction.event_id,
        "user_id": interaction.user_id,
        "item_id": interaction.item_id,
        "event_type": interaction.event_type.value,
        "weight": interaction.weight,
        "timestamp_ms": interaction.timestamp_ms,
    }
    if _attributed(interaction):  # most events carry none: their records stay as they were
        record.update(zip(ATTRIBUTION_COLUMNS, _attribution(interaction), strict=True))
    return json.dumps(record, separators=(",", ":"))


def interaction_from_json(text: str | bytes) -> Interaction:
    data = json.loads(text)
    position = data.get("position")
    return Interaction(
        user_id=data["user_id"],
        item_id=data["item_id"],
        event_type=EventType(data["event_type"]),
        weight=float(data["weight"]),
        timestamp_ms=int(data["timestamp_ms"]),
        event_id=data["event_id"],
        recommendation_id=data.get("recommendation_id") or "",
        position=None if position is None else int(position),
        experiment=data.get("experiment") or "",
        arm=data.get("arm") or "",
    )


COLUMNS = ("event_id", "user_id", "item_id", "event_type", "weight", "timestamp_ms")
# Optional columns (null where unset): which response led to the event, the item's place in
# it, and for the impressions the server logs, the experiment and arm. Records and files
# written before they existed read as all null.
ATTRIBUTION_COLUMNS = ("recommendation_id", "position", "experiment", "arm")
ALL_COLUMNS = COLUMNS + ATTRIBUTION_COLUMNS
EventColumns = dict[str, list[Any]]


def _attributed(event: Interaction) -> bool:
    return bool(event.recommendation_id or event.experiment) or event.position is not None


def _attribution(event: Interaction) -> tuple[str | None, int | None, str | None, str | None]:
    return (
        event.recommendation_id or None,
        event.position,
        event.experiment or None,
        event.arm or None,
    )


def interactions_to_columns(
    interactions: Sequence[Interaction], attribution: bool = True
) -> EventColumns:
    """One list per field (ALL_COLUMNS, or COLUMNS without ``attribution``), as the file
    log and the Parquet store keep them."""
    columns: EventColumns = {
        "event_id": [e.event_id for e in interactions],
        "user_id": [e.user_id for e in interactions],
        "item_id": [e.item_id for e in interactions],
        "event_type": [e.event_type.value for e in interactions],
        "weight": [e.weight for e in interactions],
        "timestamp_ms": [e.timestamp_ms for e in interactions],
    }
    if attribution:
        values = [_attribution(e) for e in interactions]
        for index, name in enumerate(ATTRIBUTION_COLUMNS):
            columns[name] = [row[index] for row in values]
    return columns


def interactions_to_columns_json(interactions: Sequence[Interaction]) -> str:
    """Many interactions as one JSON object of columns: one ``json.dumps`` call for them all,
    about ten times cheaper than an object per interaction. The attribution columns are
    written only when some interaction has them."""
    attributed = any(_attributed(e) for e in interactions)
    return json.dumps(interactions_to_columns(interactions, attributed), separators=(",", ":"))


def columns_from_json(text: str | bytes) -> EventColumns:
    """The columns (ALL_COLUMNS; attribution null where absent) of a JSON text written by
    :func:`interactions_to_columns_json` or, one interaction, by :func:`interaction_to_json`.
    ValueError when it is neither."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        if not isinstance(data["event_id"], list):
            data = {name: [data[name]] for name in COLUMNS if name in data} | {
                name: [data[name]] for name in ATTRIBUTION_COLUMNS if name in data
            }
        columns = {name: data[name] for name in COLUMNS}
    except KeyError as exc:
        raise ValueError(f"missing {exc}") from exc
    size = len(columns["event_id"])
    for name in ATTRIBUTION_COLUMNS:
        columns[name] = data.get(name) or [None] * size
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError("columns of different lengths")
    return columns


VECTOR_DTYPES = {"float32": "<f4", "float16": "<f2"}


def vector_to_bytes(vector: npt.NDArray[np.float32], encoding: str = "float32") -> bytes:
    """Little-endian bytes; float16 halves the memory for a rounding error of ~5e-4."""
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPES[encoding]).tobytes()


def vector_from_bytes(data: bytes, encoding: str = "float32") -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype=VECTOR_DTYPES[encoding]).astype(np.float32)
