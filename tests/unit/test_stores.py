"""User-state stores and event logs: the in-process and file ones, and Redis against a real
server. What every backend must do runs against each of them (the ``make_store`` and
``event_log`` fixtures); what only one backend has (TTLs, keys, torn files) is tested on it."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import redis

from recsvc.core.state import EventLog, EventType, Interaction, StoredItem, UserStateStore
from recsvc.store.clients import tracking_client
from recsvc.store.codec import interactions_to_columns
from recsvc.store.file_log import FileEventLog, read_columns_from
from recsvc.store.item_log import FileItemLog, RedisItemLog
from recsvc.store.memory import InMemoryUserStore
from recsvc.store.redis_backend import (
    RedisEventLog,
    RedisUserStore,
    connect,
    user_key_prefix,
    vector_key,
)
from recsvc.store.state_cache import StateCache

# (history_max_items, history_ttl, vector_ttl) -> a new, empty store of the backend under test.
MakeStore = Callable[[int, int, int], UserStateStore]


def interaction(
    user: str, item: str, event_id: str, weight: float = 1.0, ts: int = 1
) -> Interaction:
    return Interaction(user, item, EventType.VIEW, weight, ts, event_id)


# A Redis Cluster (3 masters, 3 replicas; started once per session, ~3 s).
ON_CLUSTER = pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.slow])
URL_FIXTURES = {"redis": "redis_url", "cluster": "redis_cluster_url"}


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cached", marks=pytest.mark.redis),
        ON_CLUSTER,
    ]
)
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """Makes user-state stores of one backend: in-process, Redis (an empty database), Redis
    with the state cache (its tracking starts with a store's first read, so later reads of a
    test go through it), or a Redis Cluster."""
    url: str | None = None
    if request.param in URL_FIXTURES:
        url = request.getfixturevalue(URL_FIXTURES[request.param])
    elif request.param == "redis-cached":
        url = request.getfixturevalue("redis_url")
    made: list[UserStateStore] = []

    def make(history_max_items: int, history_ttl: int, vector_ttl: int) -> UserStateStore:
        store: UserStateStore
        if url is None:
            store = InMemoryUserStore(history_max_items, history_ttl, vector_ttl)
        else:
            client = connect(url, timeout=1.0, connect_timeout=1.0)
            cached = request.param == "redis-cached"
            store = RedisUserStore(
                client,
                "rs",
                history_max_items,
                history_ttl,
                vector_ttl,
                cache=StateCache(user_key_prefix("rs"), 1000) if cached else None,
                tracking_client=partial(tracking_client, url, 1.0) if cached else None,
            )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture(
    params=[
        "file",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-partitioned", marks=pytest.mark.redis),
        ON_CLUSTER,
    ]
)
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    """An empty event log of one backend: a file, a Redis Stream (an empty database), four
    partition streams, or four partition streams on a Redis Cluster."""
    log: EventLog
    if request.param == "file":
        log = FileEventLog(tmp_path / "events.jsonl")
    else:
        url = request.getfixturevalue(URL_FIXTURES.get(request.param, "redis_url"))
        client = connect(url, timeout=1.0, connect_timeout=1.0)
        partitions = 1 if request.param == "redis" else 4
        log = RedisEventLog(client, "rs", dedupe_ttl=600, partitions=partitions)
    yield log
    await log.close()


# ------------------------------------------------------------------ every user-state store


async def test_store_reads_many_users_in_order_in_one_call(make_store: MakeStore) -> None:
    store = make_store(10, 600, 300)
    vectors = {"a": np.full(8, 1.0, np.float32), "c": np.full(8, 3.0, np.float32)}
    await store.put_vectors("v0", {"c": np.full(8, 9.0, np.float32)})  # another version's
    await store.put_vectors("v1", vectors)
    histories = await store.add_histories(
        {
            "b": [interaction("b", "i1", "e1", weight=2.0)],
            "c": [interaction("c", "i2", "e2"), interaction("c", "i2", "e3", ts=2)],
        }
    )
    assert {u: h.items for u, h in histories.items()} == {"b": {"i1": 2.0}, "c": {"i2": 2.0}}
    assert await store.add_histories({}) == {}
    states = await store.get_states(["c", "b", "a", "nobody"], "v1")
    assert [s.vector[0] if s.vector is not None else None for s in states] == [
        3.0,
        None,
        1.0,
        None,
    ]
    assert [s.history for s in states] == [{"i2": 2.0}, {"i1": 2.0}, {}, {}]


async def test_one_vector_per_user_whatever_the_model_version(make_store: MakeStore) -> None:
    """Retraining leaves no vectors behind: a user's vector for a new version replaces the
    previous one, which then reads as missing (folded in anew), not as the new version's."""
    store = make_store(10, 600, 300)
    await store.put_vectors("v1", {"a": np.full(8, 1.0, np.float32)})
    await store.put_vectors("v2", {"a": np.full(8, 2.0, np.float32)})
    assert (await store.get_state("a", "v1")).vector is None
    state = await store.get_state("a", "v2")
    assert state.vector is not None and state.vector[0] == 2.0


