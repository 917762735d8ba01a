"""Two RecordInteractions for one user at once, against a real Redis: the vector that stays is
the one folded in from the later (fuller) history, whichever write reaches Redis last."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest

from recsvc.config import EventWeights, StoreSettings
from recsvc.core.holder import RecommenderHolder
from recsvc.core.interactions import RawInteraction
from recsvc.core.model import Model
from recsvc.core.state import EventType
from recsvc.server import build_recommender, build_service
from recsvc.store.redis_backend import RedisEventLog, RedisUserStore, connect
from tests.conftest import TEST_SETTINGS

pytestmark = pytest.mark.redis


class SlowFirstWrite(RedisUserStore):
    """The real Redis store, whose first vector write is held back until a later call's write
    has gone through: the interleaving that stored a stale vector before sequence numbers."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.later_write_done = asyncio.Event()
        self.writes = 0

    async def put_vectors(
        self,
        model_version: str,
        vectors: Mapping[str, npt.NDArray[np.float32]],
        history_seqs: Mapping[str, int] | None = None,
    ) -> None:
        self.writes += 1
        if self.writes == 1:
            await self.later_write_done.wait()
        await super().put_vectors(model_version, vectors, history_seqs)
        if self.writes > 1:
            self.later_write_done.set()


async def test_the_later_history_wins_a_race_of_two_updates(model: Model, redis_url: str) -> None:
    recommender = build_recommender(TEST_SETTINGS, model)
    user, (first_item, second_item) = "racer", model.items.ids[:2]
    client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
    store = SlowFirstWrite(client, "race", 100, 600, 600)
    settings = TEST_SETTINGS.model_copy(
        update={
            "store": StoreSettings(timeout_seconds=5.0),
            "events": EventWeights(purchase=1.0),
        }
    )
    service = build_service(
        settings, RecommenderHolder(recommender), (store, RedisEventLog(client, "race", 600))
    )

    def call(item: str, n: int) -> list[RawInteraction]:
        now_ms = int(time.time() * 1000)
        return [RawInteraction(user, item, EventType.PURCHASE, None, now_ms + n, f"e{n}")]

    first = asyncio.create_task(service.record(call(first_item, 1), 10.0))
    await asyncio.sleep(0.05)  # the first call is now waiting to write its vector
    await service.record(call(second_item, 2), 10.0)
    await first
    stored = (await store.get_state(user, recommender.version)).vector
    full = recommender.fold_in_user(user, {first_item: 1.0, second_item: 1.0})
    await client.aclose()
    assert store.writes == 2 and full is not None
    assert stored is not None
    # Stored as float16 (the default encoding): equal to its rounding.
    np.testing.assert_allclose(stored, full.astype(np.float16), rtol=1e-3)
