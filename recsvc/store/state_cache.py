"""Users' Redis state kept in the serving process, current because Redis says what changed.

Redis's client tracking in broadcast mode (``CLIENT TRACKING on BCAST PREFIX <user keys>``)
sends this process the name of every user key that any client changes, and every one that
expires or is evicted; the cache drops those users. A Recommend for a user whose state is held
here then needs no round trip to Redis.

Coherence, in the order things happen:
- A read's result is kept only for the users of whom no invalidation arrived while it was in
  flight (an epoch counter): a change that raced the read cannot leave the old state behind.
- This process's own writes drop their users before and after the write, so a Recommend
  after a RecordInteractions on the same server sees it, whatever order Redis's reply and its
  invalidation arrive in.
- Another server's write reaches this one as an invalidation, usually within a millisecond;
  until then this one may answer from the state before it.
- While the tracking connection is down (or silent past a few health checks) nothing is held
  and every read goes to Redis; the cache starts empty again when tracking is back.

Only for one Redis server: on a Redis Cluster each node would need its own tracking
connection, and the store reads Redis every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from recsvc.store.clients import REDIS_ERRORS

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = "__redis__:invalidate"

# A cached user: the stored vector's bytes (None: none stored) and the decoded history, as
# the store's reader wants them.
Entry = tuple[bytes | None, Any]


class StateCache:
    """At most ``max_users`` users' stored state (oldest first out), each for at most
    ``max_age`` seconds after it was read, valid while ``live``. The age limit bounds what an
    invalidation that never came (or a key whose TTL ran out without Redis deleting it yet)
    could leave behind."""

    def __init__(
        self,
        user_key_prefix: str,
        max_users: int,
        max_age: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user_key_prefix = user_key_prefix
        self._prefix = user_key_prefix.encode()
        self.max_users = max_users
        self.max_age = max_age
        self._clock = clock
        # user -> (entry, when it was read)
        self._entries: dict[str, tuple[Entry, float]] = {}
        self.epoch = 0  # advances with every invalidation
        # user -> the epoch of their latest invalidation; reads that began before ``_floor``
        # are not kept (what changed during them was not all recorded)
        self._changed: dict[str, int] = {}
        self._floor = 0
        self.live = False  # tracking is on: entries are current
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str) -> Entry | None:
        held = self._entries.get(user_id) if self.live else None
        if held is None:
            return None
        if self._clock() - held[1] > self.max_age:
            del self._entries[user_id]
            return None
        return held[0]

    def keep(self, entries: Iterable[tuple[str, Entry]], since_epoch: int) -> None:
        """Hold what a read that began at ``since_epoch`` returned, except the users that
        changed since it began."""
        if not self.live or since_epoch < self._floor:
            return
        held, changed, now = self._entries, self._changed, self._clock()
        for user_id, entry in entries:
            if changed.get(user_id, -1) > since_epoch:
                continue
            if user_id not in held and len(held) >= self.max_users:
                del held[next(iter(held))]
            held[user_id] = (entry, now)

    def drop(self, user_ids: Iterable[str]) -> None:
        """Forget these users (this process is writing their state)."""
        for user_id in user_ids:
            self._changed_now(user_id)

    def invalidate(self, keys: object) -> None:
        """Redis's invalidation: the keys that changed, or None for all (FLUSHDB). Anything
        else (a message some client PUBLISHed on the channel) drops everything too."""
        self.invalidations += 1
        if not isinstance(keys, list):
            self._forget_all()
            return
        for key in keys:
            if not isinstance(key, bytes):
                self._forget_all()
                return
            user_id = self.user_of(key)
            if user_id is not None:
                self._changed_now(user_id)

    def _changed_now(self, user_id: str) -> None:
        self.epoch += 1
        self._entries.pop(user_id, None)
        self._changed[user_id] = self.epoch
        if len(self._changed) > 4 * self.max_users + 1000:  # bounded: older reads lose out
            self._changed.clear()
            self._floor = self.epoch

    def _forget_all(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._changed.clear()
        self._floor = self.epoch

    def user_of(self, key: bytes) -> str | None:
        """The user of a key ``{prefix}:{u:<user>}:<suffix>``; None for another key."""
        if not key.startswith(self._prefix):
            return None
        end = key.rfind(b"}:")
        if end < len(self._prefix):
            return None
        return key[len(self._prefix) : end].decode(errors="replace")

    def start(self) -> None:
        """Tracking is on: hold entries from reads that begin now."""
        self._forget_all()
        self.live = True

    def stop(self) -> None:
        """Tracking is off: hold nothing (changes would go unseen)."""
        self.live = False
        self._forget_all()


async def track(
    cache: StateCache,
    pubsub_client: Callable[[], Any],
    check_seconds: float = 1.0,
    retry_seconds: float = 1.0,
) -> None:
    """Keep ``cache`` live while a tracking connection delivers Redis's invalidations; runs
    until cancelled. ``pubsub_client`` makes a RESP2 client (invalidations arrive as Pub/Sub
    messages on the connection's own redirect). The cache goes live only once Redis has
    confirmed the subscription (an invalidation sent before it would be lost). A connection
    silent for three health checks counts as lost. Whatever fails, the cache stops before
    the next try: retries back off from ``retry_seconds`` to 30 s (Redis may refuse tracking
    for good, e.g. an ACL without CLIENT TRACKING); a warning when tracking stops or first
    fails, not at every retry."""
    announced = False
    warned = False
    wait = retry_seconds
    while True:
        client = pubsub_client()
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(3 * check_seconds):  # a silent server
                await _subscribe(pubsub, cache.user_key_prefix)
            cache.start()
            if not announced:
                log.info("user state cache on (Redis client tracking)")
                announced = True
            warned = False
            wait = retry_seconds
            heard = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=check_seconds)
                if message is None:
                    if time.monotonic() - heard > 3 * check_seconds:
                        raise ConnectionError("the tracking connection went silent")
                    await pubsub.ping()
                    continue
                heard = time.monotonic()
                if message["type"] == "message":
                    cache.invalidate(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: off until tracking is back
            if not warned:
                log.warning(
                    "user state cache off until Redis tracking is back: %s",
                    exc or type(exc).__name__,
                    exc_info=not isinstance(exc, (*REDIS_ERRORS, TimeoutError)),
                )
                warned = True
            announced = False
        finally:
            cache.stop()
            # closing a broken connection may fail again; that is not news
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(wait)
        wait = min(2 * wait, 30.0)


async def _subscribe(pubsub: Any, prefix: str) -> None:
    """Turn on broadcast tracking of ``prefix`` redirected to this connection, subscribe to
    the invalidation channel and wait for Redis's confirmation."""
    await pubsub.execute_command("CLIENT", "ID")
    own_id = await pubsub.parse_response(block=True)
    if not isinstance(own_id, int):
        raise ConnectionError(f"CLIENT ID answered {own_id!r}")
    await pubsub.execute_command(
        "CLIENT", "TRACKING", "on", "REDIRECT", own_id, "BCAST", "PREFIX", prefix
    )
    reply = await pubsub.parse_response(block=True)
    if reply not in (b"OK", "OK", True):
        raise ConnectionError(f"CLIENT TRACKING answered {reply!r}")
    await pubsub.subscribe(INVALIDATE_CHANNEL)
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "subscribe":
            return