async def test_store_updates_many_users_each_in_order(make_store: MakeStore) -> None:
    """More users than one Redis script call takes: every user gets their own history and
    vector back, in order, whatever chunk they fell in."""
    from recsvc.store.redis_backend import USERS_PER_SCRIPT

    users = [f"user{n}" for n in range(2 * USERS_PER_SCRIPT + 7)]
    store = make_store(2, 600, 300)
    by_user = {
        user: [interaction(user, f"i{n}-{k}", f"{user}-{k}", ts=k) for k in range(n % 4)]
        for n, user in enumerate(users)
    }
    histories = await store.add_histories(by_user)
    assert list(histories) == users
    for n, user in enumerate(users):
        expected = {f"i{n}-{k}": 1.0 for k in range(n % 4)}
        if len(expected) > 2:  # only the newest two items are kept
            del expected[f"i{n}-0"]
        assert histories[user].items == expected
    await store.put_vectors("v1", {u: np.full(4, n, np.float32) for n, u in enumerate(users)})
    states = await store.get_states(users, "v1")
    assert [int(s.vector[0]) if s.vector is not None else -1 for s in states] == list(
        range(len(users))
    )


async def test_store_keeps_the_vector_of_the_latest_history(make_store: MakeStore) -> None:
    """Two updates of one user race: the first one's vector, stored last, must not replace the
    second's; a lazily folded vector from a read history is dropped once the history moved."""
    store = make_store(10, 60, 60)
    first = (await store.add_histories({"u": [interaction("u", "a", "e1")]}))["u"]
    second = (await store.add_histories({"u": [interaction("u", "b", "e2")]}))["u"]
    assert second.seq > first.seq and second.items == {"a": 1.0, "b": 1.0}
    await store.put_vectors("v1", {"u": np.full(4, 2.0, np.float32)}, {"u": second.seq})
    await store.put_vectors("v1", {"u": np.full(4, 1.0, np.float32)}, {"u": first.seq})
    state = await store.get_state("u", "v1")
    assert state.vector is not None and state.vector[0] == 2.0
    assert state.history_seq == second.seq
    # Read at this seq, folded in, then another update lands before the store.
    await store.add_histories({"u": [interaction("u", "c", "e3")]})
    await store.put_vectors("v2", {"u": np.full(4, 5.0, np.float32)}, {"u": state.history_seq})
    assert (await store.get_state("u", "v2")).vector is None
    # Without a sequence number (no history involved) the vector is stored as given.
    await store.put_vectors("v2", {"w": np.full(4, 7.0, np.float32)})
    stored = (await store.get_state("w", "v2")).vector
    assert stored is not None and stored[0] == 7.0
    # A user whose history is gone: a vector from it is not stored.
    await store.put_vectors("v1", {"x": np.ones(4, np.float32)}, {"x": second.seq})
    assert (await store.get_state("x", "v1")).vector is None


