"""How interactions and vectors are written to storage (shared by the Redis and file backends)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.core.state import EventType, Interaction


def interaction_to_json(interaction: Interaction) -> str:
    return json.dumps(
        {
            "event_id": interaction.event_id,
            "user_id": interaction.user_id,
            "item_id": interaction.item_id,
            "event_type": interaction.event_type.value,
            "weight": interaction.weight,
            "timestamp_ms": interaction.timestamp_ms,
        },
        separators=(",", ":"),
    )


def interaction_from_json(text: str | bytes) -> Interaction:
    data = json.loads(text)
    return Interaction(
        user_id=data["user_id"],
        item_id=data["item_id"],
        event_type=EventType(data["event_type"]),
        weight=float(data["weight"]),
        timestamp_ms=int(data["timestamp_ms"]),
        event_id=data["event_id"],
    )


COLUMNS = ("event_id", "user_id", "item_id", "event_type", "weight", "timestamp_ms")
EventColumns = dict[str, list[Any]]


def interactions_to_columns(interactions: Sequence[Interaction]) -> EventColumns:
    """One list per field (COLUMNS), as the file log and the Parquet store keep them."""
    return {
        "event_id": [e.event_id for e in interactions],
        "user_id": [e.user_id for e in interactions],
        "item_id": [e.item_id for e in interactions],
        "event_type": [e.event_type.value for e in interactions],
        "weight": [e.weight for e in interactions],
        "timestamp_ms": [e.timestamp_ms for e in interactions],
    }


def interactions_to_columns_json(interactions: Sequence[Interaction]) -> str:
    """Many interactions as one JSON object of columns: one ``json.dumps`` call for them all,
    about ten times cheaper than an object per interaction."""
    return json.dumps(interactions_to_columns(interactions), separators=(",", ":"))


def columns_from_json(text: str | bytes) -> EventColumns:
    """The columns of a JSON text written by :func:`interactions_to_columns_json` or, one
    interaction, by :func:`interaction_to_json`. ValueError when it is neither."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        if not isinstance(data["event_id"], list):
            data = {name: [data[name]] for name in COLUMNS}
        columns = {name: data[name] for name in COLUMNS}
    except KeyError as exc:
        raise ValueError(f"missing {exc}") from exc
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
