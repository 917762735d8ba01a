"""How interactions and vectors are written to storage (shared by the Redis and file backends)."""

from __future__ import annotations

import json

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


VECTOR_DTYPES = {"float32": "<f4", "float16": "<f2"}


def vector_to_bytes(vector: npt.NDArray[np.float32], encoding: str = "float32") -> bytes:
    """Little-endian bytes; float16 halves the memory for a rounding error of ~5e-4."""
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPES[encoding]).tobytes()


def vector_from_bytes(data: bytes, encoding: str = "float32") -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype=VECTOR_DTYPES[encoding]).astype(np.float32)