async def test_forget_deletes_vector_and_history_and_leaves_a_tombstone(
    make_store: MakeStore,
) -> None:
    """ForgetUser's store half: the user's vector and history go, reads say ``forgotten``
    (so serving ignores the model's factors of the user), a new history after it keeps the
    mark, and a vector folded in from the old history is never stored."""
    store = make_store(10, 600, 300)
    old = (await store.add_histories({"u": [interaction("u", "a", "e1")]}))["u"]
    await store.put_vectors("v1", {"u": np.ones(4, np.float32)}, {"u": old.seq})
    await store.add_histories({"w": [interaction("w", "a", "e2")]})
    assert await store.forget("u") is True
    state = await store.get_state("u", "v1")
    assert state.forgotten and state.vector is None and state.history == {}
    assert not (await store.get_state("w", "v1")).forgotten  # only that user
    await store.put_vectors("v1", {"u": np.ones(4, np.float32)}, {"u": old.seq})  # in flight
    assert (await store.get_state("u", "v1")).vector is None
    again = (await store.add_histories({"u": [interaction("u", "b", "e3")]}))["u"]
    assert again.forgotten and again.items == {"b": 1.0}
    assert (await store.get_state("u", "v1")).forgotten
    # Idempotent: forgetting again finds the new history only, and keeps the mark.
    assert await store.forget("u") is True
    assert await store.forget("u") is False
    assert (await store.get_state("u", "v1")).forgotten


async def test_dislikes_are_kept_apart_from_the_positive_history(make_store: MakeStore) -> None:
    """A dislike is recorded in the history as a dislike, not a positive: the item leaves the
    positives (zero confidence) and is reported among the user's dislikes."""
    store = make_store(10, 600, 300)
    dislike = Interaction("u", "a", EventType.DISLIKE, 1.0, 3, "e3")
    history = (
        await store.add_histories(
            {"u": [interaction("u", "a", "e1"), interaction("u", "b", "e2"), dislike]}
        )
    )["u"]
    assert history.items == {"b": 1.0} and history.dislikes == frozenset({"a"})
    state = await store.get_state("u", "v1")
    assert state.history == {"b": 1.0} and state.dislikes == frozenset({"a"})
    assert not state.forgotten


# ------------------------------------------------------------------ the in-process store


async def test_memory_store_history_is_bounded_and_expires() -> None:
    now = [0.0]
    store = InMemoryUserStore(
        history_max_items=3, history_ttl=10, vector_ttl=5, max_users=2, clock=lambda: now[0]
    )
    events = [interaction("u", f"i{n}", f"e{n}", ts=n) for n in range(5)]
    history = (await store.add_histories({"u": events[:2]}))["u"].items
    assert history == {"i0": 1.0, "i1": 1.0}
    history = (
        await store.add_histories({"u": [*events[2:], interaction("u", "i4", "x", 2.0, 9)]})
    )["u"].items
    assert history == {"i2": 1.0, "i3": 1.0, "i4": 3.0}  # newest 3 kept, weights summed
    await store.put_vectors("v1", {"u": np.ones(4, np.float32)})
    state = await store.get_state("u", "v1")
    assert state.vector is not None and state.history["i4"] == 3.0
    assert (await store.get_state("u", "v2")).vector is None  # other model version
    now[0] = 6.0
    assert (await store.get_state("u", "v1")).vector is None  # vector TTL passed
    now[0] = 20.0
    assert (await store.get_state("u", "v1")).history == {}  # history TTL passed
    for user in ("a", "b", "c"):
        await store.add_histories({user: [interaction(user, "i", user)]})
    assert (await store.get_state("a", "v1")).history == {}  # least recent user dropped


# ------------------------------------------------------------------ the Redis store


