"""Redis backends: user state (vectors, bounded histories) and the event log (a Stream).

Keys carry a hash tag so that each user's keys, and all event-log keys, share a Redis Cluster
slot:

    {prefix}:{u:<user>}:v16                 "<model version>|" + float16 vector bytes, TTL
                                            (:v32 for float32)
    {prefix}:{u:<user>}:h / :t              history: item -> weight (hash), item -> time (zset);
                                            field "" of :h is the history's sequence number,
                                            "\\0d:<item>" a dislike, "\\0forgotten" a ForgetUser
                                            tombstone (store.forgotten_ttl_seconds)
    {prefix}:{ev}:stream                    the event stream (XADD)
    {prefix}:{ev}:id:<event_id>             idempotency marker, TTL: "p" logged, "d" applied

With partitioned event logs (store.event_partitions > 1, recsvc.store.names) the stream and
markers of partition p of N carry a hash tag of their own, ``{ev:N:p:<salt>}``.

RecordInteractions updates many users at once with scripts that each take USERS_PER_SCRIPT
users' keys. On one Redis server any users share a script; on a Redis Cluster the keys of one
script must lie in one slot, so there the users are grouped by slot (mostly one user per
script, in one non-transactional pipeline that the cluster client splits by node).

Sockets have timeouts; callers bound each call by the request's deadline (asyncio.timeout);
Redis failures become StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from recsvc.core.state import (
    FORGOTTEN_FIELD,
    AppendResult,
    Interaction,
    UserHistory,
    UserState,
    history_field,
    split_history,
)
from recsvc.errors import OutcomeUnknown, StoreUnavailable
from recsvc.store.clients import REDIS_ERRORS, AsyncClient, async_client
from recsvc.store.codec import interaction_to_json, vector_from_bytes, vector_to_bytes
from recsvc.store.names import EventPartitions, event_layouts_key
from recsvc.store.state_cache import StateCache, track

T = TypeVar("T")

# Add interactions to the histories of several users (KEYS: weights and times of each user;
# ARGV: ttl, keep, the forgotten field, then per user a count n and n triples item, weight,
# timestamp), keep only the newest `keep` items of each and advance its sequence number; return
# each user's history (HGETALL, the sequence number included), in order. A forgotten user's
# history keeps the longer of its TTL and `ttl` (the tombstone must outlive the history).
_ADD_HISTORIES = """
local ttl, keep, forgotten = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local at, out = 4, {}
for u = 1, #KEYS, 2 do
  local weights, times = KEYS[u], KEYS[u + 1]
  local n = tonumber(ARGV[at])
  for i = at + 1, at + 3 * n, 3 do
    redis.call('HINCRBYFLOAT', weights, ARGV[i], ARGV[i + 1])
    redis.call('ZADD', times, 'GT', ARGV[i + 2], ARGV[i])
    redis.call('ZADD', times, 'NX', ARGV[i + 2], ARGV[i])
  end
  at = at + 1 + 3 * n
  -- The sequence number: a new history starts from the server clock (seconds x 10^6), so
  -- that one expired and begun again never reuses a number an older vector could carry.
  redis.call('HSETNX', weights, '', redis.call('TIME')[1] .. '000000')
  redis.call('HINCRBY', weights, '', 1)
  local size = redis.call('ZCARD', times)
  if size > keep then
    local old = redis.call('ZRANGE', times, 0, size - keep - 1)
    redis.call('ZREMRANGEBYRANK', times, 0, size - keep - 1)
    redis.call('HDEL', weights, unpack(old))
  end
  local keep_for = ttl
  if redis.call('HEXISTS', weights, forgotten) == 1 then
    keep_for = math.max(ttl, redis.call('TTL', weights))
  end
  redis.call('EXPIRE', weights, keep_for)
  redis.call('EXPIRE', times, ttl)
  out[#out + 1] = redis.call('HGETALL', weights)
end
return out
"""

# Store vectors with a TTL of ARGV[1] seconds. KEYS: vector and history key of each user; ARGV
# after the TTL: vector bytes and the history sequence number it was folded in from ("": store
# regardless). A vector from a history that has moved on is dropped: the call that moved it
# stores its own. Returns how many were stored.
_SET_VECTORS = """
local ttl, stored = ARGV[1], 0
for i = 1, #KEYS, 2 do
  local value, seq = ARGV[i + 1], ARGV[i + 2]
  if seq == '' or redis.call('HGET', KEYS[i + 1], '') == seq then
    redis.call('SET', KEYS[i], value, 'EX', ttl)
    stored = stored + 1
  end
end
return stored
"""

# Vector (or nil) and history (HGETALL) of each user: KEYS are vector and history key pairs.
_GET_STATES = """
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = redis.call('HGETALL', KEYS[i + 1])
end
return out
"""

# Forget a user (KEYS: both vector keys, history weights, history times; ARGV: ttl, the
# forgotten field, now in ms): delete them all, then leave a history holding only the tombstone
# and a sequence number past the old one (a vector folded in from the old history is then never
# stored). Returns how many of the user's vectors and item histories existed.
_FORGET = """
local weights = KEYS[3]
local held = redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[4])  -- times: a history with items
local seq = redis.call('HGET', weights, '')
if seq then seq = tonumber(seq) + 1 else seq = redis.call('TIME')[1] .. '000000' end
redis.call('DEL', KEYS[1], KEYS[2], weights, KEYS[4])
redis.call('HSET', weights, ARGV[2], ARGV[3], '', seq)
redis.call('EXPIRE', weights, ARGV[1])
return held
"""

# Users per script call: few enough that one call blocks Redis for about a millisecond (other
# clients' reads wait behind a script), many enough that the client's per-command cost, which
# dominated RecordInteractions in Redis mode, is paid rarely.
USERS_PER_SCRIPT = 64

# Append the events whose id is new (KEYS: stream, marker prefix; ARGV: ttl, then event id and
# event JSON pairs). A new id's marker is "p" (logged, users' state not yet confirmed) until
# _CONFIRM_EVENTS makes it "d"; markers of earlier versions ("1") count as done. Returns the
# positions (1-based) of the new events and of those still "p" (a call that ended after its
# append: the retry applies them); an id repeated within the batch counts once.
_APPEND_EVENTS = """
local stream, id_prefix, ttl = KEYS[1], KEYS[2], tonumber(ARGV[1])
local fresh, pending, here = {}, {}, {}
for i = 2, #ARGV, 2 do
  local event_id = ARGV[i]
  if not here[event_id] then
    here[event_id] = true
    local marker = redis.call('GET', id_prefix .. event_id)
    if not marker then
      redis.call('SET', id_prefix .. event_id, 'p', 'EX', ttl)
      redis.call('XADD', stream, '*', 'event', ARGV[i + 1])
      fresh[#fresh + 1] = i / 2
    elseif marker == 'p' then
      pending[#pending + 1] = i / 2
    end
  end
end
return {fresh, pending}
"""

# Mark logged events as applied to the users' state (KEYS: marker prefix; ARGV: event ids).
_CONFIRM_EVENTS = """
for i = 1, #ARGV do
  redis.call('SET', KEYS[1] .. ARGV[i], 'd', 'XX', 'KEEPTTL')
end
return #ARGV
"""


def user_key(prefix: str, user_id: str, suffix: str) -> str:
    """A key of one user's; the hash tag keeps all of them in one cluster slot."""
    return f"{prefix}:{{u:{user_id}}}:{suffix}"


def user_key_prefix(prefix: str) -> str:
    """What every key of every user starts with (the state cache tracks it)."""
    return f"{prefix}:{{u:"


def vector_key(prefix: str, user_id: str, encoding: str = "float16") -> str:
    """The key of a user's vector: one per user, whatever the model version (the value names
    it), so that retraining leaves no keys behind. The encoding is part of the name: a change
    of encoding reads no vector in the other one (they are folded in anew)."""
    return user_key(prefix, user_id, _VECTOR_KEY_TAGS[encoding])


_VECTOR_KEY_TAGS = {"float32": "v32", "float16": "v16"}


def version_tag(model_version: str) -> bytes:
    """What a stored vector of ``model_version`` starts with."""
    return model_version.encode() + b"|"


def tagged_vector(model_version: str, vector: npt.NDArray[np.float32], encoding: str) -> bytes:
    """A vector as stored: the model version it belongs to, "|", its bytes."""
    return version_tag(model_version) + vector_to_bytes(vector, encoding)


def untagged_vector(stored: bytes, tag: bytes, encoding: str) -> npt.NDArray[np.float32] | None:
    """The vector of a stored value when it starts with ``tag`` (:func:`version_tag`), else
    None (another version's vector, to be folded in anew)."""
    if not stored.startswith(tag):
        return None
    return vector_from_bytes(stored[len(tag) :], encoding)


def connect(url: str, timeout: float, connect_timeout: float, retries: int = 1) -> AsyncClient:
    """A client of one Redis server or of a Redis Cluster (recsvc.store.clients)."""
    return async_client(url, timeout, connect_timeout, retries)


async def _checked(call: Awaitable[T], what: str) -> T:
    try:
        return await call
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(f"redis: {what} failed: {exc or type(exc).__name__}") from exc


class RedisUserStore:
    """UserStateStore in Redis."""

    def __init__(
        self,
        client: AsyncClient,
        prefix: str,
        history_max_items: int,
        history_ttl: int,
        vector_ttl: int,
        vector_encoding: str = "float16",
        forgotten_ttl: int = 30 * 86400,
        cache: StateCache | None = None,
        tracking_client: Callable[[], Any] | None = None,
    ) -> None:
        """``cache`` and ``tracking_client`` (a RESP2 client of the same server, see
        recsvc.store.state_cache): users' state held in process between changes; off on a
        cluster, whose nodes would each need a tracking connection."""
        self._redis = client
        # On a cluster one script's users must share a slot (grouped by _chunks).
        self._by_slot = isinstance(client, redis.RedisCluster)
        self.vector_encoding = vector_encoding
        self._prefix = prefix
        self.history_max_items = history_max_items
        self.history_ttl = history_ttl
        self.vector_ttl = vector_ttl
        self.forgotten_ttl = forgotten_ttl
        self._forget = client.register_script(_FORGET)
        self._add_histories = client.register_script(_ADD_HISTORIES)
        self._set_vectors = client.register_script(_SET_VECTORS)
        self._get_states = client.register_script(_GET_STATES)
        self._cache = cache if tracking_client is not None and not self._by_slot else None
        self._tracking_client = tracking_client
        self._tracker: asyncio.Task[None] | None = None
        self._reads_failing = False

    def _key(self, user_id: str, suffix: str) -> str:
        return user_key(self._prefix, user_id, suffix)

    async def get_state(self, user_id: str, model_version: str) -> UserState:
        return (await self.get_states([user_id], model_version))[0]

    async def get_states(self, user_ids: list[str], model_version: str) -> list[UserState]:
        """Vector and history of each user, a few users per script call (USERS_PER_SCRIPT):
        one command for a whole Recommend micro-batch, as redis-py's cost per command was
        about a third of the engine's time. Users held by the state cache are not read."""
        cache = self._cache
        if cache is None:
            return await self._read_states(user_ids, model_version)
        if self._tracker is None:  # the first read, in the serving event loop
            assert self._tracking_client is not None
            self._tracker = asyncio.get_running_loop().create_task(
                track(cache, self._tracking_client)
            )
        tag = version_tag(model_version)
        held: dict[str, UserState] = {}
        if not self._reads_failing:
            for user_id in user_ids:
                entry = cache.get(user_id)
                if entry is not None:
                    held[user_id] = self._state_from(*entry, tag)
        missing = [u for u in dict.fromkeys(user_ids) if u not in held]
        if missing:
            epoch = cache.epoch
            raw: dict[str, tuple[bytes | None, UserHistory]] = {}
            try:
                read = await self._read_states(missing, model_version, raw)
            except BaseException:  # failed, or cancelled by the caller's timeout
                self._reads_failing = True
                raise
            self._reads_failing = False
            cache.keep(raw.items(), epoch)
            held.update(zip(missing, read, strict=True))
        return [held[u] for u in user_ids]

    def local_state(self, user_id: str, model_version: str) -> UserState | None:
        """The user's state from the state cache, if it holds the user. Nothing is answered
        from it after a read of Redis failed, until one succeeds: the caller's view of the
        store's health comes from those reads."""
        cache = self._cache
        entry = cache.get(user_id) if cache is not None and not self._reads_failing else None
        return None if entry is None else self._state_from(*entry, version_tag(model_version))

    def _state_from(self, vector: bytes | None, history: UserHistory, tag: bytes) -> UserState:
        """A user's state from the stored vector's bytes and the decoded history; the vector
        only if it is of the model version that ``tag`` names."""
        decoded = untagged_vector(vector, tag, self.vector_encoding) if vector else None
        return UserState(history.items, decoded, history.seq, history.dislikes, history.forgotten)

    async def _read_states(
        self,
        user_ids: list[str],
        model_version: str,
        raw: dict[str, tuple[bytes | None, UserHistory]] | None = None,
    ) -> list[UserState]:
        """Each user's state from Redis; ``raw`` gets each user's stored vector bytes and
        decoded history."""
        calls: list[_ScriptCall] = []
        chunks = self._chunks(user_ids)
        for chunk in chunks:
            keys: list[str] = []
            for user_id in chunk:
                keys += [
                    vector_key(self._prefix, user_id, self.vector_encoding),
                    self._key(user_id, "h"),
                ]
            calls.append((keys, []))
        replies = await _checked(_run(self._redis, self._get_states, calls), "reading user state")
        flat = [value for reply in replies for value in reply]
        tag = version_tag(model_version)
        states: dict[str, UserState] = {}
        ordered = [user_id for chunk in chunks for user_id in chunk]
        for user_id, vector, flat_history in zip(ordered, flat[::2], flat[1::2], strict=True):
            history = _decode_history(flat_history)
            if raw is not None:
                raw[user_id] = (vector, history)
            states[user_id] = self._state_from(vector, history, tag)
        return [states[user_id] for user_id in user_ids]

    async def put_vectors(
        self,
        model_version: str,
        vectors: Mapping[str, npt.NDArray[np.float32]],
        history_seqs: Mapping[str, int] | None = None,
    ) -> None:
        """A few users per script call (USERS_PER_SCRIPT)."""
        seqs = history_seqs or {}
        calls: list[_ScriptCall] = []
        for chunk in self._chunks(list(vectors)):
            keys: list[str] = []
            args: list[Any] = [self.vector_ttl]
            for user_id in chunk:
                keys += [
                    vector_key(self._prefix, user_id, self.vector_encoding),
                    self._key(user_id, "h"),
                ]
                args += [
                    tagged_vector(model_version, vectors[user_id], self.vector_encoding),
                    seqs.get(user_id, ""),
                ]
            calls.append((keys, args))
        with self._writing(vectors):
            await _checked(_run(self._redis, self._set_vectors, calls), "writing user vectors")

    async def add_histories(
        self, interactions_by_user: Mapping[str, list[Interaction]]
    ) -> dict[str, UserHistory]:
        """A few users per script call (USERS_PER_SCRIPT)."""
        calls: list[_ScriptCall] = []
        chunks = self._chunks(list(interactions_by_user))
        for chunk in chunks:
            keys: list[str] = []
            args: list[Any] = [self.history_ttl, self.history_max_items, FORGOTTEN_FIELD]
            for user_id in chunk:
                interactions = interactions_by_user[user_id]
                keys += [self._key(user_id, "h"), self._key(user_id, "t")]
                args.append(len(interactions))
                for event in interactions:
                    args += [history_field(event), event.weight, event.timestamp_ms]
            calls.append((keys, args))
        with self._writing(interactions_by_user):
            replies = await _checked(
                _run(self._redis, self._add_histories, calls), "updating user histories"
            )
        flats = [flat for reply in replies for flat in reply]
        ordered = [user_id for chunk in chunks for user_id in chunk]
        return {
            user_id: _decode_history(flat) for user_id, flat in zip(ordered, flats, strict=True)
        }

    def _chunks(self, user_ids: list[str]) -> list[list[str]]:
        """``user_ids`` in groups of up to USERS_PER_SCRIPT, one script call each: in order on
        one server; on a cluster grouped by the slot of their keys first."""
        if not self._by_slot:
            return list(_chunks(user_ids))
        by_slot: dict[int, list[str]] = {}
        for user_id in user_ids:
            slot = key_slot(self._key(user_id, "h").encode())
            by_slot.setdefault(slot, []).append(user_id)
        return [chunk for group in by_slot.values() for chunk in _chunks(group)]

    async def forget(self, user_id: str) -> bool:
        """One script: the user's keys deleted and the tombstone written atomically."""
        keys = [
            vector_key(self._prefix, user_id, "float16"),
            vector_key(self._prefix, user_id, "float32"),
            self._key(user_id, "h"),
            self._key(user_id, "t"),
        ]
        args: list[Any] = [self.forgotten_ttl, FORGOTTEN_FIELD, int(time.time() * 1000)]
        with self._writing([user_id]):
            held = await _checked(self._forget(keys=keys, args=args), "forgetting a user")
        return int(held) > 0

    @contextlib.contextmanager
    def _writing(self, user_ids: Iterable[str]) -> Iterator[None]:
        """Around a write of these users' state: out of the cache before it, so that no
        read meanwhile is kept, and after it (the write failed or not), so that this
        process's next read sees it, whether Redis's invalidation came first or not."""
        if self._cache is None:
            yield
            return
        users = list(user_ids)
        self._cache.drop(users)
        try:
            yield
        finally:
            self._cache.drop(users)

    async def ping(self) -> bool:
        try:
            return bool(await _checked(self._redis.ping(), "ping"))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        if self._tracker is not None:
            self._tracker.cancel()
            await asyncio.wait([self._tracker])  # ended, however it ended
        await self._redis.aclose()


class RedisEventLog:
    """EventLog in a Redis Stream, idempotent on event_id (markers kept ``dedupe_ttl`` s: a
    retry later than that is accepted as new).

    Durability is Redis's: with AOF ``appendfsync everysec`` up to one second of acknowledged
    events can be lost on a crash of the Redis host (see docs/deploy for the settings).

    A failed append is OutcomeUnknown, never "not recorded": a script whose reply timed out may
    have run (or still run, e.g. on a paused server). The markers make the retry safe: the
    stream gets each event once, and the events an earlier call logged without confirming the
    users' state come back as ``pending`` to be applied."""

    def __init__(
        self, client: AsyncClient, prefix: str, dedupe_ttl: int, partitions: int = 1
    ) -> None:
        self._redis = client
        self.partitions = EventPartitions(prefix, partitions)
        self.stream_key = self.partitions.stream_key(0)  # the only one when partitions == 1
        self._layouts_key = event_layouts_key(prefix)
        self._layout_recorded = False
        self.dedupe_ttl = dedupe_ttl
        self._append = client.register_script(_APPEND_EVENTS)
        self._confirm = client.register_script(_CONFIRM_EVENTS)

    async def append(self, interactions: list[Interaction]) -> AppendResult:
        """One script call per partition that the events fall in (in one pipeline when
        several): each checks and writes the markers and the stream of one slot."""
        positions = self._by_partition(interactions)
        calls: list[_ScriptCall] = []
        for partition, numbers in positions.items():
            args: list[Any] = [self.dedupe_ttl]
            for number in numbers:
                event = interactions[number]
                args += [event.event_id, interaction_to_json(event)]
            keys = [
                self.partitions.stream_key(partition),
                self.partitions.marker_prefix(partition),
            ]
            calls.append((keys, args))
        try:
            if not self._layout_recorded:
                # Before the first event: the ingest worker then knows where to look.
                await self._redis.sadd(self._layouts_key, self.partitions.count)
                self._layout_recorded = True
            replies = await _run(self._redis, self._append, calls)
        except REDIS_ERRORS as exc:
            raise OutcomeUnknown(
                f"redis: appending events: no answer ({exc or type(exc).__name__})"
            ) from exc
        fresh: list[int] = []
        pending: list[int] = []
        for numbers, (fresh_here, pending_here) in zip(positions.values(), replies, strict=True):
            fresh += [numbers[int(p) - 1] for p in fresh_here]
            pending += [numbers[int(p) - 1] for p in pending_here]
        accepted = [interactions[number] for number in sorted(fresh)]
        resumed = [interactions[number] for number in sorted(pending)]
        return AppendResult(accepted, len(interactions) - len(accepted), resumed)

    async def confirm(self, events: list[Interaction]) -> None:
        calls: list[_ScriptCall] = [
            ([self.partitions.marker_prefix(partition)], [events[n].event_id for n in numbers])
            for partition, numbers in self._by_partition(events).items()
        ]
        await _checked(_run(self._redis, self._confirm, calls), "confirming events")

    def _by_partition(self, events: list[Interaction]) -> dict[int, list[int]]:
        """The positions in ``events`` of each partition's events, in order."""
        positions: dict[int, list[int]] = {}
        for number, event in enumerate(events):
            positions.setdefault(self.partitions.of_user(event.user_id), []).append(number)
        return positions

    async def close(self) -> None:
        await self._redis.aclose()


def _chunks(user_ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(user_ids), USERS_PER_SCRIPT):
        yield user_ids[start : start + USERS_PER_SCRIPT]


_ScriptCall = tuple[list[str], list[Any]]


async def _run(client: AsyncClient, script: AsyncScript, calls: list[_ScriptCall]) -> list[Any]:
    """The replies of ``script`` run once per (keys, args). One call goes straight out
    (EVALSHA, reloaded on NOSCRIPT); several go in one non-transactional pipeline. One
    server's pipeline first checks that the script is loaded (one round trip more); a
    cluster's does not, so a call that met a node without it (new, or a promoted replica:
    script caches are not replicated) answers NOSCRIPT and runs again alone, which loads it.
    Only those run again: the others have run, and a history update must not run twice."""
    if len(calls) == 1:
        keys, args = calls[0]
        return [await script(keys=keys, args=args)]
    if not calls:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            if isinstance(client, redis.RedisCluster):
                # redis-py blocks pipe.evalsha on a cluster; the command itself is routed by
                # its first key like any other.
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            else:
                await script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for number, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            keys, args = calls[number]
            replies[number] = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            if isinstance(client, redis.RedisCluster) and isinstance(
                reply, redis.RedisCluster.ERRORS_ALLOW_RETRY
            ):
                # A node failed: unlike a single command, a pipeline that does not raise
                # leaves the client's slot map as it was (the failed master's, forever).
                # Closing makes the next call read the topology afresh (after a failover,
                # the promoted replica's).
                await client.aclose()
            raise reply
    return replies


def _decode_history(flat: list[Any]) -> UserHistory:
    """A history from a script's HGETALL reply: item, weight, item, weight, ..., with the
    sequence number under the empty field (item ids are never empty), dislikes and the
    forgotten tombstone under NUL-prefixed fields (recsvc.core.state), rare enough that the
    common case is one dict insert per item."""
    items: dict[str, float] = {}
    seq = 0
    marked = False
    for item, value in zip(flat[::2], flat[1::2], strict=True):
        if item == b"" or item == "":
            seq = int(value)
            continue
        name = item.decode() if isinstance(item, bytes) else str(item)
        marked = marked or name[0] == "\x00"
        items[name] = float(value)
    if not marked:
        return UserHistory(items, seq)
    forgotten = FORGOTTEN_FIELD in items
    positives, dislikes = split_history(items.items())
    return UserHistory(positives, seq, dislikes, forgotten)
