"""ExperimentsFile: the experiments document (``experiments.path``), read at start-up and re-read
on change, with the models its arms name loaded before it applies.

A new version is parsed and every arm model it names that is not held yet is loaded and
verified (as the model watcher loads the current model: checksums, signature, shapes, index
header) on a worker thread; only then do the arm models and the assignment swap, so no call
sees an arm without its model. An arm model that cannot be loaded is logged and counted, and
its users are served the current model (recsvc.core.arms); a document that does not validate,
names a namespace not served here or more arm models than ``experiments.max_arm_models`` is
refused (at start-up the server does not start; while serving the version before stays).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from recsvc.artifacts.document_file import DocumentFile
from recsvc.core.arms import ArmModels
from recsvc.core.experiments import (
    ExperimentSet,
    ExperimentsHolder,
    InvalidExperiments,
    parse_experiments,
)
from recsvc.core.recommender import Recommender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmHost:
    """What the experiments file needs of one namespace: where its arm models go, the version
    it serves now (None: none yet) and how to load and verify a version (blocking)."""

    models: ArmModels
    current_version: Callable[[], str | None]
    load: Callable[[str], Recommender]


@dataclass(frozen=True)
class PreparedExperiments:
    experiments: ExperimentSet
    models: dict[str, dict[str, Recommender]]  # namespace -> version -> model


class ExperimentsFile(DocumentFile[PreparedExperiments]):
    """Keeps ``holder`` and each namespace's arm models on the document at ``path``."""

    invalid = InvalidExperiments

    def __init__(
        self,
        path: Path,
        holder: ExperimentsHolder,
        hosts: Mapping[str, ArmHost],
        default_namespace: str,
        reload_seconds: float = 2.0,
        max_arm_models: int = 4,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        super().__init__(path, reload_seconds, max_bytes, "experiments")
        self.holder = holder
        self.hosts = dict(hosts)
        self.default_namespace = default_namespace
        self.max_arm_models = max_arm_models
        self.load_failures = 0  # arm models that failed to load (their arms get the current)

    def check(self) -> ExperimentSet:
        """Read and validate the document without loading models (start-up, before any
        backend opens); InvalidExperiments when it cannot be used."""
        self._stat()
        source = f"experiments.path {self.path}"
        try:
            data = self.path.read_bytes()[: self.max_bytes + 1]
        except OSError as exc:
            raise InvalidExperiments(f"{source}: cannot read: {exc.strerror}") from None
        if len(data) > self.max_bytes:
            raise InvalidExperiments(
                f"{source}: larger than {self.max_bytes} bytes (experiments.max_file_bytes)"
            )
        return self._parse(data, source)

    def prepare(self, data: bytes, source: str) -> PreparedExperiments:
        experiments = self._parse(data, source)
        models: dict[str, dict[str, Recommender]] = {}
        for namespace, experiment in experiments.by_namespace.items():
            host = self.hosts[namespace]
            held = host.models.versions
            current = host.current_version()
            loaded: dict[str, Recommender] = {}
            for version in sorted(experiment.model_versions - {current}):
                model = held.get(version) or self._load(host, namespace, experiment.name, version)
                if model is not None:
                    loaded[version] = model
            models[namespace] = loaded
        return PreparedExperiments(experiments, models)

    def apply(self, document: PreparedExperiments) -> None:
        # Arm models first: an assignment never names a model that is not in place yet.
        for namespace, host in self.hosts.items():
            host.models.swap(document.models.get(namespace, {}))
        self.holder.swap(document.experiments)

    def version(self) -> str:
        return self.holder.version

    def describe(self, document: PreparedExperiments) -> str:
        names = ", ".join(
            f"{e.name} in {e.namespace} ({len(e.arms)} arms)"
            for e in document.experiments.by_namespace.values()
        )
        arm_models = sum(len(models) for models in document.models.values())
        return f"experiments: {names or 'none'}; {arm_models} arm model(s) loaded"

    def _parse(self, data: bytes, source: str) -> ExperimentSet:
        experiments = parse_experiments(data, source, self.default_namespace)
        for namespace, experiment in experiments.by_namespace.items():
            if namespace not in self.hosts:
                served = ", ".join(sorted(self.hosts))
                raise InvalidExperiments(
                    f"{source}: experiment {experiment.name}: namespace {namespace!r} is not "
                    f"served here (served: {served})"
                )
            versions = experiment.model_versions
            if len(versions) > self.max_arm_models:
                raise InvalidExperiments(
                    f"{source}: experiment {experiment.name}: its arms name {len(versions)} "
                    f"model versions; experiments.max_arm_models is {self.max_arm_models}"
                )
        return experiments

    def _load(
        self, host: ArmHost, namespace: str, experiment: str, version: str
    ) -> Recommender | None:
        try:
            return host.load(version)
        except Exception as exc:  # any failure: the arm is served the current model
            self.load_failures += 1
            log.error(
                "experiment %s (namespace %s): arm model %s cannot be loaded (%s: %s); its "
                "users are served the current model",
                experiment,
                namespace,
                version,
                type(exc).__name__,
                exc,
            )
            return None
