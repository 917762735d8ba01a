"""Item logs: where upserted items are kept until a training run takes them into a model.

- ``FileItemLog`` (embedded mode): JSON lines appended and fsynced before the call returns;
  the last record of an id wins; a torn last line (a crash mid-write) is ignored. Once the file
  holds more than ``compact_factor`` records per item it is rewritten with the last record of
  each (atomically: readers see the old file or the new one), so it grows with the catalogue,
  not with the number of upserts.
- ``RedisItemLog``: one hash field per item plus a counter that every write increments in the
  same transaction, so that each serving replica notices other replicas' upserts by polling
  the counter. An upsert overwrites its item's field: the hash is one record per item already
  and needs no compaction.

The embedding travels as base64 of its float32 bytes, with the name of the backbone that made it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np

from recsvc.core.state import ItemChanges, StoredItem
from recsvc.durable import append_durably, replace_bytes_atomically
from recsvc.errors import StoreUnavailable
from recsvc.store.clients import REDIS_ERRORS, AsyncClient
from recsvc.store.file_log import drop_partial_tail
from recsvc.store.names import (
    item_acks_key,
    item_changes_key,
    item_data_key,
    item_version_key,
)

log = logging.getLogger(__name__)

# Records per item beyond which the file item log is rewritten: each rewrite costs one pass
# over the catalogue and follows at least (factor - 1) x items upserts, so its cost per upsert
# stays constant while the file stays within factor x the compacted size.
DEFAULT_COMPACT_FACTOR = 4.0


def item_to_json(item: StoredItem) -> str:
    embedding = None
    if item.embedding is not None:
        embedding = base64.b64encode(item.embedding.astype("<f4").tobytes()).decode()
    return json.dumps(
        {
            "item_id": item.item_id,
            "category": item.category,
            "attributes": item.attributes,
            "backbone": item.backbone,
            "embedding": embedding,
            "available": item.available,
            "deleted": item.deleted,
        },
        separators=(",", ":"),
    )


def item_from_json(text: str | bytes) -> StoredItem:
    data: dict[str, Any] = json.loads(text)
    embedding = None
    if data.get("embedding"):
        embedding = np.frombuffer(base64.b64decode(data["embedding"]), dtype="<f4").astype(
            np.float32
        )
    return StoredItem(
        item_id=str(data["item_id"]),
        category=str(data.get("category", "")),
        attributes={str(k): str(v) for k, v in dict(data.get("attributes", {})).items()},
        backbone=str(data.get("backbone", "")),
        embedding=embedding,
        available=bool(data.get("available", True)),
        deleted=bool(data.get("deleted", False)),
    )


class FileItemLog:
    """ItemLog in one append-only JSON-lines file, compacted to one record per item once it
    holds more than ``compact_factor`` records per item. The server is its only writer
    (embedded mode runs one process); the train worker only reads it."""

    def __init__(self, path: Path, compact_factor: float = DEFAULT_COMPACT_FACTOR) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_tail(self.path)  # a torn record was never acknowledged
        self.compact_factor = compact_factor
        self._records = _count_lines(self.path)
        self._ids = set(self.read_path(self.path))
        self._lock = asyncio.Lock()

    async def put(self, items: list[StoredItem]) -> str:
        data = "".join(item_to_json(item) + "\n" for item in items).encode()
        async with self._lock:
            try:
                await asyncio.to_thread(append_durably, self.path, data)
            except OSError as exc:
                raise StoreUnavailable(f"item log {self.path}: {exc}") from exc
            self._records += len(items)
            self._ids.update(item.item_id for item in items)
            if self._records > self.compact_factor * len(self._ids):
                await asyncio.to_thread(self._compact)
            return await self.version()

    async def acknowledge(self, replica: str, version: str, ttl_seconds: float) -> None:
        return None  # one process serves from a file: there is nobody to wait for

    async def lagging(self, version: str, replica: str) -> list[str]:
        return []

    def _compact(self) -> None:
        """Rewrite the file with the last record of each item. The records are on disk already,
        so a failure here only leaves the file as long as it was."""
        try:
            items = self.read_path(self.path)
            content = "".join(item_to_json(item) + "\n" for item in items.values()).encode()
            replace_bytes_atomically(self.path, content)
        except OSError as exc:
            log.warning("item log %s: compaction failed, kept as it is: %s", self.path, exc)
            return
        log.info("item log %s: compacted %d records to %d", self.path, self._records, len(items))
        self._records = len(items)
        self._ids = set(items)

    async def read_all(self) -> dict[str, StoredItem]:
        return await asyncio.to_thread(self.read_path, self.path)

    async def read_changes(self, since: str | None) -> ItemChanges:
        version = await self.version()  # first: a write after it is read again next time
        return ItemChanges(await self.read_all(), version, complete=True)

    @staticmethod
    def read_path(path: Path) -> dict[str, StoredItem]:
        items: dict[str, StoredItem] = {}
        if not path.exists():
            return items
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    log.warning("%s: ignoring an incomplete last line", path)
                    break
                try:
                    item = item_from_json(line)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("%s line %d: unreadable item record (%s)", path, number, exc)
                    continue
                items[item.item_id] = item
        return items

    async def version(self) -> str:
        try:
            stat = await asyncio.to_thread(self.path.stat)
        except FileNotFoundError:
            return "0"
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    async def close(self) -> None:
        return None


class RedisItemLog:
    """ItemLog in a Redis hash (hash-tagged keys, one slot in Redis Cluster: its script's keys
    and the item set live on one shard)."""

    def __init__(self, client: AsyncClient, prefix: str) -> None:
        self._redis = client
        self.data_key = item_data_key(prefix)
        self.version_key = item_version_key(prefix)
        self.acks_key = item_acks_key(prefix)
        self.changes_key = item_changes_key(prefix)
        self._put = client.register_script(_PUT_SCRIPT)

    async def put(self, items: list[StoredItem]) -> str:
        flat: list[Any] = []
        for item in items:
            flat += [item.item_id, item_to_json(item)]
        try:
            version = await self._put(
                keys=[self.data_key, self.version_key, self.changes_key], args=flat
            )
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis: storing items failed: {exc}") from exc
        return str(version)

    async def read_changes(self, since: str | None) -> ItemChanges:
        """Only the items changed since ``since`` (one sorted-set range and one HMGET), so a
        replica's poll after a write reads that write, not the whole catalogue."""
        if since is None or not since.isdigit():
            version = await self.version()  # first: a write after it is read again next time
            return ItemChanges(await self.read_all(), version, complete=True)
        try:
            changed = cast(
                list[tuple[Any, float]],
                await self._redis.zrangebyscore(
                    self.changes_key, f"({since}", "+inf", withscores=True
                ),
            )
            if not changed:
                # The version moved with no id filed under it: a writer from before the
                # changes set. Read everything once.
                return await self.read_changes(None)
            ids = [item_id for item_id, _ in changed]
            values = await self._redis.hmget(self.data_key, ids)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis: reading changed items failed: {exc}") from exc
        newest = max(int(score) for _, score in changed)
        return ItemChanges(self._parsed(values), str(newest), complete=False)

    async def acknowledge(self, replica: str, version: str, ttl_seconds: float) -> None:
        expires_ms = int((time.time() + ttl_seconds) * 1000)
        try:
            await self._redis.hset(self.acks_key, replica, f"{version}:{expires_ms}")
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis: acknowledging the item version failed: {exc}") from exc

    async def lagging(self, version: str, replica: str) -> list[str]:
        try:
            acks = await self._redis.hgetall(self.acks_key)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(
                f"redis: reading replica acknowledgements failed: {exc}"
            ) from exc
        now_ms = time.time() * 1000
        behind, expired = [], []
        for name, value in acks.items():
            other = _text(name)
            acked, _, expires = _text(value).partition(":")
            if not expires.isdigit() or int(expires) < now_ms:
                expired.append(name)  # a replica that stopped (or crashed) is not waited for
            elif other != replica and _as_int(acked) < _as_int(version):
                behind.append(other)
        if expired:
            with contextlib.suppress(*REDIS_ERRORS):  # else tidied by the next writer
                await self._redis.hdel(self.acks_key, *expired)
        return behind

    async def read_all(self) -> dict[str, StoredItem]:
        try:
            raw = await self._redis.hgetall(self.data_key)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis: reading items failed: {exc}") from exc
        return self._parsed(raw.values())

    def _parsed(self, values: Iterable[bytes | str | None]) -> dict[str, StoredItem]:
        """The readable records among ``values``, by id (an unreadable one is logged, a
        missing one skipped)."""
        items = {}
        for value in values:
            if value is None:
                continue
            try:
                item = item_from_json(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable item record (%s)", self.data_key, exc)
                continue
            items[item.item_id] = item
        return items

    async def version(self) -> str:
        try:
            value = await self._redis.get(self.version_key)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis: reading the item version failed: {exc}") from exc
        return value.decode() if isinstance(value, bytes) else str(value or "0")

    async def close(self) -> None:
        return None


# Store the items, bump the version and file each id under it, as one step: a reader that sees
# an id at version v also sees its record as of v (or newer).
_PUT_SCRIPT = """
local version = redis.call('INCR', KEYS[2])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], version, ARGV[i])
end
return version
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _as_int(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def read_items_from_redis(client: Any, prefix: str) -> list[StoredItem]:
    """Every item of a RedisItemLog, read with a synchronous client (for the train worker)."""
    items: list[StoredItem] = []
    try:
        values = client.hgetall(item_data_key(prefix)).values()
    except REDIS_ERRORS as exc:
        log.warning("item log unavailable; training without the upserted items: %s", exc)
        return items
    for value in values:
        try:
            items.append(item_from_json(value))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable item record (%s)", exc)
    return items


def read_items_from_file(path: Path) -> list[StoredItem]:
    """Every item of a FileItemLog (the last record of each id), read synchronously."""
    return list(FileItemLog.read_path(path).values())
