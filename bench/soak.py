"""Soak: rounds of record -> ingest -> train -> swap against a real Redis, with what each
round leaves behind.

A real `recsvc serve` (Redis mode) gets RecordInteractions at ``--rate`` events/s and
Recommend at ``--recommend-rate`` calls/s for ``--seconds`` each round; then the ingest
worker's round and the train worker's round (``build_ingest_round``, ``build_train_round``,
forced) run in this process, and the round ends when the server serves the new version. The
data is generated: users with two favourite categories (recsvc.data.demo) imported once as
history, then events drawn from the same users' tastes, so the holdout nDCG has a reason to
stay put. Printed per round, one JSON line each: Redis used_memory (the whole server) and the
bytes and keys under this run's key prefix by kind, the event stream's length, the interaction
store and model store on disk, the server's RSS, and the published model's holdout ndcg@10.
The last line is a summary: the least-squares slope of each figure over the last
``--trend-rounds`` rounds and the nDCG of the first and last model.

Keys are written under a prefix of their own (``soak-<pid>``) in ``--redis-url``'s database
and deleted at the end; nothing else in that database is touched.

    .venv/bin/python bench/soak.py [--rounds 30] [--rate 200] [--seconds 5]
        [--redis-url redis://127.0.0.1:6379/0] [--dedupe-ttl 120] [--vector-ttl 120]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc._proto.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402
from recsvc.artifacts import ModelStore  # noqa: E402
from recsvc.config import Settings  # noqa: E402
from recsvc.data.demo import CATEGORIES, DemoData, generate_demo_data  # noqa: E402
from recsvc.store.names import event_stream_key  # noqa: E402
from recsvc.testing import recsvc_command, running_server, server_env  # noqa: E402
from workers.ingest import build_ingest_round  # noqa: E402
from workers.retrain import build_train_round  # noqa: E402

EVENT_TYPES = [pb.EVENT_TYPE_VIEW] * 8 + [pb.EVENT_TYPE_CLICK] * 3 + [pb.EVENT_TYPE_PURCHASE]


class Traffic:
    """Events drawn like the demo history: a user's favourite categories 85% of the time,
    items by their popularity in the history."""

    def __init__(self, data: DemoData, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.users = sorted(data.favourite_categories)
        self.favourites = data.favourite_categories
        with data.items.open() as handle:
            category = {row["item_id"]: row["category"] for row in csv.DictReader(handle)}
        counts = dict.fromkeys(category, 1)
        with data.interactions.open() as handle:
            for row in csv.DictReader(handle):
                counts[row["item_id"]] = counts.get(row["item_id"], 1) + 1
        self.by_category: dict[str, tuple[list[str], list[int]]] = {}
        for name in CATEGORIES:
            items = [item for item, c in category.items() if c == name]
            self.by_category[name] = (items, [counts[item] for item in items])
        self.sent = 0

    def event(self) -> pb.Interaction:
        user = self.rng.choice(self.users)
        if self.rng.random() < 0.85:
            name = self.rng.choice(self.favourites[user])
        else:
            name = self.rng.choice(CATEGORIES)
        items, weights = self.by_category[name]
        item = self.rng.choices(items, weights)[0]
        self.sent += 1
        return pb.Interaction(
            user_id=user,
            item_id=item,
            event_type=self.rng.choice(EVENT_TYPES),
            event_id=f"soak-{os.getpid()}-{self.sent}",
        )


async def drive(
    target: str, traffic: Traffic, seconds: float, rate: float, batch: int, recommend_rate: float
) -> tuple[int, int]:
    """RecordInteractions batches at ``rate`` events/s and Recommend at ``recommend_rate``
    calls/s for ``seconds``, paced by the clock; returns events accepted and calls answered."""
    accepted = answered = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        started = time.monotonic()

        async def record() -> None:
            nonlocal accepted
            sent = 0
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(elapsed * rate) - sent
                if due < batch:
                    await asyncio.sleep(batch / rate / 4)
                    continue
                events = [traffic.event() for _ in range(due)]
                sent += due
                response = await stub.RecordInteractions(
                    pb.RecordInteractionsRequest(interactions=events), timeout=30
                )
                accepted += response.accepted

        async def recommend() -> None:
            nonlocal answered
            calls = 0
            while (elapsed := time.monotonic() - started) < seconds:
                if calls >= elapsed * recommend_rate:
                    await asyncio.sleep(1 / recommend_rate / 2)
                    continue
                calls += 1
                user = traffic.rng.choice(traffic.users)
                await stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=30)
                answered += 1

        await asyncio.gather(record(), *([recommend()] if recommend_rate > 0 else []))
    return accepted, answered


def wait_for_version(target: str, version: str, timeout: float = 120.0) -> float:
    """Seconds until the server answers GetModelInfo with ``version``."""
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        while time.monotonic() - started < timeout:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            if info.model_version == version:
                return time.monotonic() - started
            time.sleep(0.1)
    raise RuntimeError(f"the server did not swap to {version} within {timeout:.0f}s")


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the server may run worker processes)."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def key_kind(key: bytes, prefix: str) -> str:
    """Which of the documented key families (recsvc/store/redis_backend.py) ``key`` is."""
    rest = key.decode(errors="replace")[len(prefix) + 1 :]
    if rest.startswith("{ev}:id:"):
        return "event_ids"
    if rest.startswith("{ev}:"):
        return "stream"
    if rest.startswith("{u:"):
        return "vectors" if rest.rsplit(":", 1)[-1] in ("v16", "v32") else "histories"
    return "items" if rest.startswith("{items}") else "other"


def redis_figures(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """used_memory of the server, and keys and bytes (MEMORY USAGE) under ``prefix`` by kind."""
    keys: dict[str, int] = {}
    size: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = key_kind(key, prefix)
        keys[kind] = keys.get(kind, 0) + 1
        size[kind] = size.get(kind, 0) + int(client.memory_usage(key, samples=0) or 0)
    stream = event_stream_key(prefix)
    return {
        "redis_used_memory": int(client.info("memory")["used_memory"]),
        "prefix_bytes": sum(size.values()),
        "keys": dict(sorted(keys.items())),
        "bytes": dict(sorted(size.items())),
        "stream_length": int(client.xlen(stream)) if client.exists(stream) else 0,
    }


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.delete(*batch))
            batch = []
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


def slope(values: list[float]) -> float:
    """Least-squares change per round."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return num / sum((x - mean_x) ** 2 for x in range(n))