@pytest.mark.redis
async def test_redis_store_keys_carry_ttls_hash_tags_and_stay_small(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
    store = RedisUserStore(client, "rs", history_max_items=3, history_ttl=600, vector_ttl=300)
    vector = np.arange(64, dtype=np.float32)
    await store.put_vectors("v7", {"user-1": vector})
    history = (
        await store.add_histories(
            {"user-1": [interaction("user-1", f"i{n}", f"e{n}", ts=n) for n in range(5)]}
        )
    )["user-1"].items
    assert history == {"i2": 1.0, "i3": 1.0, "i4": 1.0}
    state = await store.get_state("user-1", "v7")
    assert state.vector is not None and np.array_equal(state.vector, vector)
    assert await store.ping()
    await store.close()
    keys = sorted(k.decode() for k in raw.keys("rs:*"))
    assert keys == ["rs:{u:user-1}:h", "rs:{u:user-1}:t", "rs:{u:user-1}:v16"]
    assert all(0 < raw.ttl(k) <= 600 for k in keys)


@pytest.mark.redis
async def test_redis_tombstone_keeps_its_own_ttl_and_deletes_every_key(redis_url: str) -> None:
    """ForgetUser leaves one key, the history holding the tombstone, with the forgotten TTL:
    a later history update does not shorten it to the history's TTL."""
    raw = redis.Redis.from_url(redis_url)
    client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
    store = RedisUserStore(client, "rs", 10, 600, 300, forgotten_ttl=5000)
    await store.add_histories({"u": [interaction("u", "a", "e1")]})
    await store.put_vectors("v1", {"u": np.ones(8, np.float32)})
    assert await store.forget("u")
    assert sorted(k.decode() for k in raw.keys("rs:*")) == ["rs:{u:u}:h"]
    assert 600 < raw.ttl("rs:{u:u}:h") <= 5000
    await store.add_histories({"u": [interaction("u", "b", "e2")]})
    assert 600 < raw.ttl("rs:{u:u}:h") <= 5000 and 0 < raw.ttl("rs:{u:u}:t") <= 600
    await store.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("encoding", "budget"), [("float32", 4 * 64 + 180), ("float16", 4 * 64 + 100)]
)
async def test_redis_memory_per_cached_vector(redis_url: str, encoding: str, budget: int) -> None:
    """MEMORY USAGE of one user's vector key (dim 64, a realistic version name). float32 pays
    jemalloc's 320-byte size class for a 262-byte string: 424 bytes, 4 x dim + 168; float16 fits
    the 4 x dim + 100 budget with room to spare (docs/BENCHMARKS.md)."""
    raw = redis.Redis.from_url(redis_url)
    client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
    store = RedisUserStore(client, "recsvc", 3, 600, 300, vector_encoding=encoding)
    vector = np.linspace(-1, 1, 64, dtype=np.float32)
    await store.put_vectors("v20261125-123025-401536", {"u0012345": vector})
    state = await store.get_state("u0012345", "v20261125-123025-401536")
    assert state.vector is not None
    np.testing.assert_allclose(state.vector, vector, atol=1e-3)
    await store.close()
    key = vector_key("recsvc", "u0012345", encoding)
    assert raw.memory_usage(key) <= budget


