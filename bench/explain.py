"""Engine time per Recommend with ``explain`` on and off, in-process (Recommender.recommend,
no store, no gRPC): a demo ALS model, the same users asked both ways, on and off interleaved
so that machine noise hits both alike; prints the medians as one JSON line.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/explain.py [--queries 200] [--factors 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.artifacts import ModelStore  # noqa: E402
from recsvc.config import IndexSettings, ServingSettings, Settings, TrainSettings  # noqa: E402
from recsvc.core.queries import RecommendQuery  # noqa: E402
from recsvc.data.demo import generate_demo_data  # noqa: E402
from recsvc.index import IndexSearchParams  # noqa: E402
from recsvc.server import build_recommender  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(serving=ServingSettings(exact_search_max_items=0))
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_demo_data(Path(tmp) / "data", args.users, args.items)
        store = ModelStore(Path(tmp) / "models")
        train = TrainSettings(factors=args.factors, iterations=10, threads=2)
        from recsvc.training.pipeline import train_from_files

        train_from_files(data.interactions, store, train, IndexSettings(), data.items, False)
        model = store.load_latest(IndexSearchParams.from_settings(settings.serving))
    recommender = build_recommender(settings, model)
    users = [model.users.ids[n % len(model.users)] for n in range(args.queries)]
    for user in users[:20]:  # warm caches and code paths
        recommender.recommend(RecommendQuery(user, args.k, explain=True))
    timings: dict[bool, list[float]] = {False: [], True: []}
    for n, user in enumerate(users):
        for explain in (n % 2 == 0, n % 2 == 1):  # alternate which goes first
            query = RecommendQuery(user, args.k, explain=explain)
            started = time.perf_counter()
            recommender.recommend(query)
            timings[explain].append(time.perf_counter() - started)
    history = model.user_items.getnnz(axis=1)
    print(
        json.dumps(
            {
                "queries": args.queries,
                "k": args.k,
                "items": model.info.num_items,
                "factors": model.item_factors.shape[1],
                "median_history": float(statistics.median(history.tolist())),
                "off_median_us": round(statistics.median(timings[False]) * 1e6, 1),
                "on_median_us": round(statistics.median(timings[True]) * 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
