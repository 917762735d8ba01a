"""User-state stores and event logs: the in-process ones, and Redis against a real server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from recsvc.core.state import EventType, Interaction, StoredItem, UserStateStore
from recsvc.store.codec import interactions_to_columns
from recsvc.store.file_log import FileEventLog, read_columns_from
from recsvc.store.item_log import FileItemLog, RedisItemLog
from recsvc.store.memory import InMemoryUserStore
from recsvc.store.redis_backend import RedisEventLog, RedisUserStore, connect
from tests.helpers import redis_server


def interaction(
    user: str, item: str, event_id: str, weight: float = 1.0, ts: int = 1
) -> Interaction:
    return Interaction(user, item, EventType.VIEW, weight, ts, event_id)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def test_memory_store_history_is_bounded_and_expires() -> None:
    now = [0.0]
    store = InMemoryUserStore(
        history_max_items=3, history_ttl=10, vector_ttl=5, max_users=2, clock=lambda: now[0]
    )

    async def scenario() -> None:
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

    asyncio.run(scenario())


def test_file_event_log_is_idempotent_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"

    async def scenario() -> None:
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

    asyncio.run(scenario())
    logged, _ = read_columns_from(path, 0, sys.maxsize)  # as the ingest worker reads it
    assert logged["event_id"] == ["1", "2", "3"]


def test_file_event_log_writes_columns_and_reads_both_formats(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    # A line in the earlier format (one object per interaction) stays readable.
    path.write_text(
        '{"event_id":"old","user_id":"u","item_id":"a","event_type":"view",'
        '"weight":1.0,"timestamp_ms":5}\n'
    )
    batch = [interaction(f"u{n % 7}", f"i{n}", f"e{n}", weight=0.5 + n, ts=n) for n in range(250)]
    asyncio.run(FileEventLog(path).append(batch))
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


def test_redis_store_keys_carry_ttls_hash_tags_and_stay_small(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.flushdb()

    async def scenario() -> None:
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

    asyncio.run(scenario())
    keys = sorted(k.decode() for k in raw.keys("rs:*"))
    assert keys == ["rs:{u:user-1}:h", "rs:{u:user-1}:t", "rs:{u:user-1}:v:v7"]
    assert all(0 < raw.ttl(k) <= 600 for k in keys)


def test_redis_store_reads_many_users_in_order_in_one_call(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()

    async def scenario() -> None:
        client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
        store = RedisUserStore(client, "rm", history_max_items=10, history_ttl=600, vector_ttl=300)
        vectors = {"a": np.full(8, 1.0, np.float32), "c": np.full(8, 3.0, np.float32)}
        await store.put_vectors("v1", vectors)
        await store.put_vectors("v0", {"c": np.full(8, 9.0, np.float32)})  # another version
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
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("encoding", "budget"), [("float32", 4 * 64 + 180), ("float16", 4 * 64 + 100)]
)
def test_redis_memory_per_cached_vector(redis_url: str, encoding: str, budget: int) -> None:
    """MEMORY USAGE of one user's vector key (dim 64, a realistic version name). float32 pays
    jemalloc's 320-byte size class for a 262-byte string: 424 bytes, 4 x dim + 168; float16 fits
    the 4 x dim + 100 budget with room to spare (docs/BENCHMARKS.md)."""
    raw = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
        store = RedisUserStore(client, "recsvc", 3, 600, 300, vector_encoding=encoding)
        vector = np.linspace(-1, 1, 64, dtype=np.float32)
        await store.put_vectors("v20261125-123025-401536", {"u0012345": vector})
        state = await store.get_state("u0012345", "v20261125-123025-401536")
        assert state.vector is not None
        np.testing.assert_allclose(state.vector, vector, atol=1e-3)
        await store.close()

    asyncio.run(scenario())
    assert raw.memory_usage("recsvc:{u:u0012345}:v:v20261125-123025-401536") <= budget


def test_redis_event_log_appends_once_per_event_id(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.flushdb()

    async def scenario() -> tuple[int, int, int]:
        client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
        log = RedisEventLog(client, "rs", dedupe_ttl=600)
        first = await log.append([interaction("u", "a", "1"), interaction("u", "b", "2")])
        second = await log.append([interaction("u", "a", "1"), interaction("u", "c", "3")])
        await client.aclose()
        return len(first.accepted), len(second.accepted), second.duplicates

    assert asyncio.run(scenario()) == (2, 1, 1)
    assert raw.xlen("rs:{ev}:stream") == 3
    assert 0 < raw.ttl("rs:{ev}:id:1") <= 600


def test_redis_down_raises_store_unavailable() -> None:
    from recsvc.errors import StoreUnavailable

    async def scenario() -> None:
        client = connect("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2)
        store = RedisUserStore(client, "rs", 3, 60, 60)
        with pytest.raises(StoreUnavailable, match="redis"):
            await store.get_state("u", "v")
        assert not await store.ping()
        await store.close()

    asyncio.run(scenario())


def _stored(item_id: str, category: str = "c") -> StoredItem:
    vector = np.arange(4, dtype=np.float32) / 7
    return StoredItem(item_id, category, {"colour": "red"}, "efficientnet_lite0", vector)


def test_file_item_log_keeps_the_last_record_and_survives_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"

    async def scenario() -> tuple[dict[str, StoredItem], str, str]:
        log = FileItemLog(path)
        before = await log.version()
        await log.put([_stored("a"), _stored("b")])
        await log.put([_stored("a", "updated")])
        return await log.read_all(), before, await log.version()

    items, before, after = asyncio.run(scenario())
    assert before != after
    assert sorted(items) == ["a", "b"] and items["a"].category == "updated"
    assert items["b"].embedding is not None
    assert np.array_equal(items["b"].embedding, _stored("b").embedding)
    with path.open("ab") as handle:
        handle.write(b'{"item_id": "torn"')  # a crash in the middle of a write

    async def reopen() -> dict[str, StoredItem]:
        log = FileItemLog(path)  # drops the torn line, so the next record starts cleanly
        await log.put([_stored("c")])
        return await log.read_all()

    assert sorted(asyncio.run(reopen())) == ["a", "b", "c"]


def test_redis_item_log_is_shared_and_versioned(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()

    async def scenario() -> tuple[str, str, dict[str, StoredItem]]:
        client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
        writer, reader = RedisItemLog(client, "it"), RedisItemLog(client, "it")
        before = await reader.version()
        await writer.put([_stored("a"), _stored("b", "bags")])
        after = await reader.version()
        items = await reader.read_all()
        await client.aclose()
        return before, after, items

    before, after, items = asyncio.run(scenario())
    assert before != after
    assert items["b"].category == "bags" and items["a"].attributes == {"colour": "red"}


def test_redis_store_updates_users_across_script_chunks(redis_url: str) -> None:
    """More users than one script call takes: every user gets their own history and vector
    back, in order, whatever chunk they fell in."""
    from recsvc.store.redis_backend import USERS_PER_SCRIPT

    redis.Redis.from_url(redis_url).flushdb()
    users = [f"user{n}" for n in range(2 * USERS_PER_SCRIPT + 7)]

    async def scenario() -> None:
        client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
        store = RedisUserStore(client, "rc", history_max_items=2, history_ttl=600, vector_ttl=300)
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
        await store.close()

    asyncio.run(scenario())


def _seq_scenario(store: UserStateStore) -> None:
    """Two updates of one user race: the first one's vector, stored last, must not replace the
    second's; a lazily folded vector from a read history is dropped once the history moved."""

    async def scenario() -> None:
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

    asyncio.run(scenario())


def test_memory_store_keeps_the_vector_of_the_latest_history() -> None:
    _seq_scenario(InMemoryUserStore(history_max_items=10, history_ttl=60, vector_ttl=60))


def test_redis_store_keeps_the_vector_of_the_latest_history(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    client = connect(redis_url, timeout=1.0, connect_timeout=1.0)
    _seq_scenario(RedisUserStore(client, "rq", history_max_items=10, history_ttl=60, vector_ttl=60))
