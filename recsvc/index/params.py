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
# Share of items (largest norms) searched exactly beside the graph, served and measured.
DEFAULT_EXACT_HEAD_SHARE = 0.02


class BuildSettings(Protocol):
    """What :meth:`IndexBuildParams.from_settings` reads (recsvc.config.IndexSettings)."""

    @property
    def m(self) -> int: ...
    @property
    def ef_construction(self) -> int: ...
    @property
    def similar_ef_construction(self) -> int: ...
    @property
    def seed(self) -> int: ...


class SearchSettings(Protocol):
    """What :meth:`IndexSearchParams.from_settings` reads (recsvc.config.ServingSettings)."""

    @property
    def hnsw_ef_search(self) -> int | None: ...
    @property
    def similar_ef_search(self) -> int: ...
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
    (cosine vectors make an easier graph, so it may take a smaller ef_construction)."""

    m: int
    ef_construction: int
    similar_ef_construction: int
    seed: int
    threads: int

    @classmethod
    def from_settings(cls, index: BuildSettings, threads: int) -> IndexBuildParams:
        """``threads`` 0: every core of the machine."""
        return cls(
            m=index.m,
            ef_construction=index.ef_construction,
            similar_ef_construction=index.similar_ef_construction,
            seed=index.seed,
            threads=threads or os.cpu_count() or 1,
        )

    @property
    def user_graph(self) -> GraphParams:
        return GraphParams(self.m, self.ef_construction, self.seed, self.threads)

    @property
    def similar_graph(self) -> GraphParams:
        return GraphParams(self.m, self.similar_ef_construction, self.seed, self.threads)

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
    """How a served model's indexes are searched. ``user_ef`` 0: the ef its training chose
    (recorded in the manifest)."""

    user_ef: int
    similar_ef: int
    threads: int
    exact_head_share: float

    @classmethod
    def from_settings(cls, serving: SearchSettings) -> IndexSearchParams:
        return cls(
            user_ef=serving.hnsw_ef_search or 0,
            similar_ef=serving.similar_ef_search,
            threads=serving.search_threads,
            exact_head_share=serving.exact_head_share,
        )

    def user(self, trained_ef: int | None) -> SearchParams:
        """Search parameters of the user->item index of a model trained to ``trained_ef``
        (0: a model published before ef tuning)."""
        ef = self.user_ef or trained_ef or DEFAULT_EF_SEARCH
        return SearchParams(ef, self.threads, self.exact_head_share)

    @property
    def similar(self) -> SearchParams:
        """Search parameters of the item->item and visual indexes."""
        return SearchParams(self.similar_ef, self.threads, self.exact_head_share)
