"""Index recall: HNSW over unnormalised ALS factors, plain inner product vs the MIPS transform.

Trains implicit ALS on generated shop data, then measures recall@10 against exact search for
(a) recsvc's ItemIndex (hnswlib inner-product space on the raw factors) and (b) the
MIPS-to-nearest-neighbour transform (append sqrt(M^2 - |y|^2), L2 space) built with raw hnswlib
on the same factors, with the same M / ef_construction / ef. Prints one JSON line.

    .venv/bin/python bench/index_recall.py [--users 20000] [--items 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np

from recsvc.config import TrainSettings
from recsvc.data.demo import generate_demo_data
from recsvc.data.interaction_files import read_interactions
from recsvc.fitting.factors import fit_factors
from recsvc.index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_EXACT_HEAD_SHARE,
    GraphParams,
    ItemIndex,
    SearchParams,
    exact_top_k,
    recall_at_k,
)


def mips_transform_recall(
    items: np.ndarray, queries: np.ndarray, graph: GraphParams, ef: int
) -> float:
    norms = np.einsum("ij,ij->i", items, items)
    augmented = np.hstack([items, np.sqrt(norms.max() - norms)[:, None]]).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=augmented.shape[1])
    index.init_index(len(items), M=graph.m, ef_construction=graph.ef_construction, random_seed=1)
    index.add_items(augmented, np.arange(len(items)), num_threads=graph.threads)
    index.set_ef(ef)
    probes = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
    labels, _ = index.knn_query(probes, k=10)
    found = sum(
        len(np.intersect1d(row, exact_top_k(items, q, 10)[0]))
        for row, q in zip(labels, queries, strict=True)
    )
    return found / (10 * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--powerlaw", type=int, help="use bench/train.py's power-law data, N rows")
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512])
    args = parser.parse_args()

    if args.powerlaw:
        from train import power_law_matrix  # bench/train.py, beside this file

        matrix = power_law_matrix(args.powerlaw)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = generate_demo_data(
                Path(tmp), num_users=args.users, num_items=args.items, seed=11
            )
            matrix = read_interactions(data.interactions).matrix
    factors = fit_factors(
        matrix, TrainSettings(factors=args.factors, iterations=15), progress=False
    )
    items, users = factors.item_factors, factors.user_factors
    rng = np.random.default_rng(0)
    queries = users[rng.choice(len(users), size=min(args.queries, len(users)), replace=False)]
    graph = GraphParams(m=16, ef_construction=200, seed=42, threads=2)
    search = SearchParams(DEFAULT_EF_SEARCH, threads=2, exact_head_share=DEFAULT_EXACT_HEAD_SHARE)
    started = time.perf_counter()
    index = ItemIndex.build(items, "ip", graph, search)
    build_seconds = time.perf_counter() - started
    graph_only = ItemIndex(items, "ip", index.hnsw, exact_head_share=0.0)
    norms = np.linalg.norm(items, axis=1)
    sweep = {}
    for ef in args.ef:
        assert index.hnsw is not None
        index.hnsw.set_ef(ef)
        started = time.perf_counter()
        for query in queries:
            index.search(query, 10)
        per_query_ms = (time.perf_counter() - started) * 1000 / len(queries)
        sweep[ef] = {
            "recsvc_ip_with_exact_head": round(recall_at_k(index, queries, 10), 4),
            "ms_per_query": round(per_query_ms, 3),
            "plain_ip_graph_only": round(recall_at_k(graph_only, queries, 10), 4),
            "mips_transform": round(mips_transform_recall(items, queries, graph, ef), 4),
        }
    print(
        json.dumps(
            {
                "bench": "index_recall",
                "users": len(users),
                "items": len(items),
                "factors": items.shape[1],
                "interactions": int(matrix.nnz),
                "item_norm_p5_p50_p95": [
                    round(float(x), 3) for x in np.percentile(norms, [5, 50, 95])
                ],
                "hnsw": {"M": graph.m, "ef_construction": graph.ef_construction},
                "recall@10_by_ef": sweep,
                "build_seconds_plain_ip": round(build_seconds, 2),
                "machine": f"{platform.machine()}, {platform.python_version()}",
            }
        )
    )


if __name__ == "__main__":
    main()
