"""The index's parameter types: what a graph is built with, and what a served model's indexes
are searched with. They have no defaults of their own: each is made from the settings by its
``from_settings`` (the settings sections satisfy the Protocols below), so that the index never
imports the configuration and a test searches exactly as production does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Protocol

# HNSW ef of user->item queries where nothing else says: what an index is built with, and what
# a model published before ef tuning is served at.
DEFAULT_EF_SEARCH = 64
# Training picks each model's ef: the smallest of EF_LADDER whose recall@10 against exact
# search, on a sample of users, reaches RECALL_TARGET (docs/BENCHMARKS.md, "Index recall").
EF_LADDER = (16, 32, 64, 128, 256, 512)
RECALL_TARGET = 0.98
# The item->item (cosine) graph: its query ef is chosen the same way, on a longer ladder and to
# a lower target (no exact head here: the graph alone must find the neighbours).
SIMILAR_EF_LADDER = (64, 128, 256, 512, 1024, 2048)
SIMILAR_RECALL_TARGET = 0.95
# What an item->item graph is searched at when its model recorded no ef (and the visual one).
DEFAULT_SIMILAR_EF_SEARCH = 512
# From this many items the item->item graph is built denser: at M 16 / ef_construction 100 its
# recall@10 falls to 0.77 on 100k items and 0.55 on 500k (docs/BENCHMARKS.md, issue 17).
LARGE_CATALOGUE_ITEMS = 100_000
SIMILAR_GRAPH_SMALL = (16, 100)  # (M, ef_construction) below LARGE_CATALOGUE_ITEMS
SIMILAR_GRAPH_LARGE = (32, 200)
# Share of items (largest norms) searched exactly beside the graph, served and measured.
DEFAULT_EXACT_HEAD_SHARE = 0.02


class BuildSettings(Protocol):
    """What :meth:`IndexBuildParams.from_settings` reads (recsvc.config.IndexSettings)."""

    @property
    def m(self) -> int: ...
    @property
    def ef_construction(self) -> int: ...
    @property
    def similar_m(self) -> int | None: ...
    @property
    def similar_ef_construction(self) -> int | None: ...
    @property
    def seed(self) -> int: ...


class SearchSettings(Protocol):
    """What :meth:`IndexSearchParams.from_settings` reads (recsvc.config.ServingSettings)."""

    @property
    def hnsw_ef_search(self) -> int | None: ...
    @property
    def similar_ef_search(self) -> int | None: ...
    @property
    def search_threads(self) -> int: ...
    @property
    def exact_head_share(self) -> float: ...


@dataclass(frozen=True)
class GraphParams:
    """How one HNSW graph is built."""

    m: int
    ef_construction: int
    seed: int
    threads: int


@dataclass(frozen=True)
class SearchParams:
    """How one index is searched: the HNSW ef, hnswlib's threads per query, and the share of
    items (largest norms) also searched exactly."""

    ef: int
    threads: int
    exact_head_share: float


@dataclass(frozen=True)
class IndexBuildParams:
    """How training builds a model's graphs: the user->item graph and the item->item one
    (cosine vectors make an easier graph, so small catalogues take a smaller ef_construction).
    ``similar_m`` / ``similar_ef_construction`` None: chosen by catalogue size."""

    m: int
    ef_construction: int
    similar_m: int | None
    similar_ef_construction: int | None
    seed: int
    threads: int

    @classmethod
    def from_settings(cls, index: BuildSettings, threads: int) -> IndexBuildParams:
        """``threads`` 0: every core of the machine."""
        return cls(
            m=index.m,
            ef_construction=index.ef_construction,
            similar_m=index.similar_m,
            similar_ef_construction=index.similar_ef_construction,
            seed=index.seed,
            threads=threads or os.cpu_count() or 1,
        )

    @property
    def user_graph(self) -> GraphParams:
        return GraphParams(self.m, self.ef_construction, self.seed, self.threads)

    def similar_graph(self, n_items: int) -> GraphParams:
        """The item->item graph of a catalogue of ``n_items``: what the settings say, else
        denser from LARGE_CATALOGUE_ITEMS items on."""
        m, ef_construction = (
            SIMILAR_GRAPH_LARGE if n_items >= LARGE_CATALOGUE_ITEMS else SIMILAR_GRAPH_SMALL
        )
        return GraphParams(
            self.similar_m or m,
            self.similar_ef_construction or ef_construction,
            self.seed,
            self.threads,
        )

    @property
    def trial_search(self) -> SearchParams:
        """How training searches the indexes it just built while it measures their recall: at
        the default ef (tuning then sets each model's own) on every build thread."""
        return SearchParams(DEFAULT_EF_SEARCH, self.threads, DEFAULT_EXACT_HEAD_SHARE)

    def capped(self, ef_construction: int) -> IndexBuildParams:
        """These parameters with ef_construction at most ``ef_construction``."""
        return replace(self, ef_construction=min(self.ef_construction, ef_construction))


@dataclass(frozen=True)
class IndexSearchParams:
    """How a served model's indexes are searched. ``user_ef`` / ``similar_ef`` 0: the ef its
    training chose (recorded in the manifest)."""

    user_ef: int
    similar_ef: int
    threads: int
    exact_head_share: float

    @classmethod
    def from_settings(cls, serving: SearchSettings) -> IndexSearchParams:
        return cls(
            user_ef=serving.hnsw_ef_search or 0,
            similar_ef=serving.similar_ef_search or 0,
            threads=serving.search_threads,
            exact_head_share=serving.exact_head_share,
        )

    def user(self, trained_ef: int | None) -> SearchParams:
        """Search parameters of the user->item index of a model trained to ``trained_ef``
        (0: a model published before ef tuning)."""
        ef = self.user_ef or trained_ef or DEFAULT_EF_SEARCH
        return SearchParams(ef, self.threads, self.exact_head_share)

    def similar(self, trained_ef: int | None) -> SearchParams:
        """Search parameters of the item->item index of a model trained to ``trained_ef``
        (0 or None: a model published before the item->item ef was tuned)."""
        ef = self.similar_ef or trained_ef or DEFAULT_SIMILAR_EF_SEARCH
        return SearchParams(ef, self.threads, self.exact_head_share)

    @property
    def visual(self) -> SearchParams:
        """Search parameters of the visual (image) index."""
        return self.similar(None)
