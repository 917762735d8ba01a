"""The Redis backends and the ingest worker on a real 3-master Redis Cluster (issue 17): what
only a cluster has (slots, shards, script caches per node). The behaviour suites of the stores
and logs run against the cluster in tests/unit/test_stores.py, the server in test_realtime.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from recsvc.config import Settings, StoreSettings, WorkerSettings
from recsvc.data.interaction_store import InteractionStore
from recsvc.store.clients import sync_client
from recsvc.store.names import EventPartitions, event_layouts_key
from recsvc.store.redis_backend import RedisEventLog, RedisUserStore, connect
from tests.helpers import events
from workers.ingest import build_ingest_round, logged_stream_keys

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_partition_streams_spread_over_the_masters(redis_cluster_url: str) -> None:
    client = sync_client(redis_cluster_url)
    masters = {
        client.get_node_from_key(key).name for key in EventPartitions("recsvc", 3).stream_keys()
    }
    six = [client.get_node_from_key(k).name for k in EventPartitions("recsvc", 6).stream_keys()]
    assert len(masters) == 3
    assert all(six.count(name) == 2 for name in masters)


async def test_user_scripts_span_slots_and_reload_on_nodes_that_lost_them(
    redis_cluster_url: str,
) -> None:
    """200 users fall in ~200 slots on 3 masters: each script call takes one slot's users.
    A node without the script (a promoted replica, a restart) is answered NOSCRIPT inside the
    pipeline; those calls run again, once."""
    client = connect(redis_cluster_url, timeout=2.0, connect_timeout=2.0)
    store = RedisUserStore(client, "rc", 50, 600, 600)
    users = [f"user-{n}" for n in range(200)]
    vectors = {user: np.full(8, n, np.float32) for n, user in enumerate(users)}
    histories = await store.add_histories(
        {user: [e] for user, e in zip(users, events(200, users=200), strict=True)}
    )
    await store.put_vectors("v1", vectors)
    sync_client(redis_cluster_url).script_flush()  # every master forgets every script
    again = await store.add_histories(
        {user: [e] for user, e in zip(users, events(200, users=200, start=200), strict=True)}
    )
    states = await store.get_states(list(reversed(users)), "v1")
    await store.close()
    assert [h.seq + 1 for h in histories.values()] == [again[user].seq for user in histories]
    assert all(len(again[user].items) <= 2 for user in users)
    for user, state in zip(reversed(users), states, strict=True):
        assert state.vector is not None and state.vector[0] == pytest.approx(vectors[user][0])


def test_partitioned_log_is_ingested_once_and_a_change_of_count_loses_nothing(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    """Servers wrote with 3 partitions, then with 2; the ingest worker (configured with 2)
    drains both layouts, each stream once, with the one consumer group."""

    async def record() -> None:
        for partitions, batch in ((3, events(300, users=50)), (2, events(100, start=300))):
            client = connect(redis_cluster_url, 2.0, 2.0)
            log = RedisEventLog(client, "recsvc", 600, partitions=partitions)
            for start in range(0, len(batch), 50):
                await log.append(batch[start : start + 50])
            await log.close()

    asyncio.run(record())
    settings = Settings(
        redis_url=redis_cluster_url,
        store=StoreSettings(event_partitions=2),
        workers=WorkerSettings(interaction_store=tmp_path / "store", batch_size=40),
    )
    ingest_round = build_ingest_round(settings)
    assert ingest_round() == 400
    assert ingest_round() == 0
    client = sync_client(redis_cluster_url)
    assert client.smembers(event_layouts_key("recsvc")) == {b"2", b"3"}
    streams = logged_stream_keys(client, "recsvc", 2)
    assert len(streams) == 1 + 2 + 3  # the single stream of old is always read
    assert all(client.xlen(stream) == 0 for stream in streams)  # trimmed once acknowledged
    store = InteractionStore(tmp_path / "store")
    ids = store.read().column("event_id").to_pylist()
    assert sorted(ids) == sorted(f"e{k}" for k in range(400))
    assert any(part.name.startswith("part-n3p2_") for part in store.parts())
