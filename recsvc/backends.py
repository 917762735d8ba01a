"""Which backends a process uses, from the settings: Redis when ``redis_url`` is set, else
in-process user state and files beside the model store (embedded mode).

The server's and the workers' composition roots all come here, so that the server writes the
event and item logs exactly where the workers read them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from recsvc.config import Settings
from recsvc.core.service import RecommendationService
from recsvc.core.state import EventLog, ItemLog, StoredItem, UserStateStore
from recsvc.store.file_log import FileEventLog, read_events_since
from recsvc.store.item_log import FileItemLog, read_items_from_file, read_items_from_redis
from recsvc.store.memory import InMemoryUserStore
from recsvc.store.names import EVENT_LOG_FILE, ITEM_LOG_FILE, EventPartitions

log = logging.getLogger(__name__)


def event_log_path(settings: Settings) -> Path:
    """The embedded mode's event log file."""
    return settings.store.event_log_path or settings.model_store / EVENT_LOG_FILE


def item_log_path(settings: Settings) -> Path:
    """The embedded mode's item log file (items added by UpsertItems)."""
    return settings.model_store / ITEM_LOG_FILE


def build_user_state(settings: Settings) -> tuple[UserStateStore, EventLog, ItemLog]:
    """The serving state: Redis backends when ``redis_url`` is set, else in-process state and
    file logs."""
    s = settings.store
    if settings.redis_url:
        from recsvc.store.clients import tracking_client
        from recsvc.store.item_log import RedisItemLog
        from recsvc.store.redis_backend import (
            RedisEventLog,
            RedisUserStore,
            connect,
            user_key_prefix,
        )
        from recsvc.store.state_cache import StateCache

        client = connect(
            settings.redis_url, s.timeout_seconds, s.connect_timeout_seconds, s.retries
        )
        store: UserStateStore = RedisUserStore(
            client,
            s.key_prefix,
            s.history_max_items,
            s.history_ttl_seconds,
            s.vector_ttl_seconds,
            s.vector_encoding,
            s.forgotten_ttl_seconds,
            StateCache(
                user_key_prefix(s.key_prefix),
                s.state_cache_users,
                s.state_cache_max_age_seconds,
            )
            if s.state_cache_users
            else None,  # the store leaves it off on a cluster
            partial(tracking_client, settings.redis_url, s.connect_timeout_seconds),
        )
        # The event log has a client of its own: its appends may wait longer than reads of
        # rebuildable state (under load a large append queues behind other scripts).
        log_client = connect(
            settings.redis_url, s.event_log_timeout_seconds, s.connect_timeout_seconds, s.retries
        )
        return (
            store,
            RedisEventLog(log_client, s.key_prefix, s.dedupe_ttl_seconds, s.event_partitions),
            RedisItemLog(client, s.key_prefix),
        )
    memory = InMemoryUserStore(
        s.history_max_items,
        s.history_ttl_seconds,
        s.vector_ttl_seconds,
        s.max_users_in_process,
        forgotten_ttl=s.forgotten_ttl_seconds,
    )
    events = FileEventLog(
        event_log_path(settings), s.dedupe_max_ids_in_process, s.event_log_segment_bytes
    )
    return memory, events, FileItemLog(item_log_path(settings), s.item_log_compact_factor)


async def replay_event_log(settings: Settings, service: RecommendationService) -> None:
    """Embedded mode: put the event log's recent interactions back into the in-process store
    that a restart emptied, so that what a user bought before it is still excluded after it.

    Replayed: every logged event of the last ``history_ttl_seconds`` (by its timestamp_ms),
    not only those since the model's training cut-off: an event the model already trained on
    only excludes an item the user already has, which is harmless, and the window is the one
    a history would have lived in anyway. The ingest worker keeps every closed segment that
    holds an event of that window (``event_log_segment_bytes``), and the segments whose newest
    event is older are not read. The store keeps ``history_max_items`` per user and
    ``max_users_in_process`` users, so memory is bounded as during serving; the log is read
    once, streaming. With Redis the user state outlives the process: nothing to do."""
    if settings.redis_url:
        return
    path = event_log_path(settings)
    since_ms = int(time.time() * 1000) - settings.store.history_ttl_seconds * 1000
    started = time.perf_counter()
    events, users = await service.replay(read_events_since(path, since_ms))
    log.info(
        "replayed %d events of %d users from %s in %.2fs",
        events,
        users,
        path,
        time.perf_counter() - started,
    )


def sync_redis(settings: Settings) -> Any:
    """A blocking Redis client (one server or a cluster) for the workers (``redis_url`` must
    be set)."""
    from recsvc.store.clients import sync_client

    assert settings.redis_url, "sync_redis needs RECSVC_REDIS_URL"
    return sync_client(settings.redis_url)


def event_partitions(settings: Settings) -> EventPartitions:
    """The Redis Streams the server appends recorded interactions to."""
    return EventPartitions(settings.store.key_prefix, settings.store.event_partitions)


def event_stream(settings: Settings) -> str:
    """The Redis Stream key the server appends recorded interactions to, or with several
    partitions a description of them (for the start-up line)."""
    partitions = event_partitions(settings)
    if partitions.count == 1:
        return partitions.stream_key(0)
    return f"{partitions.stream_key(0)} and {partitions.count - 1} more partitions"


def upserted_items_reader(settings: Settings) -> Callable[[], list[StoredItem]]:
    """Reads the items added while serving (the item log), for the train worker."""
    if settings.redis_url:
        client = sync_redis(settings)
        prefix = settings.store.key_prefix
        return lambda: read_items_from_redis(client, prefix)
    path = item_log_path(settings)
    return lambda: read_items_from_file(path)
