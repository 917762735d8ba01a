"""The Recommend path in-process: CPU per call of RecommendationService.recommend with the
protobuf conversion both ways (in-process user store, no gRPC), one call at a time and 32 at
once (micro-batches of 32), and hnswlib's cost per query by ef. Optionally, the CPU of one
redis-py GET (what a round trip costs this machine). Prints one JSON line.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/recommend_path.py [--items 100000]
        [--redis-url redis://127.0.0.1:6379/9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import make_model_store  # noqa: E402

from recsvc._proto.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc.api import convert  # noqa: E402
from recsvc.backends import event_log_path  # noqa: E402
from recsvc.config import load_settings  # noqa: E402
from recsvc.core.holder import RecommenderHolder  # noqa: E402
from recsvc.server import build_service, load_recommender  # noqa: E402
from recsvc.store.file_log import FileEventLog  # noqa: E402
from recsvc.store.memory import InMemoryUserStore  # noqa: E402

USERS = 20_000


async def per_call_us(service: Any, calls: int, concurrency: int) -> float:
    """CPU microseconds per Recommend call (request conversion, service, response)."""

    async def one() -> None:
        request = pb.RecommendRequest(user_id=f"u{random.randrange(USERS)}", k=10)
        result = await service.recommend(convert.recommend_query_from_pb(request), 5.0)
        convert.recommendation_to_pb(result)

    async def worker() -> None:
        for _ in range(calls // concurrency):
            await one()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


def knn_us(index, queries: np.ndarray, k: int, ef: int) -> float:
    """hnswlib's microseconds per query, one query per call."""
    index.hnsw.set_ef(ef)
    started = time.process_time()
    for query in queries:
        index.hnsw.knn_query(query[None, :], k=k, num_threads=1)
    return (time.process_time() - started) / len(queries) * 1e6


async def redis_get_us(url: str, calls: int = 3000) -> float:
    from recsvc.store.redis_backend import connect

    client = connect(url, 1.0, 1.0)
    await client.get("bench:nothing")
    started = time.process_time()
    for _ in range(calls):
        await client.get("bench:nothing")
    used = time.process_time() - started
    await client.aclose()
    return used / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--calls", type=int, default=6400)
    parser.add_argument("--redis-url", help="also measure one redis-py GET")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recsvc-path-"))
    make_model_store(root / "store", args.items, 100_000, args.dim)
    holder = RecommenderHolder(load_recommender(load_settings(model_store=root / "store")))
    recommender = holder.current()
    store = InMemoryUserStore(500, 86400, 86400)
    vectors = np.random.default_rng(1).normal(size=(USERS, args.dim)).astype(np.float32)
    await store.put_vectors(recommender.version, {f"u{n}": vectors[n] for n in range(USERS)})
    settings = load_settings(model_store=root / "store")
    service = build_service(settings, holder, (store, FileEventLog(event_log_path(settings))))
    await per_call_us(service, 500, 1)  # warm up
    index = recommender.model.user_index
    served_ef = index.hnsw.ef if index.hnsw is not None else 0
    result = {
        "bench": "recommend_path",
        "items": args.items,
        "dim": args.dim,
        "served_ef": served_ef,
        "us_per_call_one_at_a_time": round(await per_call_us(service, args.calls // 2, 1), 1),
        "us_per_call_32_at_once": round(await per_call_us(service, args.calls, 32), 1),
    }
    if index.hnsw is not None:
        queries = np.random.default_rng(2).normal(size=(1000, args.dim)).astype(np.float32)
        result["knn_us_per_query"] = {
            f"k{k}_ef{ef}": round(knn_us(index, queries, k, ef), 1)
            for k in (10, 32)
            for ef in (16, 32, 64)
        }
        index.hnsw.set_ef(served_ef)
    if args.redis_url:
        result["redis_py_get_cpu_us"] = round(await redis_get_us(args.redis_url), 1)
    result["machine"] = f"{platform.machine()}, {platform.python_version()}"
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
