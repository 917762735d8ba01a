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


def vector_to_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)
