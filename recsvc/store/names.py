"""Names that several processes must agree on, defined once: the server writes the event and
item logs under these names, the workers read them. Rename one here and every process follows.
"""

from __future__ import annotations

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
