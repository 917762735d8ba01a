"""In-process user state for the embedded mode: bounded (LRU), with TTLs, lost on restart."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from recsvc.core.state import Interaction, UserState

K = TypeVar("K")
V = TypeVar("V")
_History = tuple[dict[str, float], dict[str, int]]


class InMemoryUserStore:
    """UserStateStore in a dict: at most ``max_users`` users (least recently used go first)."""

    def __init__(
        self,
        history_max_items: int,
        history_ttl: float,
        vector_ttl: float,
        max_users: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.history_max_items = history_max_items
        self.history_ttl = history_ttl
        self.vector_ttl = vector_ttl
        self.max_users = max_users
        self._clock = clock
        # user -> (expires_at, ({item: summed weight}, {item: latest timestamp_ms}))
        self._history: OrderedDict[str, tuple[float, _History]] = OrderedDict()
        # (user, model version) -> (expires_at, vector)
        self._vectors: OrderedDict[tuple[str, str], tuple[float, npt.NDArray[np.float32]]] = (
            OrderedDict()
        )

    async def get_state(self, user_id: str, model_version: str) -> UserState:
        now = self._clock()
        history = self._live(self._history, user_id, now)
        vector = self._live(self._vectors, (user_id, model_version), now)
        return UserState(dict(history[0]) if history else {}, vector)

    async def get_states(self, user_ids: list[str], model_version: str) -> list[UserState]:
        return [await self.get_state(user_id, model_version) for user_id in user_ids]

    async def put_vectors(
        self, model_version: str, vectors: Mapping[str, npt.NDArray[np.float32]]
    ) -> None:
        expires_at = self._clock() + self.vector_ttl
        for user_id, vector in vectors.items():
            self._vectors[(user_id, model_version)] = (expires_at, vector.copy())
            self._vectors.move_to_end((user_id, model_version))
        self._bound(self._vectors)

    async def add_histories(
        self, interactions_by_user: Mapping[str, list[Interaction]]
    ) -> dict[str, dict[str, float]]:
        now = self._clock()
        histories = {
            user_id: self._add_history(user_id, interactions, now)
            for user_id, interactions in interactions_by_user.items()
        }
        self._bound(self._history)
        return histories

    def _add_history(
        self, user_id: str, interactions: list[Interaction], now: float
    ) -> dict[str, float]:
        weights, latest = self._live(self._history, user_id, now) or ({}, {})
        for event in interactions:
            item = event.item_id
            weights[item] = weights.get(item, 0.0) + event.weight
            latest[item] = max(latest.get(item, 0), event.timestamp_ms)
        if len(weights) > self.history_max_items:
            newest = sorted(latest, key=latest.__getitem__)[-self.history_max_items :]
            weights = {item: weights[item] for item in newest}
            latest = {item: latest[item] for item in newest}
        self._history[user_id] = (now + self.history_ttl, (weights, latest))
        self._history.move_to_end(user_id)
        return dict(weights)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def _live(
        self,
        table: OrderedDict[K, tuple[float, V]],
        key: K,
        now: float,
    ) -> V | None:
        entry = table.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= now:
            del table[key]
            return None
        table.move_to_end(key)
        return value

    def _bound(self, table: OrderedDict[K, V]) -> None:
        while len(table) > self.max_users:
            table.popitem(last=False)