def trends(rows: list[dict[str, Any]], last: int) -> dict[str, Any]:
    """Each figure's slope per round over the last ``last`` rounds, and that slope as a
    share of the figure's mean there (per round): a level figure has a share near 0."""
    tail = rows[-last:]
    out: dict[str, Any] = {"rounds": len(tail)}
    for name in (
        "redis_used_memory",
        "prefix_bytes",
        "stream_length",
        "server_rss",
        "interaction_store_bytes",
        "model_store_bytes",
        "ndcg@10",
    ):
        values = [float(row[name]) for row in tail]
        mean = sum(values) / len(values)
        per_round = slope(values)
        out[name] = {
            "slope_per_round": round(per_round, 6),
            "share_per_round": round(per_round / mean, 6) if mean else 0.0,
            "first": values[0],
            "last": values[-1],
        }
    return out


def run(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    prefix = args.prefix or f"soak-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        data = generate_demo_data(
            root / "data", num_users=args.users, num_items=args.items, seed=args.seed
        )
        models, store = root / "models", root / "interaction-store"
        env = {
            "RECSVC_REDIS_URL": args.redis_url,
            "RECSVC_STORE__KEY_PREFIX": prefix,
            "RECSVC_STORE__DEDUPE_TTL_SECONDS": str(args.dedupe_ttl),
            "RECSVC_STORE__VECTOR_TTL_SECONDS": str(args.vector_ttl),
            "RECSVC_STORE__HISTORY_MAX_ITEMS": str(args.history_max_items),
            "RECSVC_SERVING__MODEL_POLL_SECONDS": "0.5",
            "RECSVC_SERVER__DRAIN_SECONDS": "0",
            "RECSVC_LOG_LEVEL": "WARNING",
        }
        settings = Settings(
            redis_url=args.redis_url,
            model_store=models,
            log_level="WARNING",
            store={
                "key_prefix": prefix,
                "dedupe_ttl_seconds": args.dedupe_ttl,
                "vector_ttl_seconds": args.vector_ttl,
            },
            workers={"interaction_store": store, "keep_versions": 3},
            train={"factors": args.factors, "iterations": args.iterations, "threads": 2},
            index={"recall_sample": 50},
        )
        client = redis.Redis.from_url(args.redis_url)
        stack.callback(client.close)
        stack.callback(delete_prefix, client, prefix)
        subprocess.run(
            recsvc_command(
                "import",
                "--interactions",
                str(data.interactions),
                "--interaction-store",
                str(store),
            ),
            env=server_env(**env),
            check=True,
            capture_output=True,
        )
        ingest = build_ingest_round(settings)
        train = build_train_round(settings, None, None, force=True)
        first = train()  # the first model, from the imported history alone
        assert first is not None, "the first training published nothing"
        server = stack.enter_context(
            running_server(
                ["serve", "--model-store", str(models), "--port", "0"], server_env(**env)
            )
        )
        wait_for_version(server.target, first)
        traffic = Traffic(data, args.seed)
        model_store = ModelStore(models)
        ndcg = float(model_store.read_manifest(first).metrics["ndcg@10"])
        yield {"round": 0, "model": first, "ndcg@10": ndcg, **redis_figures(client, prefix)}
        for number in range(1, args.rounds + 1):
            started = time.monotonic()
            accepted, answered = asyncio.run(
                drive(
                    server.target,
                    traffic,
                    args.seconds,
                    args.rate,
                    args.batch,
                    args.recommend_rate,
                )
            )
            ingested = ingest()
            version = train()
            swap = wait_for_version(server.target, version) if version else 0.0
            if version is not None:
                ndcg = float(model_store.read_manifest(version).metrics["ndcg@10"])
            yield {
                "round": number,
                "recorded": accepted,
                "recommended": answered,
                "ingested": ingested,
                "model": version or "refused",
                "ndcg@10": round(ndcg, 4),
                **redis_figures(client, prefix),
                "interaction_store_bytes": tree_bytes(store),
                "model_store_bytes": tree_bytes(models),
                "server_rss": rss_bytes(server.process.pid),
                "swap_s": round(swap, 2),
                "round_s": round(time.monotonic() - started, 1),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s while recording")
    parser.add_argument("--batch", type=int, default=20, help="events per RecordInteractions")
    parser.add_argument("--recommend-rate", type=float, default=20.0, help="Recommend calls/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="recording time per round")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("RECSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="a real Redis; keys go under --prefix and are deleted at the end",
    )
    parser.add_argument("--prefix", help="key prefix (default soak-<pid>)")
    parser.add_argument(
        "--dedupe-ttl",
        type=int,
        default=120,
        help="RECSVC_STORE__DEDUPE_TTL_SECONDS: the default one day, scaled to the soak's minutes",
    )
    parser.add_argument(
        "--vector-ttl",
        type=int,
        default=120,
        help="RECSVC_STORE__VECTOR_TTL_SECONDS: the default 7 days, scaled likewise",
    )
    parser.add_argument(
        "--history-max-items",
        type=int,
        default=500,
        help="RECSVC_STORE__HISTORY_MAX_ITEMS: the cap that bounds each user's Redis history",
    )
    parser.add_argument(
        "--trend-rounds", type=int, default=20, help="rounds the summary's slopes cover"
    )
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for row in run(args):
        print(json.dumps(row), flush=True)
        if row["round"] > 0:
            rows.append(row)
    conditions = {
        key: getattr(args, key)
        for key in ("rounds", "rate", "batch", "recommend_rate", "seconds", "users", "items")
    }
    print(
        json.dumps(
            {
                "bench": "soak",
                **conditions,
                "dedupe_ttl_s": args.dedupe_ttl,
                "vector_ttl_s": args.vector_ttl,
                "history_max_items": args.history_max_items,
                "minutes": round((time.monotonic() - started) / 60, 1),
                "trend": trends(rows, args.trend_rounds),
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
