"""Names that several processes must agree on, defined once: the server writes the event and
item logs under these names, the workers read them. Rename one here and every process follows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Embedded mode: files in the model store directory.
EVENT_LOG_FILE = "events.jsonl"
ITEM_LOG_FILE = "items.jsonl"

# The ingest worker's consumer group on the Redis event stream.
INGEST_GROUP = "recsvc-ingest"


def event_stream_key(prefix: str) -> str:
    """The Redis Stream of recorded interactions (one hash tag: one shard)."""
    return f"{prefix}:{{ev}}:stream"


def event_id_key_prefix(prefix: str) -> str:
    """Prefix of the idempotency markers of recorded event ids."""
    return f"{prefix}:{{ev}}:id:"


def event_layouts_key(prefix: str) -> str:
    """The Redis set of the partition counts (store.event_partitions) that servers have
    written the event log with: the ingest worker drains every layout in it, so a change of
    the count loses none of the events written before."""
    return f"{prefix}:{{ev}}:layouts"


@dataclass(frozen=True)
class EventPartitions:
    """The event log split into ``count`` Redis Streams by user: partition crc32(user) % count.

    One user's events stay in one stream, in order. Each partition's stream and idempotency
    markers share a hash tag (one slot, as its append script needs); the tags are salted so
    that partition p of N hashes into the p-th of N equal slot ranges, which spreads them
    evenly over the shards of a cluster made by ``redis-cli --cluster create`` (equal,
    contiguous ranges). ``count`` 1 is the single stream ``{prefix}:{ev}:stream`` of old."""

    prefix: str
    count: int = 1

    def of_user(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.count

    def tag(self, partition: int) -> str:
        if self.count == 1:
            return "ev"
        return f"ev:{self.count}:{partition}:{_salt(self.count, partition)}"

    def stream_key(self, partition: int) -> str:
        return f"{self.prefix}:{{{self.tag(partition)}}}:stream"

    def marker_prefix(self, partition: int) -> str:
        """Prefix of the idempotency markers of the events of ``partition``."""
        return f"{self.prefix}:{{{self.tag(partition)}}}:id:"

    def label(self, partition: int) -> str:
        """The partition in the names of the ingested parts ("" for the single stream)."""
        return "" if self.count == 1 else f"n{self.count}p{partition}"

    def stream_keys(self) -> list[str]:
        return [self.stream_key(p) for p in range(self.count)]


@cache
def _salt(count: int, partition: int) -> int:
    """The first salt that puts ``partition``'s tag in its own 1/count of the slots."""
    low = partition * REDIS_CLUSTER_HASH_SLOTS // count
    high = (partition + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    salt = 0
    while not low <= key_slot(f"ev:{count}:{partition}:{salt}".encode()) < high:
        salt += 1
    return salt


def item_data_key(prefix: str) -> str:
    """The Redis hash of items added or changed by UpsertItems."""
    return f"{prefix}:{{items}}:data"


def item_version_key(prefix: str) -> str:
    """Counter bumped on every UpsertItems, so that replicas notice a change."""
    return f"{prefix}:{{items}}:version"


def item_acks_key(prefix: str) -> str:
    """The Redis hash of each serving replica's applied item-log version (and its expiry)."""
    return f"{prefix}:{{items}}:acks"


def item_changes_key(prefix: str) -> str:
    """The Redis sorted set of item ids by the item-log version that last changed them."""
    return f"{prefix}:{{items}}:changes"
