"""Redis clients from a URL: one server or a Redis Cluster, the same way for every process.

- ``redis://``, ``rediss://``, ``unix://``: one Redis server (redis-py's ``from_url``).
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with
  TLS): a Redis Cluster, found from any of the listed nodes (redis-py's cluster client, which
  follows MOVED/ASK redirections and a failover's new topology). A cluster has database 0 only.

Both kinds raise the exceptions of :data:`REDIS_ERRORS` when Redis fails; callers catch that
tuple rather than naming redis-py's classes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

# What a Redis call raises when Redis fails: RedisError (its connection and timeout errors
# included), the cluster client's own RedisClusterException (no node covers a slot, keys of
# several slots in one command), OSError (a socket failing outside redis-py's wrapping;
# TimeoutError is one).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster
SyncClient = redis.Redis | redis.RedisCluster


class _AsyncCluster(redis.asyncio.RedisCluster):
    """redis-py's asyncio cluster client, made to learn the slot map before it routes a
    command: redis-py 8.1 picks a command's node before it initialises (until then it does
    not know that the command has keys), so commands issued at once on a fresh client could
    go to wrong nodes, and the redirections re-initialised the client under one another's
    connections ("Connection closed by server" and an AttributeError inside its connect)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()  # returns at once when initialised
        return await super().execute_command(*args, **kwargs)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.startswith(CLUSTER_SCHEMES)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of each node a cluster URL lists (port 6379 where none is given)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for node in netloc.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon:
            host, port = port, "6379"
        if not host or not port.isdigit():
            raise ValueError(f"cluster node {node!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _cluster_options(url: str) -> dict[str, Any]:
    """Credentials, TLS and query options of a cluster URL, as cluster client arguments."""
    parts = urlsplit(url)
    user_info = parts.netloc.rpartition("@")[0]
    options: dict[str, Any] = {"ssl": parts.scheme == "rediss+cluster"}
    if user_info:
        user, colon, password = user_info.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only")
    for name, value in parse_qsl(parts.query):
        if name in ("password", "username"):
            options[name] = value
    return options


def async_client(
    url: str, timeout: float, connect_timeout: float, retries: int = 1
) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """An asyncio client with bounded socket timeouts and ``retries`` quick retries of a failed
    command (the caller's deadline bounds them all); reconnection is automatic on the next
    call. A cluster client also re-reads the topology after a failover."""
    retry = AsyncRetry(ExponentialBackoff(cap=0.01, base=0.001), retries)
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 5,
        "retry": retry,
    }
    if is_cluster_url(url):
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster_nodes(url)]
        return _AsyncCluster(startup_nodes=nodes, **common, **_cluster_options(url))
    return redis.asyncio.Redis.from_url(url, **common)


def sync_client(
    url: str, timeout: float | None = None, connect_timeout: float | None = None
) -> redis.Redis | redis.RedisCluster:
    """A blocking client (the workers, tests and benchmarks); no socket timeout by default."""
    common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if is_cluster_url(url):
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in cluster_nodes(url)]  # type: ignore[no-untyped-call]
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 10)
        return redis.RedisCluster(
            startup_nodes=nodes, retry=retry, **common, **_cluster_options(url)
        )
    return redis.Redis.from_url(url, **common)


def tracking_client(url: str, connect_timeout: float) -> redis.asyncio.Redis:
    """A client of one Redis server speaking RESP2, for a Pub/Sub connection that receives
    client-tracking invalidations as messages (recsvc.store.state_cache)."""
    return redis.asyncio.Redis.from_url(
        url, protocol=2, socket_connect_timeout=connect_timeout, socket_timeout=None
    )
