"""Quality of filtered Recommend: recall@10 against the exact filtered top-10.

The bench model (bench/serve.py's synthetic 100k items x 64 factors; ``--items`` for a quick
run), every item given generated attributes through the catalogue records (as the item log
gives them): price uniform on 1..200, brand one of 20 (b0..b19), in_stock on 80% of items.
For each filter, ``--queries`` Recommend calls for the model's users (their history excluded)
go through the Recommender as the server calls it (HNSW search, no exact shortcut); the
reference is a brute-force top-10 over the allowed items with the same exclusions. Reported
per filter: the share of items it allows, mean recall@10, the calls that came back with fewer
than k items although at least k matched (must be 0), and the calls whose items did not all
match (must be 0). Single process, not a timing benchmark. Prints one JSON line.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/filters.py [--items 100000] [--queries 500]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import make_model_store  # noqa: E402

from recsvc.config import load_settings  # noqa: E402
from recsvc.core.queries import RecommendQuery  # noqa: E402
from recsvc.core.state import StoredItem  # noqa: E402
from recsvc.server import load_recommender  # noqa: E402

K = 10
FILTERS = [
    "",  # no filter: the graph search's own recall, for comparison
    'price < 50 and brand in ("b1", "b2")',  # ~2.5%: exact pass over the allowed items
    'price <= 5 and brand == "b7" and in_stock == "true"',  # rare: ~0.1%
    "price < 20",  # ~10%: graph search, widened
    'brand in ("b1", "b2", "b3", "b4") and in_stock == "true"',  # ~16%
    'price >= 100 and not brand in ("b0", "b1")',  # ~45%
    'in_stock != "true" or price > 190',  # ~24%
]


def item_records(item_ids: list[str], seed: int = 5) -> dict[str, StoredItem]:
    rng = np.random.default_rng(seed)
    prices = rng.integers(1, 201, len(item_ids))
    brands = rng.integers(0, 20, len(item_ids))
    in_stock = rng.random(len(item_ids)) < 0.8
    return {
        item_id: StoredItem(
            item_id,
            "",
            {"price": str(int(p)), "brand": f"b{b}", "in_stock": "true" if s else "false"},
            "",
            None,
        )
        for item_id, p, b, s in zip(item_ids, prices, brands, in_stock, strict=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500, help="Recommend calls per filter")
    parser.add_argument("--store", type=Path, help="model store to reuse (made when absent)")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="recsvc-filters-")) / "store"
    if not store.exists():
        make_model_store(store, args.items, args.users, args.dim)
    settings = load_settings(model_store=store)
    recommender = load_recommender(settings)
    model = recommender.model
    assert not recommender.exact, "the benchmark measures the graph search"
    recommender.add_items([], item_records(list(model.items.ids)))
    users = np.random.default_rng(7).choice(model.info.num_users, args.queries, replace=False)
    rows = []
    for text in FILTERS:
        mask = recommender.filter_mask(text)
        if mask is None:
            mask = np.ones(model.info.num_items, dtype=bool)
        recalls, short, wrong = [], 0, 0
        for user_row in users.tolist():
            user = model.users.ids[user_row]
            allowed = mask.copy()
            allowed[model.seen_items(user_row)] = False
            candidates = np.flatnonzero(allowed)
            scores = model.item_factors[candidates] @ model.user_factors[user_row]
            exact = set(candidates[np.argsort(-scores, kind="stable")[:K]].tolist())
            answer = recommender.recommend(RecommendQuery(user, K, filter=text))
            labels = [model.items.row(item.item_id) for item in answer.items]
            wrong += not all(label is not None and mask[label] for label in labels)
            wanted = min(K, len(candidates))
            short += len(labels) < wanted
            if wanted:
                recalls.append(len(exact.intersection(labels)) / wanted)
        rows.append(
            {
                "filter": text,
                "allowed_share": round(float(mask.mean()), 4),
                "recall_at_10": round(float(np.mean(recalls)), 4),
                "min_recall_at_10": round(float(np.min(recalls)), 2),
                "fewer_than_k": short,
                "not_matching": wrong,
            }
        )
    result = {
        "bench": "filters",
        "items": args.items,
        "users": args.users,
        "dim": args.dim,
        "queries_per_filter": args.queries,
        "served_ef": model.user_index.hnsw.ef if model.user_index.hnsw is not None else 0,
        "filters": rows,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
