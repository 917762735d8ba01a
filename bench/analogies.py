"""Analogies, measured: does "a - b + c" in recsvc's embedding spaces find what it should?

For analogy queries a - b + c where b and c differ in exactly one label and a shares b's value
of it (a red shirt - a red dress + a blue dress), the answer should carry a's other labels with
c's value of the changed one (a blue shirt). The query vector is recsvc's own
(``recsvc.core.examples.combine``: each vector scaled to unit length, then weighted and
summed, as RecommendFromExamples builds it) and the items are ranked by exact cosine, a, b and
c left out. Reported: precision@10 (the share of the top 10 that carry the target labels) and
hit@10 (queries with at least one in the top 10), against
  - "a + c": the same without subtracting b (what the negative example adds),
  - "nearest c" and "nearest a": the items most similar to c, or to a, alone,
  - chance: the target's share of the catalogue.

Data (both skipped, with a note, when ../shared/data is absent):
  - fashion: the first --images photos of ../shared/data/fashion-products (labels articleType,
    baseColour, gender from styles.csv) in the visual space: EfficientNet-Lite0 embeddings as
    `recsvc embed` makes them (cached in --cache), L2-normalised; one row per changed label;
  - ml-100k: ALS item factors trained as `recsvc train` trains (recsvc.fitting.fit_factors,
    the tuned parameters of bench/results/ml100k-params.json, then the default settings) on
    all of u.data; labels: genres from u.item. b and c differ by one genre g (c has it, b has
    not), a lacks g; the target has every genre of a, and g. Items with fewer than
    --min-ratings ratings are left out (their factors are mostly the prior).

    .venv/bin/python bench/analogies.py [--images 3000] [--queries 2000] [--cache DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.config import TrainSettings  # noqa: E402
from recsvc.core.examples import combine  # noqa: E402
from recsvc.index import normalise_rows  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FASHION = DATA / "fashion-products"
ML100K = DATA / "ml-100k"
PARAMS = ROOT / "bench" / "results" / "ml100k-params.json"
FASHION_LABELS = ("articleType", "baseColour", "gender")
K = 10
METHODS = ("a - b + c", "a + c", "nearest c", "nearest a")
Any2D = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Analogy:
    """Item positions a, b, c and the positions of the items that answer it right."""

    a: int
    b: int
    c: int
    targets: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Result:
    data: str
    changed: str
    queries: int
    chance: float
    precision: dict[str, float]
    hits: dict[str, float]


# ------------------------------------------------------------------ scoring


def query_vectors(vectors: npt.NDArray[np.float32], analogies: list[Analogy]) -> dict[str, Any2D]:
    """The query vector of every analogy, per method, shape (queries, dim)."""
    weights = {"a - b + c": (1.0, -1.0, 1.0), "a + c": (1.0, 0.0, 1.0)}
    out: dict[str, Any2D] = {}
    for method, (wa, wb, wc) in weights.items():
        out[method] = np.stack(
            [combine(vectors[[q.a, q.b, q.c]], np.array([wa, wb, wc])) for q in analogies]
        )
    out["nearest c"] = vectors[[q.c for q in analogies]]
    out["nearest a"] = vectors[[q.a for q in analogies]]
    return out


def score(
    data: str, changed: str, vectors: npt.NDArray[np.float32], analogies: list[Analogy]
) -> Result:
    """Precision@10 and hit@10 of every method over ``analogies`` (exact cosine top-10)."""
    units = normalise_rows(vectors)
    precision: dict[str, float] = {}
    hits: dict[str, float] = {}
    for method, queries in query_vectors(vectors, analogies).items():
        scores = normalise_rows(queries) @ units.T
        for row, q in enumerate(analogies):
            scores[row, [q.a, q.b, q.c]] = -np.inf
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        found = np.array(
            [np.isin(top[row], q.targets).sum() for row, q in enumerate(analogies)], dtype=float
        )
        precision[method] = float(np.mean(found / K))
        hits[method] = float(np.mean(found > 0))
    chance = float(np.mean([len(q.targets) / (len(vectors) - 3) for q in analogies]))
    return Result(data, changed, len(analogies), chance, precision, hits)


# ------------------------------------------------------------------ fashion photos


def read_styles(path: Path) -> dict[str, tuple[str, ...]]:
    """styles.csv: id -> (articleType, baseColour, gender); rows lacking one are left out.
    (22 rows hold an unquoted comma in the last column: the first 9 commas split.)"""
    labels: dict[str, tuple[str, ...]] = {}
    with path.open(encoding="utf-8") as file:
        header = file.readline().strip().split(",")
        at = [header.index(name) for name in FASHION_LABELS]
        for line in file:
            fields = line.rstrip("\n").split(",", 9)
            values = tuple(fields[i].strip() for i in at) if len(fields) >= 10 else ()
            if values and all(values):
                labels[fields[0]] = values
    return labels


def fashion_vectors(
    count: int, cache: Path
) -> tuple[npt.NDArray[np.float32], list[tuple[str, ...]]]:
    """Visual-space vectors (unit, EfficientNet-Lite0) and labels of the first ``count``
    labelled photos; embedded once into ``cache`` (`recsvc embed`'s job and table)."""
    from recsvc.catalogue.embedding import EmbedOptions, embed_catalogue
    from recsvc.catalogue.embedding_table import EmbeddingTable
    from recsvc.catalogue.reader import Catalogue, CatalogueItem
    from recsvc.vision import DEFAULT_BACKBONE
    from recsvc.vision.backbones import load_backbone
    from recsvc.vision.embedder import ImageEmbedder

    styles = read_styles(FASHION / "styles.csv")
    files = sorted((FASHION / "images").glob("*.jpg"), key=lambda p: int(p.stem))
    files = [p for p in files if p.stem in styles][:count]
    table_path = cache / f"fashion-{DEFAULT_BACKBONE}-{len(files)}.parquet"
    if not table_path.exists():
        started = time.perf_counter()
        embedder = ImageEmbedder(load_backbone(DEFAULT_BACKBONE), "cpu")
        catalogue = Catalogue([CatalogueItem(p.stem, p) for p in files])
        options = EmbedOptions(loader_workers=0, progress=False)
        report = embed_catalogue(catalogue, embedder, table_path, options)
        print(
            f"embedded {report.embedded} photos in {time.perf_counter() - started:.0f} s "
            f"({table_path})",
            file=sys.stderr,
        )
    table = EmbeddingTable.load(table_path)
    return normalise_rows(table.vectors), [styles[i] for i in table.item_ids]


def label_analogies(
    labels: Sequence[tuple[str, ...]], changed: int, count: int, rng: np.random.Generator
) -> list[Analogy]:
    """Analogies over categorical labels: b and c differ in label ``changed`` only; a has b's
    value of it and differs from b in some other label; the target keeps a's other labels
    with c's value (at least one such item besides a, b and c)."""
    rest = [n for n in range(len(labels[0])) if n != changed]

    def others(item: int) -> tuple[str, ...]:
        return tuple(labels[item][n] for n in rest)

    groups: dict[tuple[str, ...], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    by_value: dict[str, list[int]] = defaultdict(list)
    for item, item_labels in enumerate(labels):
        groups[others(item)][item_labels[changed]].append(item)
        by_value[item_labels[changed]].append(item)
    usable_b = [i for i in range(len(labels)) if len(groups[others(i)]) > 1]
    analogies: list[Analogy] = []
    for _ in range(count * 50):
        if len(analogies) == count or not usable_b:
            break
        b = int(rng.choice(usable_b))
        value_b = labels[b][changed]
        c_choices = [
            i for value, items in groups[others(b)].items() if value != value_b for i in items
        ]
        c = int(rng.choice(c_choices))
        a = int(rng.choice(by_value[value_b]))
        if others(a) == others(b):
            continue
        targets = [i for i in groups[others(a)].get(labels[c][changed], []) if i not in (a, b, c)]
        if targets:
            analogies.append(Analogy(a, b, c, np.asarray(targets, dtype=np.int64)))
    return analogies


def run_fashion(args: argparse.Namespace) -> list[Result]:
    if not (FASHION / "styles.csv").exists():
        print(f"fashion: skipped, {FASHION} is absent", file=sys.stderr)
        return []
    vectors, labels = fashion_vectors(args.images, args.cache)
    rng = np.random.default_rng(args.seed)
    return [
        score(
            f"fashion photos ({len(labels)}), visual",
            name,
            vectors,
            label_analogies(labels, n, args.queries, rng),
        )
        for n, name in enumerate(FASHION_LABELS)
    ]


# ------------------------------------------------------------------ ml-100k


def read_genres(path: Path) -> dict[str, frozenset[str]]:
    """u.item: movie id -> its genres (names from u.genre)."""
    names = [
        line.split("|")[0]
        for line in (path.parent / "u.genre").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    genres: dict[str, frozenset[str]] = {}
    with path.open(encoding="latin-1") as file:
        for row in csv.reader(file, delimiter="|"):
            flags = row[-len(names) :]
            genres[row[0]] = frozenset(
                n for n, flag in zip(names, flags, strict=True) if flag == "1"
            )
    return genres


def genre_analogies(
    genres: Sequence[frozenset[str]], count: int, rng: np.random.Generator
) -> list[Analogy]:
    """c = b's genres plus one genre g that b lacks; a lacks g and its genres differ from b's;
    the target has all of a's genres and g."""
    by_set: dict[frozenset[str], list[int]] = defaultdict(list)
    for item, item_genres in enumerate(genres):
        by_set[item_genres].append(item)
    every = sorted(set().union(*genres))
    analogies: list[Analogy] = []
    for _ in range(count * 50):
        if len(analogies) == count:
            break
        b = int(rng.integers(len(genres)))
        added = [g for g in every if g not in genres[b] and genres[b] | {g} in by_set]
        if not added:
            continue
        g = str(rng.choice(added))
        c = int(rng.choice(by_set[genres[b] | {g}]))
        a = int(rng.integers(len(genres)))
        if g in genres[a] or genres[a] == genres[b] or not genres[a]:
            continue
        wanted = genres[a] | {g}
        targets = [
            i
            for i, item_genres in enumerate(genres)
            if wanted <= item_genres and i not in (a, b, c)
        ]
        if targets:
            analogies.append(Analogy(a, b, c, np.asarray(targets, dtype=np.int64)))
    return analogies


def run_ml100k(args: argparse.Namespace) -> list[Result]:
    if not (ML100K / "u.data").exists():
        print(f"ml-100k: skipped, {ML100K} is absent", file=sys.stderr)
        return []
    import json

    from recsvc.data.interaction_files import read_interactions
    from recsvc.fitting.factors import fit_factors

    data = read_interactions(ML100K / "u.data")
    genres = read_genres(ML100K / "u.item")
    counts = np.diff(data.matrix.tocsc().indptr)
    keep = np.flatnonzero(counts >= args.min_ratings)
    item_genres = [genres[data.item_ids[i]] for i in keep]
    trainings: list[tuple[str, Callable[[], TrainSettings]]] = [
        ("tuned", lambda: TrainSettings(**json.loads(PARAMS.read_text())["params"], threads=2)),
        ("defaults", lambda: TrainSettings(threads=2)),
    ]
    results = []
    for name, settings in trainings:
        train = settings()
        factors = fit_factors(data.matrix, train, progress=False)
        vectors = factors.item_factors[keep]
        rng = np.random.default_rng(args.seed)
        analogies = genre_analogies(item_genres, args.queries, rng)
        label = f"ml-100k ({len(keep)} movies), ALS {name} ({train.factors} factors)"
        results.append(score(label, "genre (+1)", vectors, analogies))
    return results


# ------------------------------------------------------------------ report


def print_table(results: list[Result]) -> None:
    print(
        "precision@10 (hit@10): share of the top 10 with a's other labels and c's value of "
        "the changed one"
    )
    print()
    print("| data, space | changed label | queries | chance | " + " | ".join(METHODS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(METHODS))
    for r in results:
        cells = " | ".join(f"{r.precision[m]:.3f} ({r.hits[m]:.2f})" for m in METHODS)
        print(f"| {r.data} | {r.changed} | {r.queries} | {r.chance:.3f} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="fashion photos used")
    parser.add_argument("--queries", type=int, default=2000, help="analogies per row")
    parser.add_argument("--min-ratings", type=int, default=20, help="ml-100k: fewer: left out")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recsvc-bench-analogies",
        help="where the fashion embeddings are kept between runs",
    )
    parser.add_argument("--only", choices=["fashion", "ml-100k"], help="one data set only")
    args = parser.parse_args()
    results: list[Result] = []
    if args.only != "ml-100k":
        results += run_fashion(args)
    if args.only != "fashion":
        results += run_ml100k(args)
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
