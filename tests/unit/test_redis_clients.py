"""Redis clients from URLs (recsvc.store.clients) and the event log's partition names: what
can be checked without a server. The clients against a real cluster: test_redis_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio
from redis.crc import key_slot

from recsvc.config import load_settings
from recsvc.server import startup_line
from recsvc.store.clients import async_client, cluster_nodes, is_cluster_url
from recsvc.store.names import EventPartitions, event_stream_key


def test_cluster_urls_list_their_nodes_and_credentials() -> None:
    url = "rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001,redis-2"
    assert is_cluster_url(url) and not is_cluster_url("redis://10.0.0.1:7000/0")
    assert cluster_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("redis-2", 6379)]


def test_each_scheme_gets_its_kind_of_client() -> None:
    single = async_client("redis://127.0.0.1:1/0", 0.1, 0.1)
    assert isinstance(single, redis.asyncio.Redis)
    with pytest.raises(ValueError, match="database 0 only"):
        async_client("redis+cluster://127.0.0.1:1/3", 0.1, 0.1)
    with pytest.raises(ValueError, match="host:port"):
        cluster_nodes("redis+cluster://127.0.0.1:port")


def test_partitions_land_in_their_own_slot_ranges() -> None:
    one = EventPartitions("recsvc")
    assert one.stream_keys() == [event_stream_key("recsvc")] and one.label(0) == ""
    for count in (2, 3, 6, 256):
        partitions = EventPartitions("recsvc", count)
        for p, key in enumerate(partitions.stream_keys()):
            assert p * 16384 // count <= key_slot(key.encode()) < (p + 1) * 16384 // count
            marker = partitions.marker_prefix(p) + "event-1"
            assert key_slot(marker.encode()) == key_slot(key.encode())  # one script, one slot
    users = [f"user-{n}" for n in range(3000)]
    counts = [sum(EventPartitions("x", 3).of_user(u) == p for u in users) for p in range(3)]
    assert min(counts) > 900  # crc32 spreads users evenly


def test_the_startup_line_names_a_cluster_without_its_password(tmp_path: Path) -> None:
    settings = load_settings(
        model_store=tmp_path,
        redis_url="rediss+cluster://app:s3cret@r0:7000,r1:7000",
        store={"event_partitions": 3},
    )
    line = startup_line(settings)
    assert "s3cret" not in line
    assert "user store redis cluster r0:7000,r1:7000 (TLS)" in line
    assert "recsvc:{ev:3:0:" in line and "2 more partitions" in line
