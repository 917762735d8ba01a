"""Experiment arms in serving: which model answers a user, and the arm models one namespace holds.

The experiments in force (an :class:`~recsvc.core.experiments.ExperimentsHolder`, shared by
every namespace) assign a user to an arm; an arm that names a model version other than the
current one is answered by that version's Recommender, loaded and verified beforehand like the
current model (recsvc.artifacts.experiments_file) and held here. An arm whose model is not
held (it failed to load) is answered by the current model: an experiment never fails a call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from recsvc.core.experiments import Assignment, ExperimentsHolder
from recsvc.core.memory import model_memory_bytes
from recsvc.core.queries import RecommendQuery
from recsvc.core.recommender import Recommender

log = logging.getLogger(__name__)


class ArmModels:
    """The Recommenders of one namespace's arm model versions, by version; replaced as a whole
    (one assignment) when the experiments document is reloaded."""

    def __init__(self) -> None:
        self._by_version: dict[str, Recommender] = {}
        # Arms served the current model because theirs is not held (failed to load), counted
        # per call; read by the metrics layer.
        self.fallbacks = 0
        self._fallback_versions: set[str] = set()

    def get(self, version: str) -> Recommender | None:
        return self._by_version.get(version)

    def swap(self, models: Mapping[str, Recommender]) -> None:
        self._by_version = dict(models)
        self._fallback_versions.clear()

    @property
    def versions(self) -> dict[str, Recommender]:
        """The models held now, by version (a copy)."""
        return dict(self._by_version)

    def memory(self) -> tuple[int, int]:
        """(models held, bytes their arrays and indexes hold)."""
        models = list(self._by_version.values())
        return len(models), sum(model_memory_bytes(m.model) for m in models)

    def missing(self, version: str) -> None:
        """An arm's model is not held: its users get the current model (said once per
        version and document, counted every call)."""
        self.fallbacks += 1
        if version not in self._fallback_versions:
            self._fallback_versions.add(version)
            log.error(
                "experiment arm model %s is not loaded; its users are served the current model",
                version,
            )


@dataclass(frozen=True, slots=True)
class Route:
    """How one Recommend is answered: the user's assignment (None: no experiment) and the
    model to use (None: the current one)."""

    assignment: Assignment | None
    recommender: Recommender | None


NO_ROUTE = Route(None, None)


class ArmRouter:
    """Routes the calls of one namespace: the experiment assignment and the arm's model."""

    def __init__(
        self, namespace: str, experiments: ExperimentsHolder, models: ArmModels | None = None
    ) -> None:
        self.namespace = namespace
        self.experiments = experiments
        self.models = models or ArmModels()

    def route(self, query: RecommendQuery, current: Recommender) -> tuple[RecommendQuery, Route]:
        """The query to answer (with the arm's diversity) and its route. Anonymous sessions
        (no user_id) are never assigned: their arm could not be sticky."""
        if not query.user_id:
            return query, NO_ROUTE
        assignment = self.experiments.assign(self.namespace, query.user_id)
        if assignment is None:
            return query, NO_ROUTE
        if assignment.diversity is not None:
            query = replace(query, diversity=assignment.diversity)
        version = assignment.model_version
        if not version or version == current.version:
            return query, Route(assignment, None)
        model = self.models.get(version)
        if model is None:
            self.models.missing(version)
        return query, Route(assignment, model)