async def test_redis_down_raises_store_unavailable() -> None:
    from recsvc.errors import StoreUnavailable

    client = connect("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2)
    store = RedisUserStore(client, "rs", 3, 60, 60)
    with pytest.raises(StoreUnavailable, match="redis"):
        await store.get_state("u", "v")
    assert not await store.ping()
    await store.close()


# ------------------------------------------------------------------ event logs


async def test_event_log_appends_once_per_event_id(event_log: EventLog) -> None:
    first = await event_log.append([interaction("u", "a", "1"), interaction("u", "b", "2")])
    second = await event_log.append([interaction("u", "a", "1"), interaction("u", "c", "3")])
    assert (len(first.accepted), len(second.accepted), second.duplicates) == (2, 1, 1)


async def test_event_log_hands_back_unconfirmed_events_until_confirmed(
    event_log: EventLog,
) -> None:
    """A call that logged events but ended before updating the users' state (timed out,
    cancelled) left them unconfirmed: a retry gets them back as pending, to apply them; once
    confirmed they are plain duplicates. An id repeated within one batch counts once."""
    events = [interaction("u", "a", "1"), interaction("u", "b", "2")]
    first = await event_log.append([*events, interaction("u", "a", "1")])
    assert [e.event_id for e in first.accepted] == ["1", "2"]
    assert (first.duplicates, first.pending) == (1, [])
    retry = await event_log.append([*events, interaction("u", "c", "3")])
    assert [e.event_id for e in retry.accepted] == ["3"]
    assert [e.event_id for e in retry.pending] == ["1", "2"] and retry.duplicates == 2
    await event_log.confirm([*events, interaction("u", "c", "3")])
    await event_log.confirm([])
    again = await event_log.append([*events, interaction("u", "c", "3")])
    assert (again.accepted, again.pending, again.duplicates) == ([], [], 3)


async def test_file_event_log_remembers_a_bounded_window_of_ids(tmp_path: Path) -> None:
    """store.dedupe_max_ids_in_process: the most recently seen ids are remembered, in the
    running log and in one reopened from its file; a retry older than the window is new."""
    path = tmp_path / "events.jsonl"
    log = FileEventLog(path, max_ids=3)
    for n in range(5):
        await log.append([interaction("u", "a", str(n))])
    assert len(log._ids) == 3
    assert (await log.append([interaction("u", "a", "4")])).duplicates == 1
    assert len((await log.append([interaction("u", "a", "0")])).accepted) == 1  # too old
    reopened = FileEventLog(path, max_ids=3)  # remembers the file's last 3: "3", "4", "0"
    assert (await reopened.append([interaction("u", "a", "3")])).duplicates == 1
    assert len((await reopened.append([interaction("u", "a", "1")])).accepted) == 1


async def test_file_event_log_cuts_a_failed_append_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails after part of the batch reached the file (ENOSPC after a short
    write, then EIO on the cut itself) leaves no trace: the next append starts on a clean
    line, and the failed events are new when retried."""
    import errno
    import os

    from recsvc.errors import StoreUnavailable

    path = tmp_path / "events.jsonl"
    log = FileEventLog(path)
    await log.append([interaction("u", "a", "1")])
    size = path.stat().st_size
    real_write, real_truncate = os.write, os.ftruncate
    calls = [0]

    def short_then_full(descriptor: int, data: bytes) -> int:
        calls[0] += 1
        if calls[0] == 1:
            return real_write(descriptor, bytes(data[:20]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def failing_truncate(descriptor: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", short_then_full)
    monkeypatch.setattr(os, "ftruncate", failing_truncate)
    with pytest.raises(StoreUnavailable, match="not recorded"):
        await log.append([interaction("u", "b", "2"), interaction("u", "c", "3")])
    assert path.stat().st_size == size + 20  # the cut failed too: the next append cuts first
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    retried = await log.append([interaction("u", "b", "2"), interaction("u", "c", "3")])
    assert [e.event_id for e in retried.accepted] == ["2", "3"]
    logged, _ = read_columns_from(path, 0, sys.maxsize)
    assert logged["event_id"] == ["1", "2", "3"]


async def test_file_event_log_is_idempotent_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = FileEventLog(path)
    first = await log.append(
        [interaction("u", "a", "1"), interaction("u", "b", "2"), interaction("u", "b", "2")]
    )
    assert len(first.accepted) == 2 and first.duplicates == 1
    with path.open("a") as handle:
        handle.write('{"event_id": "torn')  # a crash mid-write
    reopened = FileEventLog(path)
    again = await reopened.append([interaction("u", "a", "1"), interaction("u", "c", "3")])
    assert [e.event_id for e in again.accepted] == ["3"] and again.duplicates == 1
    logged, _ = read_columns_from(path, 0, sys.maxsize)  # as the ingest worker reads it
    assert logged["event_id"] == ["1", "2", "3"]


async def test_file_event_log_writes_columns_and_reads_both_formats(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    # A line in the earlier format (one object per interaction) stays readable.
    path.write_text(
        '{"event_id":"old","user_id":"u","item_id":"a","event_type":"view",'
        '"weight":1.0,"timestamp_ms":5}\n'
    )
    batch = [interaction(f"u{n % 7}", f"i{n}", f"e{n}", weight=0.5 + n, ts=n) for n in range(250)]
    await FileEventLog(path).append(batch)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 3  # 250 new events as lines of at most LINE_EVENTS (100)
    logged, _ = read_columns_from(path, 0, sys.maxsize)
    assert logged == interactions_to_columns([interaction("u", "a", "old", ts=5), *batch])
    # The ingest worker's reader stops at a line boundary before passing max_events.
    columns, end = read_columns_from(path, 0, 150)
    assert columns["event_id"] == ["old", *(f"e{n}" for n in range(100))]
    rest, final = read_columns_from(path, end, 10)  # one line is always taken
    assert len(rest["event_id"]) == 100 and rest["weight"][0] == 100.5
    assert final < path.stat().st_size


@pytest.mark.redis
async def test_redis_event_log_streams_each_event_once_and_expires_its_markers(
    redis_url: str,
) -> None:
    raw = redis.Redis.from_url(redis_url)
    client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
    log = RedisEventLog(client, "rs", dedupe_ttl=600)
    await log.append([interaction("u", "a", "1"), interaction("u", "b", "2")])
    await log.append([interaction("u", "a", "1"), interaction("u", "c", "3")])
    await client.aclose()
    assert raw.xlen("rs:{ev}:stream") == 3
    assert 0 < raw.ttl("rs:{ev}:id:1") <= 600


# ------------------------------------------------------------------ item logs


@pytest.fixture(params=["redis", ON_CLUSTER])
def item_log_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis, or an empty Redis Cluster, for the item log."""
    return str(request.getfixturevalue(URL_FIXTURES[request.param]))


def _stored(item_id: str, category: str = "c") -> StoredItem:
    vector = np.arange(4, dtype=np.float32) / 7
    return StoredItem(item_id, category, {"colour": "red"}, "efficientnet_lite0", vector)


async def test_file_item_log_keeps_the_last_record_and_survives_a_torn_tail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "items.jsonl"
    log = FileItemLog(path)
    before = await log.version()
    await log.put([_stored("a"), _stored("b")])
    await log.put([_stored("a", "updated")])
    items, after = await log.read_all(), await log.version()
    assert before != after
    assert sorted(items) == ["a", "b"] and items["a"].category == "updated"
    assert items["b"].embedding is not None
    assert np.array_equal(items["b"].embedding, _stored("b").embedding)
    with path.open("ab") as handle:
        handle.write(b'{"item_id": "torn"')  # a crash in the middle of a write
    reopened = FileItemLog(path)  # drops the torn line, so the next record starts cleanly
    await reopened.put([_stored("c")])
    assert sorted(await reopened.read_all()) == ["a", "b", "c"]


@pytest.mark.redis
async def test_redis_item_log_is_shared_and_versioned(item_log_url: str) -> None:
    client = connect(item_log_url, timeout=1.0, connect_timeout=1.0)
    writer, reader = RedisItemLog(client, "it"), RedisItemLog(client, "it")
    before = await reader.version()
    await writer.put([_stored("a"), _stored("b", "bags")])
    after = await reader.version()
    items = await reader.read_all()
    await client.aclose()
    assert before != after
    assert items["b"].category == "bags" and items["a"].attributes == {"colour": "red"}


@pytest.mark.redis
async def test_redis_item_log_reports_replicas_behind_a_write(item_log_url: str) -> None:
    client = connect(item_log_url, timeout=1.0, connect_timeout=1.0)
    prefix = f"acks-{uuid.uuid4().hex[:8]}"
    log = RedisItemLog(client, prefix)
    first = await log.put([_stored("a")])
    await log.acknowledge("writer", first, ttl_seconds=30)
    await log.acknowledge("reader", first, ttl_seconds=30)
    await log.acknowledge("gone", "0", ttl_seconds=0.001)  # expires at once: not waited for
    await asyncio.sleep(0.05)  # past its expiry even where the next calls take under 1 ms
    second = await log.put([replace(_stored("a"), available=False)])
    behind_before = await log.lagging(second, "writer")
    await log.acknowledge("reader", second, ttl_seconds=30)
    behind_after = await log.lagging(second, "writer")
    items = await log.read_all()
    await client.aclose()
    assert int(second) > int(first)
    assert behind_before == ["reader"] and behind_after == []
    assert items["a"].available is False and items["a"].servable is False


async def test_item_log_records_keep_hidden_and_deleted_flags(tmp_path: Path) -> None:
    log = FileItemLog(tmp_path / "items.jsonl")
    await log.put([replace(_stored("a"), available=False), replace(_stored("b"), deleted=True)])
    await log.put([_stored("c")])
    items = await log.read_all()
    assert (items["a"].available, items["a"].deleted) == (False, False)
    assert items["b"].deleted and not items["b"].servable
    assert items["c"].servable
    assert await log.lagging(await log.version(), "me") == []  # one process: nobody to wait for


@pytest.mark.redis
async def test_redis_item_log_reads_only_what_changed(item_log_url: str) -> None:
    client = connect(item_log_url, timeout=1.0, connect_timeout=1.0)
    log = RedisItemLog(client, f"changes-{uuid.uuid4().hex[:8]}")
    await log.put([_stored("a"), _stored("b")])
    everything = await log.read_changes(None)
    await log.put([_stored("b", "moved")])
    await log.put([_stored("c")])
    changes = await log.read_changes(everything.version)
    nothing_new = await log.read_changes(changes.version)
    await client.aclose()
    assert everything.complete and sorted(everything.items) == ["a", "b"]
    assert not changes.complete and sorted(changes.items) == ["b", "c"]
    assert changes.items["b"].category == "moved"
    assert int(changes.version) == int(everything.version) + 2
    assert nothing_new.complete  # version unchanged: asked again, it reads everything once
