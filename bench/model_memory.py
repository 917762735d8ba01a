"""Serving memory of a loaded model: per item, per user, and what image embeddings add.

Builds a model from random factors (64 dimensions, 20 interactions per user, HNSW M 16), publishes
it, and measures the resident memory that loading it adds; with --images, the same again with a
random 1,280-dimensional embedding per item (visual space, visual index, projection).

    .venv/bin/python bench/model_memory.py --users 200000 --items 10000
    .venv/bin/python bench/model_memory.py --users 10000 --items 126000
    .venv/bin/python bench/model_memory.py --users 10000 --items 20000 --images
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.artifacts import ModelStore  # noqa: E402
from recsvc.catalogue.embedding_table import EmbeddingTable  # noqa: E402
from recsvc.config import IndexSettings, ServingSettings, TrainSettings  # noqa: E402
from recsvc.data.matrix import Interactions, interactions_from_arrays  # noqa: E402
from recsvc.fitting.factors import TrainedFactors  # noqa: E402
from recsvc.index import IndexBuildParams, IndexSearchParams  # noqa: E402
from recsvc.training.pipeline import build_model  # noqa: E402

DIM = 64
PER_USER = 20
INDEX = IndexSettings(recall_sample=10, ef_construction=100, similar_ef_construction=100)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic(users: int, items: int, rng: np.random.Generator) -> Interactions:
    user_ids = np.repeat(np.arange(users), PER_USER)
    item_ids = rng.integers(0, items, len(user_ids))
    return interactions_from_arrays(
        pa.chunked_array([pa.array([f"u{u:07d}" for u in user_ids])]),
        pa.chunked_array([pa.array([f"i{i:07d}" for i in item_ids])]),
        np.ones(len(user_ids), np.float32),
        None,
        source="synthetic",
    )


def loaded_mib(store: ModelStore) -> float:
    gc.collect()
    before = rss()
    model = store.load_latest(IndexSearchParams.from_settings(ServingSettings()))
    used = (rss() - before) / 2**20
    del model
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--images", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = synthetic(args.users, args.items, rng)
    factors = TrainedFactors(
        rng.normal(size=(len(data.user_ids), DIM)).astype(np.float32),
        rng.normal(size=(len(data.item_ids), DIM)).astype(np.float32),
        "cpu",
        0.0,
    )
    images = None
    if args.images:
        ids = data.item_ids
        vectors = np.abs(rng.normal(size=(len(ids), 1280))).astype(np.float32)
        categories = [f"c{i % 40}" for i in range(len(ids))]
        images = EmbeddingTable("efficientnet_lite0", ids, [""] * len(ids), categories, vectors)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        model = build_model(
            data, factors, TrainSettings(factors=DIM), INDEX, store.new_version(), images=images
        )
        store.publish(model, IndexBuildParams.from_settings(INDEX, threads=0))
        users, items, nnz = len(model.users), len(model.items), model.user_items.nnz
        del model, data, factors, images
        used = loaded_mib(store)
    print(
        f"users {users}, items {items}, interactions {nnz}, images {args.images}: "
        f"loading the model adds {used:.0f} MiB"
    )


if __name__ == "__main__":
    main()
