"""In-process user state for the embedded mode: bounded (LRU), with TTLs; emptied by a restart
and refilled from the event log at start-up (recsvc.backends.replay_event_log)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from recsvc.core.state import (
    Interaction,
    UserHistory,
    UserState,
    history_field,
    split_history,
)

K = TypeVar("K")
V = TypeVar("V")
_History = tuple[dict[str, float], dict[str, int], int]  # weights, latest times, seq


class InMemoryUserStore:
    """UserStateStore in a dict: at most ``max_users`` users (least recently used go first)."""

    def __init__(
        self,
        history_max_items: int,
        history_ttl: float,
        vector_ttl: float,
        max_users: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        forgotten_ttl: float = 30 * 86400,
    ) -> None:
        self.history_max_items = history_max_items
        self.history_ttl = history_ttl
        self.vector_ttl = vector_ttl
        self.forgotten_ttl = forgotten_ttl
        self.max_users = max_users
        self._clock = clock
        # user -> (expires_at, ({item: summed weight}, {item: latest timestamp_ms}, seq))
        self._history: OrderedDict[str, tuple[float, _History]] = OrderedDict()
        self._last_seq = 0
        # user -> (expires_at, (model version, vector)): one vector per user, as in Redis
        self._vectors: OrderedDict[str, tuple[float, tuple[str, npt.NDArray[np.float32]]]] = (
            OrderedDict()
        )
        # user -> (expires_at, when forgotten in Unix ms): ForgetUser's tombstones
        self._forgotten: OrderedDict[str, tuple[float, int]] = OrderedDict()

    async def get_state(self, user_id: str, model_version: str) -> UserState:
        now = self._clock()
        history = self._live(self._history, user_id, now)
        stored = self._live(self._vectors, user_id, now)
        vector = stored[1] if stored is not None and stored[0] == model_version else None
        forgotten = bool(self._forgotten) and self._live(self._forgotten, user_id, now) is not None
        if history is None:
            return UserState({}, vector, forgotten=forgotten)
        items, dislikes = split_history(history[0].items())
        return UserState(items, vector, history[2], dislikes, forgotten)

    async def get_states(self, user_ids: list[str], model_version: str) -> list[UserState]:
        return [await self.get_state(user_id, model_version) for user_id in user_ids]

    async def put_vectors(
        self,
        model_version: str,
        vectors: Mapping[str, npt.NDArray[np.float32]],
        history_seqs: Mapping[str, int] | None = None,
    ) -> None:
        now = self._clock()
        expires_at = now + self.vector_ttl
        for user_id, vector in vectors.items():
            if history_seqs is not None and user_id in history_seqs:
                history = self._live(self._history, user_id, now)
                if history is None or history[2] != history_seqs[user_id]:
                    continue  # folded in from a history that has changed since
            self._vectors[user_id] = (expires_at, (model_version, vector.copy()))
            self._vectors.move_to_end(user_id)
        self._bound(self._vectors)

    async def add_histories(
        self, interactions_by_user: Mapping[str, list[Interaction]]
    ) -> dict[str, UserHistory]:
        now = self._clock()
        histories = {
            user_id: self._add_history(user_id, interactions, now)
            for user_id, interactions in interactions_by_user.items()
        }
        self._bound(self._history)
        return histories

    async def forget(self, user_id: str) -> bool:
        now = self._clock()
        held = self._live(self._history, user_id, now) is not None
        held |= self._live(self._vectors, user_id, now) is not None
        self._history.pop(user_id, None)
        self._vectors.pop(user_id, None)
        self._forgotten[user_id] = (now + self.forgotten_ttl, int(time.time() * 1000))
        self._forgotten.move_to_end(user_id)
        self._bound(self._forgotten)
        return held

    def _add_history(
        self, user_id: str, interactions: list[Interaction], now: float
    ) -> UserHistory:
        weights, latest, _ = self._live(self._history, user_id, now) or ({}, {}, 0)
        for event in interactions:
            item = history_field(event)
            weights[item] = weights.get(item, 0.0) + event.weight
            latest[item] = max(latest.get(item, 0), event.timestamp_ms)
        if len(weights) > self.history_max_items:
            newest = sorted(latest, key=latest.__getitem__)[-self.history_max_items :]
            weights = {item: weights[item] for item in newest}
            latest = {item: latest[item] for item in newest}
        # One counter for the whole store, so that a user dropped and seen again never
        # reuses a sequence number an older vector could carry.
        self._last_seq += 1
        self._history[user_id] = (now + self.history_ttl, (weights, latest, self._last_seq))
        self._history.move_to_end(user_id)
        items, dislikes = split_history(weights.items())
        forgotten = bool(self._forgotten) and self._live(self._forgotten, user_id, now) is not None
        return UserHistory(items, self._last_seq, dislikes, forgotten)

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
