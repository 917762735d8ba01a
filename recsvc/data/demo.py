"""Synthetic interaction data for the demo and the tests: no download, no licence question.

Users have two favourite categories; items belong to one category and have a Zipf-like
popularity. Each user's interactions mostly come from the favourite categories, weighted by
popularity, so a model has real structure to learn and recommendations can be checked
(a user's recommendations should be dominated by the favourite categories).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CATEGORIES = (
    "books",
    "music",
    "films",
    "games",
    "garden",
    "kitchen",
    "sports",
    "toys",
    "beauty",
    "fashion",
    "tools",
    "travel",
)


@dataclass(frozen=True)
class DemoData:
    interactions: Path
    items: Path
    favourite_categories: dict[str, tuple[str, str]]


def generate_demo_data(
    directory: Path,
    num_users: int = 2000,
    num_items: int = 3000,
    min_per_user: int = 10,
    max_per_user: int = 60,
    in_favourites: float = 0.85,
    seed: int = 7,
) -> DemoData:
    """Write ``interactions.csv`` (user_id,item_id,weight,timestamp) and ``items.csv``
    (item_id,category) into ``directory``; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    item_category = rng.integers(0, len(CATEGORIES), size=num_items)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    rng.shuffle(popularity)
    by_category = [np.flatnonzero(item_category == c) for c in range(len(CATEGORIES))]

    favourites: dict[str, tuple[str, str]] = {}
    start_ts = 1_760_000_000
    items_path = directory / "items.csv"
    with items_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "category"])
        for item in range(num_items):
            writer.writerow([f"i{item:05d}", CATEGORIES[item_category[item]]])

    interactions_path = directory / "interactions.csv"
    with interactions_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "weight", "timestamp"])
        for user in range(num_users):
            user_id = f"u{user:05d}"
            liked = rng.choice(len(CATEGORIES), size=2, replace=False)
            favourites[user_id] = (CATEGORIES[liked[0]], CATEGORIES[liked[1]])
            pool = np.concatenate([by_category[c] for c in liked])
            count = int(rng.integers(min_per_user, max_per_user + 1))
            from_favourites = round(count * in_favourites)
            chosen = np.concatenate(
                [
                    _sample(rng, pool, popularity, from_favourites),
                    _sample(rng, np.arange(num_items), popularity, count - from_favourites),
                ]
            )
            for item in np.unique(chosen):
                weight = int(rng.choice([1, 1, 1, 2, 3]))
                ts = start_ts + int(rng.integers(0, 90 * 86400))
                writer.writerow([user_id, f"i{item:05d}", weight, ts])
    return DemoData(interactions_path, items_path, favourites)


def _sample(
    rng: np.random.Generator, pool: np.ndarray, popularity: np.ndarray, count: int
) -> np.ndarray:
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    weights = popularity[pool] / popularity[pool].sum()
    return rng.choice(pool, size=min(count, len(pool)), replace=False, p=weights)
