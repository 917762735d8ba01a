from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.artifacts.hnsw_header import read_hnsw_file
from recsvc.index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_EXACT_HEAD_SHARE,
    GraphParams,
    ItemIndex,
    SearchParams,
    exact_top_k,
    recall_at_k,
    tune_ef,
)

GRAPH = GraphParams(m=16, ef_construction=200, seed=42, threads=2)
SEARCH = SearchParams(DEFAULT_EF_SEARCH, threads=2, exact_head_share=DEFAULT_EXACT_HEAD_SHARE)


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors with structure and spread-out norms, like learned factors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))
    return (vectors * rng.uniform(0.2, 3.0, size=(n, 1))).astype(np.float32)


def test_exact_top_k_matches_a_full_sort() -> None:
    vectors = clustered_vectors(500, 8, 0)
    query = np.ones(8, dtype=np.float32)
    labels, scores = exact_top_k(vectors, query, 10)
    expected = np.argsort(-(vectors @ query))[:10]
    assert list(labels) == list(expected)
    assert np.all(np.diff(scores) <= 0)


def test_hnsw_inner_product_recall_against_exact() -> None:
    vectors = clustered_vectors(5000, 32, 1)
    index = ItemIndex.build(vectors, "ip", GRAPH, SEARCH)
    queries = clustered_vectors(200, 32, 2)
    assert recall_at_k(index, queries, k=10) >= 0.95


def test_cosine_index_finds_the_item_itself_first() -> None:
    vectors = clustered_vectors(2000, 16, 3)
    index = ItemIndex.build(vectors, "cosine", GRAPH, SEARCH)
    labels, scores = index.search(vectors[123], 5)
    assert labels[0] == 123
    assert scores[0] == pytest.approx(1.0, abs=1e-5)


def test_k_larger_than_the_catalogue_is_clamped() -> None:
    vectors = clustered_vectors(7, 4, 4)
    index = ItemIndex.build(vectors, "ip", GRAPH, SEARCH)
    labels, _ = index.search(np.ones(4, dtype=np.float32), 50)
    assert sorted(labels) == list(range(7))


def test_saved_index_loads_and_answers_the_same(tmp_path: Path) -> None:
    vectors = clustered_vectors(1000, 16, 5)
    index = ItemIndex.build(vectors, "ip", GRAPH, SEARCH)
    index.save_hnsw(tmp_path / "i.hnsw")
    loaded = ItemIndex.load(vectors, "ip", _graph(tmp_path / "i.hnsw", 1000, 16), SEARCH)
    query = vectors[0]
    assert list(loaded.search(query, 10)[0]) == list(index.search(query, 10)[0])


def test_loading_with_a_different_item_count_is_rejected(tmp_path: Path) -> None:
    vectors = clustered_vectors(100, 4, 6)
    ItemIndex.build(vectors, "ip", GRAPH, SEARCH).save_hnsw(tmp_path / "i.hnsw")
    with pytest.raises(ValueError, match="graph of 100 4-d items, expected 50"):
        ItemIndex.load(vectors[:50], "ip", _graph(tmp_path / "i.hnsw", 100, 4), SEARCH)


def _graph(path: Path, count: int, dim: int) -> dict[str, object]:
    with path.open("rb") as handle:
        return read_hnsw_file(handle, count, dim).params()


@pytest.mark.parametrize(("metric", "k"), [("ip", 10), ("ip", 100), ("cosine", 10)])
def test_search_many_answers_each_query_as_a_search_alone(metric: str, k: int) -> None:
    """One hnswlib call and one head pass for many queries: the same items and scores as
    searching each alone (k 100 is more than the 64 items of the head)."""
    vectors = clustered_vectors(3000, 16, 5)
    index = ItemIndex.build(vectors, metric, GRAPH, SEARCH)  # type: ignore[arg-type]
    queries = clustered_vectors(40, 16, 6)
    labels, scores = index.search_many(queries, k)
    assert labels.shape == scores.shape == (40, k)
    for row, query in enumerate(queries):
        alone, alone_scores = index.search(query, k)
        assert list(labels[row]) == list(alone)
        np.testing.assert_allclose(scores[row], alone_scores, rtol=1e-5, atol=1e-6)
        assert len(set(labels[row])) == k  # an item found by both the graph and the head once
    exact, _ = index.search_many(queries, 10, exact=True)
    truth = np.argsort(-(queries @ index.vectors.T), axis=1)[:, :10]
    assert (exact == truth).mean() > 0.99


def test_tune_ef_picks_the_smallest_ef_that_reaches_the_target() -> None:
    """Flat norms need the graph (a larger ef); skewed norms, like ALS factors, are answered by
    the exact head from the smallest ef. The index is left at the ef chosen."""
    flat = clustered_vectors(5000, 32, 1)
    index = ItemIndex.build(flat, "ip", GRAPH, SEARCH)
    queries = clustered_vectors(200, 32, 2)
    index.hnsw.set_ef(16)
    at_16 = recall_at_k(index, queries)
    ef, recall = tune_ef(index, queries, ladder=(16, 32, 64, 128, 256), target=0.98)
    assert at_16 < 0.98 and ef > 16 and recall >= 0.98
    assert index.hnsw.ef == ef and recall == recall_at_k(index, queries)

    skewed = flat * np.random.default_rng(3).lognormal(sigma=1.5, size=(len(flat), 1))
    skewed_index = ItemIndex.build(skewed.astype(np.float32), "ip", GRAPH, SEARCH)
    ef, recall = tune_ef(skewed_index, queries, ladder=(16, 32, 64), target=0.98)
    assert ef == 16 and recall >= 0.98
    # Nothing reaches an impossible target: the largest rung, with its recall.
    ef, recall = tune_ef(index, queries, ladder=(16, 32), target=1.01)
    assert ef == 32 and recall < 1.01
