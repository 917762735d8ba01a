"""Does storing user vectors as float16 change what users are recommended?

For the two encodings of `RECSVC_STORE__VECTOR_ENCODING`, on
  - the serving benchmark's model (bench/serve.py: 100k items x 64 factors, 20k users), through
    the real Recommender with the user's vector as the stored state, top-10 of --users users;
  - ml-100k (../shared/data/ml-100k/u.data), the stratified-item protocol and the tuned
    parameters of bench/results/ml100k-params.json: nDCG@10 of the model's user vectors as
    float32 and after a float16 round trip, and the overlap of the two top-10 lists per user;
  - Redis MEMORY USAGE of one cached user vector (dim 64) written by RedisUserStore.
Prints one JSON line.

    .venv/bin/python bench/vector_encoding.py [--users 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import make_model_store  # noqa: E402

from recsvc.config import TrainSettings, load_settings  # noqa: E402
from recsvc.core.queries import RecommendQuery  # noqa: E402
from recsvc.core.state import UserState  # noqa: E402
from recsvc.data.interaction_files import read_interactions  # noqa: E402
from recsvc.evaluation.holdout import (  # noqa: E402
    factor_scorer,
    ranking_metrics,
    split_interactions,
)
from recsvc.fitting.factors import fit_factors  # noqa: E402
from recsvc.server import load_recommender  # noqa: E402
from recsvc.store.codec import vector_from_bytes, vector_to_bytes  # noqa: E402
from recsvc.store.redis_backend import RedisUserStore, connect, vector_key  # noqa: E402
from recsvc.testing import redis_server  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"
PARAMS = ROOT / "bench" / "results" / "ml100k-params.json"
K = 10


def round_trip(vectors: npt.NDArray[np.float32], encoding: str) -> npt.NDArray[np.float32]:
    """The vectors as the store gives them back."""
    return np.stack([vector_from_bytes(vector_to_bytes(v, encoding), encoding) for v in vectors])


def overlap(
    a: list[list[str]] | npt.NDArray[np.int64], b: list[list[str]] | npt.NDArray[np.int64]
) -> float:
    """Mean share of top-k items two lists of rankings have in common."""
    shares = [len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b, strict=True)]
    return float(np.mean(shares))


def bench_model(users: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        make_model_store(store, 100_000, 20_000, 64)
        recommender = load_recommender(load_settings(model_store=store))
    rng = np.random.default_rng(7)
    rows = rng.choice(20_000, size=min(users, 20_000), replace=False)
    queries = [RecommendQuery(f"m{row}", K) for row in rows]
    exact = recommender.model.user_factors[rows]
    lists = {}
    for encoding in ("float32", "float16"):
        vectors = round_trip(exact, encoding)
        states = [UserState({}, vector, 0) for vector in vectors]
        answers = []
        for start in range(0, len(queries), 256):
            part = recommender.recommend_many(
                queries[start : start + 256], states[start : start + 256], True
            )
            answers += [[item.item_id for item in answer.items] for answer in part]
        lists[encoding] = answers
    return {
        "users": len(rows),
        "top10_overlap": round(overlap(lists["float32"], lists["float16"]), 4),
    }


def ml100k() -> dict[str, float]:
    data = read_interactions(ML100K)
    split = split_interactions(data.matrix, data.timestamps, "stratified-item", 0.75, 42)
    params = json.loads(PARAMS.read_text())["params"]
    factors = fit_factors(split.train, TrainSettings(**params), progress=False)
    out: dict[str, float] = {}
    tops = {}
    for encoding in ("float32", "float16"):
        users = round_trip(factors.user_factors, encoding)
        out[f"ndcg@10_{encoding}"] = ranking_metrics(
            factor_scorer(users, factors.item_factors), split, K
        )["ndcg@10"]
        scores = users @ factors.item_factors.T
        scores[split.train.nonzero()] = -np.inf
        tops[encoding] = np.argsort(-scores, axis=1)[:, :K]
    out["top10_overlap"] = round(overlap(tops["float32"], tops["float16"]), 4)
    return out


async def memory_usage(url: str) -> dict[str, int]:
    raw = redis.Redis.from_url(url)
    out = {}
    version = "v20261125-123025-401536"  # a realistic version name
    for encoding in ("float32", "float16"):
        store = RedisUserStore(connect(url, 1.0, 1.0), "recsvc", 500, 600, 600, encoding)
        vector = np.random.default_rng(0).normal(size=64).astype(np.float32)
        await store.put_vectors(version, {"u0012345": vector})
        await store.close()
        out[f"memory_usage_{encoding}"] = int(
            raw.memory_usage(vector_key("recsvc", "u0012345", encoding)) or 0
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    args = parser.parse_args()
    result: dict[str, object] = {"bench": "vector_encoding"}
    result["bench_model"] = bench_model(args.users)
    if ML100K.exists():
        result["ml100k"] = ml100k()
    with redis_server() as url:
        result["redis_bytes_per_user_dim64"] = asyncio.run(memory_usage(url))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
