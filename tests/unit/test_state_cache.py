"""The user-state cache against a real Redis: what it holds, and that every change made
anywhere (another client, this process, an expiry, a flush) takes the user out of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import numpy as np
import pytest
import redis

from recsvc.core.state import EventType, Interaction
from recsvc.store.clients import tracking_client
from recsvc.store.redis_backend import RedisUserStore, connect, user_key, user_key_prefix
from recsvc.store.state_cache import StateCache

pytestmark = pytest.mark.redis

PREFIX = "sc"


def view(user: str, item: str, event_id: str) -> Interaction:
    return Interaction(user, item, EventType.VIEW, 1.0, 1, event_id)


async def eventually(check, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``check()`` is true (the invalidation travels over another connection)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def cached(redis_url: str) -> AsyncIterator[tuple[RedisUserStore, StateCache]]:
    cache = StateCache(user_key_prefix(PREFIX), max_users=3)
    store = RedisUserStore(
        connect(redis_url, timeout=1.0, connect_timeout=1.0),
        PREFIX,
        history_max_items=10,
        history_ttl=600,
        vector_ttl=600,
        cache=cache,
        tracking_client=partial(tracking_client, redis_url, 1.0),
    )
    await store.get_states(["warm-up"], "v1")  # starts the tracking connection
    await eventually(lambda: cache.live)
    yield store, cache
    await store.close()


async def test_a_read_user_is_held_and_answered_without_redis(
    cached: tuple[RedisUserStore, StateCache],
) -> None:
    store, _ = cached
    await store.add_histories({"u1": [view("u1", "i1", "e1")]})
    await store.put_vectors("v1", {"u1": np.ones(4, dtype=np.float32)})
    assert store.local_state("u1", "v1") is None  # not read since the writes
    (state,) = await store.get_states(["u1"], "v1")
    held = store.local_state("u1", "v1")
    assert held is not None and held.history == state.history == {"i1": 1.0}
    assert held.vector is not None and held.vector.tolist() == [1.0] * 4
    # Another model version: the same held bytes, no vector of that version.
    other = store.local_state("u1", "v2")
    assert other is not None and other.vector is None and other.history == {"i1": 1.0}


async def test_another_clients_write_takes_the_user_out(
    cached: tuple[RedisUserStore, StateCache], redis_url: str
) -> None:
    store, _ = cached
    await store.add_histories({"u1": [view("u1", "i1", "e1")]})
    await store.get_states(["u1", "u2"], "v1")
    assert store.local_state("u1", "v1") is not None
    assert store.local_state("u2", "v1") is not None  # an unknown user is held as empty
    with redis.Redis.from_url(redis_url) as other:  # another server's RecordInteractions
        other.hincrbyfloat(user_key(PREFIX, "u1", "h"), "i2", 1.0)
        other.hincrbyfloat(user_key(PREFIX, "u2", "h"), "i3", 1.0)
    await eventually(lambda: store.local_state("u1", "v1") is None)
    await eventually(lambda: store.local_state("u2", "v1") is None)
    u1, u2 = await store.get_states(["u1", "u2"], "v1")
    assert u1.history == {"i1": 1.0, "i2": 1.0} and u2.history == {"i3": 1.0}


async def test_this_process_sees_its_own_write_at_once(
    cached: tuple[RedisUserStore, StateCache],
) -> None:
    store, _ = cached
    await store.get_states(["u1"], "v1")
    assert store.local_state("u1", "v1") is not None
    await store.add_histories({"u1": [view("u1", "i9", "e9")]})
    # No waiting for Redis's invalidation: the write took the user out itself.
    assert store.local_state("u1", "v1") is None
    (state,) = await store.get_states(["u1"], "v1")
    assert state.history == {"i9": 1.0}
    assert await store.forget("u1")
    assert store.local_state("u1", "v1") is None
    (state,) = await store.get_states(["u1"], "v1")
    assert state.forgotten and state.history == {}


async def test_a_read_that_races_a_change_is_not_held(
    cached: tuple[RedisUserStore, StateCache],
) -> None:
    store, cache = cached
    epoch = cache.epoch
    cache.invalidate([user_key(PREFIX, "u1", "h").encode()])  # arrives while a read is out
    cache.keep([("u1", (None, object()))], epoch)
    assert store.local_state("u1", "v1") is None


async def test_expiry_flush_and_the_size_limit(
    cached: tuple[RedisUserStore, StateCache], redis_url: str
) -> None:
    store, cache = cached
    await store.get_states(["a", "b", "c", "d"], "v1")  # holds 3 at most: "a" went first
    assert [store.local_state(u, "v1") is not None for u in "abcd"] == [False, True, True, True]
    await store.add_histories({"b": [view("b", "i1", "e1")]})
    await store.get_states(["b"], "v1")
    with redis.Redis.from_url(redis_url) as other:
        other.pexpire(user_key(PREFIX, "b", "h"), 1)
    await eventually(lambda: store.local_state("b", "v1") is None)
    with redis.Redis.from_url(redis_url) as other:
        other.flushdb()
    await eventually(lambda: len(cache) == 0)


async def test_nothing_is_held_while_tracking_is_down(
    cached: tuple[RedisUserStore, StateCache], redis_url: str
) -> None:
    store, cache = cached
    await store.get_states(["u1"], "v1")
    with redis.Redis.from_url(redis_url) as other:
        other.client_kill_filter(_type="pubsub")  # the tracking connection
    await eventually(lambda: not cache.live)
    assert store.local_state("u1", "v1") is None
    await eventually(lambda: cache.live)  # it reconnects (after ~1 s)
    await store.get_states(["u1"], "v1")
    assert store.local_state("u1", "v1") is not None


def test_keys_map_to_their_users() -> None:
    cache = StateCache(user_key_prefix("p"), 10)
    assert cache.user_of(user_key("p", "u:1}x", "v16").encode()) == "u:1}x"
    assert cache.user_of(b"p:{ev}:stream") is None
    assert cache.user_of(b"q:{u:a}:h") is None
