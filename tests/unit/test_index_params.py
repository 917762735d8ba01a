"""Index parameters: the item->item graph chosen by catalogue size, its ef chosen at training
and recorded, and the ef serving uses (issue 17)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, ServingSettings
from recsvc.core.model import IndexFacts, Model
from recsvc.index import (
    DEFAULT_SIMILAR_EF_SEARCH,
    SIMILAR_EF_LADDER,
    SIMILAR_RECALL_TARGET,
    IndexBuildParams,
    IndexSearchParams,
)
from tests.conftest import BUILD, SEARCH, SMALL_INDEX


@pytest.mark.parametrize(
    ("items", "expected"),
    [(800, (16, 100)), (99_999, (16, 100)), (100_000, (32, 200)), (2_000_000, (32, 200))],
)
def test_the_item_graph_steps_up_with_catalogue_size(items: int, expected: tuple[int, int]) -> None:
    graph = IndexBuildParams.from_settings(IndexSettings(), threads=1).similar_graph(items)
    assert (graph.m, graph.ef_construction) == expected


def test_set_item_graph_parameters_win_at_every_size() -> None:
    settings = IndexSettings(similar_m=24, similar_ef_construction=300)
    params = IndexBuildParams.from_settings(settings, threads=1)
    for items in (10, 1_000_000):
        graph = params.similar_graph(items)
        assert (graph.m, graph.ef_construction) == (24, 300)
    only_m = IndexBuildParams.from_settings(IndexSettings(similar_m=8), threads=1)
    assert only_m.similar_graph(500_000).ef_construction == 200  # the other one still by size


def test_item_queries_use_the_trained_ef_unless_one_is_set() -> None:
    unset = IndexSearchParams.from_settings(ServingSettings())
    assert ServingSettings().similar_ef_search is None
    assert unset.similar(256).ef == 256
    assert unset.similar(0).ef == unset.similar(None).ef == DEFAULT_SIMILAR_EF_SEARCH
    assert unset.visual.ef == DEFAULT_SIMILAR_EF_SEARCH
    pinned = IndexSearchParams.from_settings(ServingSettings(similar_ef_search=99))
    assert pinned.similar(256).ef == pinned.visual.ef == 99


def test_training_chooses_and_records_the_item_index_ef(model: Model) -> None:
    """The demo catalogue (800 items) gets the small graph and the smallest ef of the ladder
    that reaches the target, served at that ef after loading."""
    facts = model.info.similar_index
    assert facts is not None
    assert (facts.m, facts.ef_construction) == (16, 100)
    assert facts.ef_search in SIMILAR_EF_LADDER
    assert facts.recall_at_10 >= SIMILAR_RECALL_TARGET or facts.ef_search == SIMILAR_EF_LADDER[-1]
    assert model.similar_index.hnsw is not None
    assert model.similar_index.hnsw.ef == facts.ef_search
    assert SMALL_INDEX.recall_sample > 0


def test_the_item_index_facts_round_trip_through_the_manifest(model: Model, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    tuned = replace(model, info=replace(model.info, similar_index=IndexFacts(32, 200, 1024, 0.96)))
    store.publish(tuned, BUILD)
    manifest = json.loads((store.versions_dir / tuned.version / "manifest.json").read_text())
    assert manifest["similar_index"] == {
        "m": 32,
        "ef_construction": 200,
        "ef_search": 1024,
        "recall_at_10": 0.96,
    }
    loaded = store.load_latest(replace(SEARCH, similar_ef=0))
    assert loaded.info.similar_index == IndexFacts(32, 200, 1024, 0.96)
    assert loaded.similar_index.hnsw is not None and loaded.similar_index.hnsw.ef == 1024
    pinned = store.load_latest(replace(SEARCH, similar_ef=77))
    assert pinned.similar_index.hnsw is not None and pinned.similar_index.hnsw.ef == 77
    # A model from before (no similar_index recorded) is served at the old default.
    version = store.new_version()
    older = replace(model, info=replace(model.info, similar_index=None, version=version))
    store.publish(older, BUILD)
    loaded = store.load(version, replace(SEARCH, similar_ef=0))
    assert loaded.info.similar_index is None
    assert loaded.similar_index.hnsw is not None
    assert loaded.similar_index.hnsw.ef == DEFAULT_SIMILAR_EF_SEARCH
