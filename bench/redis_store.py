"""The Redis user store's calls for one RecordInteractions of --users events (one per user) and
one Recommend micro-batch read, against the plain redis-py pipeline of one command per user
(the baseline, as the store did it before): wall time per call as the client sees it (median of
--rounds) and the Redis server's CPU time per call (INFO cpu).

Runs its own Redis server on a free port.

    .venv/bin/python bench/redis_store.py [--users 500] [--rounds 12] [--dim 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.core.state import EventType, Interaction  # noqa: E402
from recsvc.store.codec import vector_to_bytes  # noqa: E402
from recsvc.store.redis_backend import (  # noqa: E402
    RedisEventLog,
    RedisUserStore,
    connect,
    vector_key,
)
from recsvc.testing import redis_server  # noqa: E402


def server_cpu_seconds(raw: redis.Redis) -> float:
    """CPU the Redis server used so far (its network handling included). Not the commandstats:
    they count a script's commands once in the script's time and again on their own."""
    cpu = raw.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def measure(
    raw: redis.Redis, rounds: int, call: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    """Median wall milliseconds per call, and the Redis server's CPU milliseconds per call."""
    timings = []
    cpu_before = server_cpu_seconds(raw)
    for n in range(rounds):
        started = time.perf_counter()
        await call(n)
        timings.append(time.perf_counter() - started)
    redis_ms = (server_cpu_seconds(raw) - cpu_before) * 1000 / rounds
    return {
        "wall_ms": round(statistics.median(timings) * 1000, 2),
        "redis_ms": round(redis_ms, 2),
    }


async def run(url: str, n_users: int, rounds: int, dim: int) -> dict[str, Any]:
    raw = redis.Redis.from_url(url)
    client = connect(url, 5.0, 1.0)
    store = RedisUserStore(client, "b", 500, 600, 600)
    log = RedisEventLog(client, "b", 600)
    users = [f"u{k}" for k in range(n_users)]
    vectors = {u: np.ones(dim, np.float32) for u in users}

    def events(n: int) -> dict[str, list[Interaction]]:
        return {
            u: [
                Interaction(u, f"i{(n * 131 + k * 17) % 3000}", EventType.VIEW, 1.0, n, f"e{n}-{k}")
            ]
            for k, u in enumerate(users)
        }

    async def baseline_vectors(n: int) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for user, vector in vectors.items():
                pipe.set(vector_key("b", user, "float32"), vector_to_bytes(vector), ex=600)
            await pipe.execute()

    async def baseline_states(n: int) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.get(vector_key("b", user, "float32"))
                pipe.hgetall(f"b:{{u:{user}}}:h")
            await pipe.execute()

    results = {
        "append": await measure(
            raw, rounds, lambda n: log.append([e for v in events(n).values() for e in v])
        ),
        "add_histories": await measure(raw, rounds, lambda n: store.add_histories(events(n))),
        "put_vectors": await measure(raw, rounds, lambda n: store.put_vectors("v1", vectors)),
        "put_vectors_baseline_set_per_user": await measure(raw, rounds, baseline_vectors),
        "get_states": await measure(raw, rounds, lambda n: store.get_states(users, "v1")),
        "get_states_baseline_two_commands_per_user": await measure(raw, rounds, baseline_states),
    }
    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    with redis_server() as url:
        results = asyncio.run(run(url, args.users, args.rounds, args.dim))
    print(
        json.dumps(
            {
                "bench": "redis_store",
                "users": args.users,
                "rounds": args.rounds,
                "dim": args.dim,
                **results,
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
