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


def cached_store(url: str, cache: StateCache) -> RedisUserStore:
    """A Redis user store with ``cache``, tracked over its own connection."""
    return RedisUserStore(
        connect(url, timeout=1.0, connect_timeout=1.0),
        PREFIX,
        history_max_items=10,
        history_ttl=600,
        vector_ttl=600,
        cache=cache,
        tracking_client=partial(tracking_client, url, 1.0),
    )


@pytest.fixture
async def cached(redis_url: str) -> AsyncIterator[tuple[RedisUserStore, StateCache]]:
    cache = StateCache(user_key_prefix(PREFIX), max_users=3)
    store = cached_store(redis_url, cache)
    await store.get_states(["warm-up"], "v1")  # starts the tracking connection
    await eventually(lambda: cache.live)
    yield store, cache
    await store.close()


async def test_a_read_user_is_held_and_answered_without_redis(
    cached: tuple[RedisUserStore, StateCache],
) -> None:
    store, cache = cached
    before = cache.invalidations
    await store.add_histories({"u1": [view("u1", "i1", "e1")]})
    await store.put_vectors("v1", {"u1": np.ones(4, dtype=np.float32)})
    assert store.local_state("u1", "v1") is None  # not read since the writes
    await eventually(lambda: cache.invalidations > before)  # a later one would drop it again
    await asyncio.sleep(0.05)
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
    store, cache = cached
    before = cache.invalidations
    await store.add_histories({"u1": [view("u1", "i1", "e1")]})
    await eventually(lambda: cache.invalidations > before)
    await asyncio.sleep(0.05)
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
    before = cache.invalidations
    await store.add_histories({"b": [view("b", "i1", "e1")]})
    await eventually(lambda: cache.invalidations > before)
    await asyncio.sleep(0.05)
    await store.get_states(["b"], "v1")
    assert store.local_state("b", "v1") is not None
    with redis.Redis.from_url(redis_url) as other:
        other.pexpire(user_key(PREFIX, "b", "h"), 1)
    await asyncio.sleep(0.01)
    with redis.Redis.from_url(redis_url) as other:
        assert not other.exists(user_key(PREFIX, "b", "h"))  # a read expires it at once
    await eventually(lambda: store.local_state("b", "v1") is None)
    assert len(cache) > 0
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


async def test_a_stray_message_on_the_channel_drops_everything_and_tracking_goes_on(
    cached: tuple[RedisUserStore, StateCache], redis_url: str
) -> None:
    store, cache = cached
    await store.get_states(["u1"], "v1")
    assert store.local_state("u1", "v1") is not None
    with redis.Redis.from_url(redis_url) as other:
        other.publish("__redis__:invalidate", "not a list of keys")
    await eventually(lambda: len(cache) == 0)
    assert cache.live
    await store.get_states(["u1"], "v1")
    with redis.Redis.from_url(redis_url) as other:
        other.hset(user_key(PREFIX, "u1", "h"), "i1", 1)
    await eventually(lambda: store.local_state("u1", "v1") is None)  # still tracked


async def test_refused_tracking_keeps_the_cache_off(redis_url: str) -> None:
    """A Redis whose ACL refuses CLIENT TRACKING: every read goes to Redis, nothing breaks."""
    with redis.Redis.from_url(redis_url) as admin:
        admin.acl_setuser(
            "notrack", enabled=True, nopass=True, keys=["*"], channels=["*"],
            commands=["+@all", "-client|tracking"],
        )  # fmt: skip
    url = redis_url.replace("redis://", "redis://notrack@", 1)
    cache = StateCache(user_key_prefix(PREFIX), max_users=10)
    store = cached_store(url, cache)
    try:
        await store.add_histories({"u1": [view("u1", "i1", "e1")]})
        for _ in range(3):
            (state,) = await store.get_states(["u1"], "v1")
            assert state.history == {"i1": 1.0}
            await asyncio.sleep(0.2)
        assert not cache.live and store.local_state("u1", "v1") is None
    finally:
        await store.close()
        with redis.Redis.from_url(redis_url) as admin:
            admin.acl_deluser("notrack")


def test_entries_expire_after_the_maximum_age() -> None:
    now = [0.0]
    cache = StateCache(user_key_prefix("p"), 10, max_age=30.0, clock=lambda: now[0])
    cache.start()
    cache.keep([("u", (None, object()))], cache.epoch)
    now[0] = 29.0
    assert cache.get("u") is not None
    now[0] = 31.0
    assert cache.get("u") is None and len(cache) == 0


async def test_after_a_failed_read_nothing_is_answered_from_the_cache_until_one_succeeds(
    cached: tuple[RedisUserStore, StateCache], redis_url: str
) -> None:
    """The service's view of the store's health comes from reads: a batch of held users
    must not report a healthy store while reads of Redis time out."""
    store, _ = cached
    await store.get_states(["u1"], "v1")
    assert store.local_state("u1", "v1") is not None
    with redis.Redis.from_url(redis_url) as admin:
        admin.client_pause(500, all=False)  # scripts count as writes: reads stall
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await store.get_states(["u2"], "v1")
    assert store.local_state("u1", "v1") is None
    await asyncio.sleep(0.5)
    await store.get_states(["u2"], "v1")  # succeeds: the cache answers again
    assert store.local_state("u1", "v1") is not None
