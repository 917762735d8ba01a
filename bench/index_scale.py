"""Indexes at millions of items: recall, build time, memory and latency by catalogue size.

Generated 64-factor item and user vectors shaped like ALS factors (see ``generated_factors``),
then recsvc's two indexes as training builds them:

- user -> item: inner product with the exact head, M / ef_construction from the settings, ef
  tuned on 200 users as training does; recall@10 measured on other users.
- item -> item (cosine): the old defaults (M 16 / ef_construction 100, queried at ef 512) as the
  baseline, against the new ones (graph by catalogue size, ef tuned on 200 items as training
  does); recall@10 measured on other items (an item counts as its own neighbour, as in
  training's figure).

Reports build time, memory per replica (hnswlib's index bytes plus the float32 vectors serving
keeps beside each index) and single-query latency p50 / p99 (one thread). One JSON line.

    .venv/bin/python bench/index_scale.py --items 100000 --threads 2
    nice -n 10 .venv/bin/python bench/index_scale.py --items 1000000 --threads 2 --skip-old
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.config import IndexSettings
from recsvc.index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_EXACT_HEAD_SHARE,
    DEFAULT_SIMILAR_EF_SEARCH,
    SIMILAR_EF_LADDER,
    SIMILAR_RECALL_TARGET,
    GraphParams,
    IndexBuildParams,
    ItemIndex,
    SearchParams,
    recall_at_k,
    tune_ef,
)

FloatMatrix = npt.NDArray[np.float32]
# The spread of items around their topic centre, and the decay of the centres' spectrum:
# chosen at 100k items so that the old item->item graph finds about what it found on real
# ALS factors there (docs/BENCHMARKS.md, "Indexes at millions of items").
NOISE = 3.0
DECAY = 0.0
# The old item->item defaults (before issue 17): the baseline.
OLD_SIMILAR_GRAPH = (16, 100)
OLD_SIMILAR_EF = DEFAULT_SIMILAR_EF_SEARCH


def generated_factors(
    n_items: int, n_users: int, dim: int, seed: int
) -> tuple[FloatMatrix, FloatMatrix]:
    """(items, users) float32, shapes (n_items, dim) and (n_users, dim).

    Items sit around topic centres (Zipf-sized topics, one per 500 items) with a wide spread
    (NOISE), and their norms are log-normal (p95 / p50 about 4.6, as in ALS factors of
    bench/train.py's power-law data); users mix two or three topics. At 100k items the old
    item->item graph finds 0.83 of the exact top 10 at ef 128 here against 0.78 on real ALS
    factors (0.97 against 0.91 at ef 512: learned tail items are near-duplicates, which is
    why training tunes each model's ef on its own vectors).
    """
    rng = np.random.default_rng(seed)
    topics = max(16, n_items // 500)
    spectrum = (np.arange(1, dim + 1) ** -DECAY).astype(np.float32)
    centres = rng.standard_normal((topics, dim)).astype(np.float32) * spectrum
    weights = 1.0 / np.arange(1, topics + 1) ** 0.7
    weights /= weights.sum()
    items = np.empty((n_items, dim), np.float32)
    step = 200_000
    for start in range(0, n_items, step):
        count = min(step, n_items - start)
        topic = rng.choice(topics, size=count, p=weights)
        noise = rng.standard_normal((count, dim)).astype(np.float32) * spectrum
        block = centres[topic] + NOISE * noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block *= rng.lognormal(0.0, 0.93, size=(count, 1)).astype(np.float32)
        items[start : start + count] = block
    users = np.zeros((n_users, dim), np.float32)
    for row in range(n_users):
        mix = rng.choice(topics, size=int(rng.integers(2, 4)), p=weights)
        users[row] = centres[mix].sum(axis=0)
    users += 0.5 * rng.standard_normal((n_users, dim)).astype(np.float32) * spectrum
    return items, users


def latency_ms(index: ItemIndex, queries: FloatMatrix) -> dict[str, float]:
    """p50 / p99 milliseconds of single searches for 10 items, one thread."""
    index.search(queries[0], 10)  # warm
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query, 10)
        times.append(time.perf_counter() - started)
    p50, p99 = np.percentile(np.asarray(times) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def memory_mib(index: ItemIndex) -> float:
    """hnswlib's bytes for the graph and its copy of the vectors, plus the float32 vectors the
    ItemIndex keeps for exact rescoring."""
    assert index.hnsw is not None
    return (index.hnsw.index_file_size() + index.vectors.nbytes) / 2**20


def build(
    vectors: FloatMatrix, metric: str, graph: GraphParams, ef: int
) -> tuple[ItemIndex, float]:
    search = SearchParams(ef, threads=1, exact_head_share=DEFAULT_EXACT_HEAD_SHARE)
    started = time.perf_counter()
    index = ItemIndex.build(vectors, metric, graph, search)  # type: ignore[arg-type]
    return index, time.perf_counter() - started


def measure(
    index: ItemIndex, seconds: float, graph: GraphParams, ef: int, probes: FloatMatrix
) -> dict[str, Any]:
    assert index.hnsw is not None
    index.hnsw.set_ef(ef)
    return {
        "m": graph.m,
        "ef_construction": graph.ef_construction,
        "ef_search": ef,
        "recall_at_10": round(recall_at_k(index, probes, 10), 4),
        "build_s": round(seconds, 1),
        "memory_mib": round(memory_mib(index), 1),
        **latency_ms(index, probes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="build threads")
    parser.add_argument("--probes", type=int, default=500, help="queries recall is measured on")
    parser.add_argument("--skip-old", action="store_true", help="no item->item baseline")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    settings = IndexSettings()
    params = IndexBuildParams.from_settings(settings, args.threads)
    sample = settings.recall_sample
    started = time.perf_counter()
    items, users = generated_factors(args.items, sample + args.probes, args.factors, args.seed)
    generate_s = time.perf_counter() - started
    rng = np.random.default_rng(args.seed + 1)
    item_rows = rng.choice(args.items, size=sample + args.probes, replace=False)
    result: dict[str, Any] = {
        "bench": "index_scale",
        "items": args.items,
        "factors": args.factors,
        "build_threads": args.threads,
        "tuning_queries": sample,
        "probes": args.probes,
        "generate_s": round(generate_s, 1),
    }

    user_index, seconds = build(items, "ip", params.user_graph, DEFAULT_EF_SEARCH)
    ef, _ = tune_ef(user_index, users[:sample])
    result["user_to_item"] = measure(user_index, seconds, params.user_graph, ef, users[sample:])
    user_bytes = memory_mib(user_index)
    del user_index

    if not args.skip_old:
        graph = GraphParams(*OLD_SIMILAR_GRAPH, seed=settings.seed, threads=args.threads)
        old, seconds = build(items, "cosine", graph, OLD_SIMILAR_EF)
        probes = old.vectors[item_rows[sample:]]
        result["item_to_item_old"] = measure(old, seconds, graph, OLD_SIMILAR_EF, probes)
        del old

    graph = params.similar_graph(args.items)
    new, seconds = build(items, "cosine", graph, DEFAULT_SIMILAR_EF_SEARCH)
    ef, _ = tune_ef(
        new,
        new.vectors[item_rows[:sample]],
        ladder=SIMILAR_EF_LADDER,
        target=SIMILAR_RECALL_TARGET,
    )
    result["item_to_item_new"] = measure(new, seconds, graph, ef, new.vectors[item_rows[sample:]])
    # Both indexes and their vectors (item factors and their unit copy): one serving replica.
    result["memory_per_replica_mib"] = round(user_bytes + memory_mib(new), 1)
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
