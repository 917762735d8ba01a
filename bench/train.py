"""Training benchmark: recsvc's train pipeline against raw implicit + raw hnswlib, same data.

For each dataset, in a fresh child process (so peak memory is per dataset):
  baseline  = raw implicit ALS fit + raw hnswlib build of one inner-product index over the
              item factors (same factors, iterations, M, ef_construction, threads);
  pipeline  = recsvc's train_and_publish: the same fit, both HNSW indexes (user->item and
              item->item), the recall check, and an atomic, checksummed artefact on disk.
Prints one JSON line per dataset: seconds of each part, the ratio pipeline / baseline, peak RSS.
With ``--engine spark`` the pipeline fits on Spark (pyspark ALS at ``--spark-master``), against
the same raw implicit + raw hnswlib baseline; the Spark session's start (the JVM) is timed apart
and left out of the pipeline's time.

    .venv/bin/python bench/train.py [--datasets ml-100k 1M 10M] [--factors 64]
    .venv/bin/python bench/train.py --datasets 1M --engine spark [--spark-master 'local[*]']

Datasets: ml-100k (../shared/data/ml-100k/u.data, skipped when absent) and generated power-law
data (users and items drawn with Zipf-like weights; 20 interactions per user on average,
one item per 100 interactions), named by their interaction count: 1M, 10M, 50M.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hnswlib
import implicit
import implicit.gpu
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.artifacts import ModelStore  # noqa: E402
from recsvc.config import IndexSettings, TrainSettings  # noqa: E402
from recsvc.data.interaction_files import read_interactions  # noqa: E402
from recsvc.data.matrix import Interactions, ReadReport  # noqa: E402
from recsvc.index import recall_at_k  # noqa: E402
from recsvc.training.pipeline import train_and_publish  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "50M": 50_000_000}


def power_law_matrix(interactions: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(interactions // 20, 10), max(interactions // 100, 10)
    user_weights = 1.0 / np.arange(1, n_users + 1) ** 0.5
    item_weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    users = rng.choice(n_users, size=interactions, p=user_weights / user_weights.sum())
    items = rng.choice(n_items, size=interactions, p=item_weights / item_weights.sum())
    matrix = sp.csr_matrix(
        (np.ones(interactions, np.float32), (users, items)), shape=(n_users, n_items)
    )
    matrix.sum_duplicates()
    return matrix


def load(dataset: str) -> Interactions:
    if dataset == "ml-100k":
        return read_interactions(ML100K)
    matrix = power_law_matrix(SIZES[dataset])
    return Interactions(
        [f"u{u}" for u in range(matrix.shape[0])],
        [f"i{i}" for i in range(matrix.shape[1])],
        matrix,
        None,
        ReadReport(dataset, rows_read=matrix.nnz),
    )


def run_one(
    dataset: str, factors: int, iterations: int, engine: str = "implicit", master: str = ""
) -> dict[str, object]:
    data = load(dataset)
    threads = os.cpu_count() or 1
    index = IndexSettings()
    train = TrainSettings(factors=factors, iterations=iterations, threads=0)
    spark_start = None
    if engine == "spark":
        from recsvc.fitting.spark_als import spark_session

        quiet = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
        train = train.model_copy(
            update={"engine": "spark", "spark_master": master, "spark_conf": quiet}
        )
        started = time.perf_counter()
        spark_session(train)
        spark_start = round(time.perf_counter() - started, 2)

    use_gpu = implicit.gpu.HAS_CUDA
    with threadpool_limits(1, "blas"):
        model = implicit.als.AlternatingLeastSquares(
            factors=factors,
            iterations=iterations,
            regularization=train.regularization,
            alpha=train.alpha,
            random_state=train.seed,
            use_gpu=use_gpu,
        )
        started = time.perf_counter()
        model.fit(data.matrix, show_progress=False)
        raw_fit = time.perf_counter() - started
    if use_gpu:
        model = model.to_cpu()
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    started = time.perf_counter()
    raw_index = hnswlib.Index(space="ip", dim=items.shape[1])
    raw_index.init_index(len(items), M=index.m, ef_construction=index.ef_construction)
    raw_index.add_items(items, np.arange(len(items)), num_threads=threads)
    raw_build = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        published = train_and_publish(data, ModelStore(Path(tmp)), train, index, progress=False)
        pipeline = time.perf_counter() - started
    # Recall of the item->item index built with the lower ef_construction.
    rng = np.random.default_rng(0)
    probes = published.item_factors[
        rng.choice(len(items), size=min(200, len(items)), replace=False)
    ]
    similar_recall = recall_at_k(published.similar_index, probes, k=10)
    baseline = raw_fit + raw_build
    return {
        "bench": "train",
        "dataset": dataset,
        "users": data.matrix.shape[0],
        "items": data.matrix.shape[1],
        "interactions": int(data.matrix.nnz),
        "factors": factors,
        "iterations": iterations,
        "device": "cuda" if use_gpu else "cpu",
        "engine": engine,
        **({"spark_master": master, "spark_session_start_s": spark_start} if spark_start else {}),
        "raw_implicit_fit_s": round(raw_fit, 2),
        "raw_hnswlib_build_s": round(raw_build, 2),
        "pipeline_s": round(pipeline, 2),
        "pipeline_fit_s": published.info.parameters["fit_seconds"],
        "ratio": round(pipeline / baseline, 3),
        "index_recall_at_10": round(published.info.index_recall_at_10, 4),
        "similar_index_recall_at_10": round(similar_recall, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "1M", "10M"])
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--engine", choices=["implicit", "spark"], default="implicit")
    parser.add_argument("--spark-master", default="local[*]")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one, args.factors, args.iterations, args.engine, args.spark_master)
        print(json.dumps(result), flush=True)
        return
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    for dataset in args.datasets:
        if dataset == "ml-100k" and not ML100K.exists():
            print(json.dumps({"bench": "train", "dataset": dataset, "skipped": "no data"}))
            continue
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                dataset,
                "--factors",
                str(args.factors),
                "--iterations",
                str(args.iterations),
                "--engine",
                args.engine,
                "--spark-master",
                args.spark_master,
            ],
            check=True,
            env=env,
        )


if __name__ == "__main__":
    main()
