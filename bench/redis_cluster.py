"""Event-log throughput on a local 3-master Redis Cluster: 1 partition (the single stream of
old, the baseline) against N partitions (store.event_partitions), interleaved A B A B.

For each run: RedisEventLog appends (batches of --batch events of random users, --concurrency
concurrent appends in one asyncio client) for --seconds, then the ingest worker's
PartitionedStreamIngester drains them to a Parquet interaction store. Reported: append and
ingest events/s (medians over --rounds), and how the masters' CPU time (INFO cpu) spread over
the three of them while appending: with one stream one master does all the work. An append
that fails (OutcomeUnknown) is retried with the same event ids, as a caller would; the retries
are counted.

    .venv/bin/python bench/redis_cluster.py [--partitions 3] [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.core.state import EventType, Interaction  # noqa: E402
from recsvc.data.interaction_store import InteractionStore  # noqa: E402
from recsvc.errors import OutcomeUnknown  # noqa: E402
from recsvc.store.clients import sync_client  # noqa: E402
from recsvc.store.names import EventPartitions  # noqa: E402
from recsvc.store.redis_backend import RedisEventLog, connect  # noqa: E402
from recsvc.testing import redis_cluster  # noqa: E402
from workers.ingest import PartitionedStreamIngester  # noqa: E402


def masters_cpu(url: str) -> dict[str, float]:
    """CPU seconds (user + sys) each master has used so far."""
    client = sync_client(url)
    try:
        return {
            node.name: float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
            for node in client.get_primaries()
            for info in [client.info("cpu", target_nodes=node)]
        }
    finally:
        client.close()


async def append_for(
    url: str, partitions: int, args: argparse.Namespace, run: int
) -> tuple[int, int]:
    client = connect(url, 5.0, 5.0)
    log = RedisEventLog(client, "bench", 3600, partitions=partitions)
    stop_at = time.perf_counter() + args.seconds
    appended = retries = 0

    async def writer(w: int) -> None:
        nonlocal appended, retries
        n = 0
        while time.perf_counter() < stop_at:
            batch = [
                Interaction(
                    f"u{(w * 7919 + n * 31 + k * 13) % 100_000}",
                    f"i{(n * 131 + k * 17) % 3000}",
                    EventType.VIEW,
                    1.0,
                    1_767_225_600_000 + n,
                    f"r{run}-w{w}-{n}-{k}",
                )
                for k in range(args.batch)
            ]
            while True:  # as a RecordInteractions caller does: the same ids again
                try:
                    result = await log.append(batch)
                    break
                except OutcomeUnknown:
                    retries += 1
            # Pending: logged by a call that failed and was retried (logged once).
            appended += len(result.accepted) + len(result.pending)
            n += 1

    await asyncio.gather(*(writer(w) for w in range(args.concurrency)))
    await log.close()
    return appended, retries


def one_run(url: str, partitions: int, args: argparse.Namespace, run: int) -> dict[str, Any]:
    client = sync_client(url)
    client.flushall()
    cpu_before = masters_cpu(url)
    started = time.perf_counter()
    appended, retries = asyncio.run(append_for(url, partitions, args, run))
    append_seconds = time.perf_counter() - started
    cpu = {name: used - cpu_before[name] for name, used in masters_cpu(url).items()}
    with tempfile.TemporaryDirectory() as tmp:
        store = InteractionStore(Path(tmp) / "store")
        ingester = PartitionedStreamIngester(
            client, EventPartitions("bench", partitions), store, 5000, consumer="bench"
        )
        started = time.perf_counter()
        ingested = ingester.run_once()
        ingest_seconds = time.perf_counter() - started
    client.close()
    assert ingested == appended, (ingested, appended)
    busiest = max(cpu.values()) / max(1e-9, sum(cpu.values()))
    return {
        "partitions": partitions,
        "append_events_per_s": appended / append_seconds,
        "ingest_events_per_s": ingested / ingest_seconds,
        "busiest_master_cpu_share": busiest,
        "masters_cpu_s": sorted(round(v, 2) for v in cpu.values()),
        "append_retries": retries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, redis_cluster(Path(tmp)) as cluster:
        for _ in range(args.rounds):
            for partitions in (1, args.partitions):  # A B A B
                runs.append(one_run(cluster.url, partitions, args, len(runs)))
                print(json.dumps(runs[-1]), file=sys.stderr)

    def median(partitions: int, field: str) -> float:
        return statistics.median(r[field] for r in runs if r["partitions"] == partitions)

    fields = ("append_events_per_s", "ingest_events_per_s", "busiest_master_cpu_share")
    result = {
        "bench": "redis_cluster",
        "masters": 3,
        "replicas_per_master": 1,
        **{f"single_{f}": round(median(1, f), 3) for f in fields},
        **{f"partitioned_{f}": round(median(args.partitions, f), 3) for f in fields},
        "append_ratio": round(median(args.partitions, fields[0]) / median(1, fields[0]), 2),
        "ingest_ratio": round(median(args.partitions, fields[1]) / median(1, fields[1]), 2),
        "conditions": {
            "partitions": args.partitions,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
