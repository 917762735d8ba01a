"""Experiments: a namespace's traffic split between arms, each a model version and serving options.

An experiments document (JSON, hot-reloaded like the rules file) lists experiments; a user's arm
is a pure function of (experiment name, user id): the same on every call, every replica and after
every restart, with no state to share. A holdout share of the users sees no experiment at all
(they are served the current model and count as their own arm, "holdout", in reports).

Two independent hashes decide the holdout and the arm, so changing the holdout share moves users
in or out of the holdout without reshuffling the arms of the others.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsvc.errors import ConfigError

BUCKETS = 10_000  # a share is resolved to 0.01 percentage points
HOLDOUT_ARM = "holdout"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MAX_ARMS = 16


class InvalidExperiments(ConfigError):
    """An experiments document that cannot be used: unreadable, malformed or inconsistent."""


# ----------------------------------------------------------------------------- the document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSpec(_Strict):
    """One arm: ``weight`` shares of the experiment's traffic, served by ``model_version``
    (empty: the current model) with the optional serving options."""

    name: str = Field(pattern=NAME_PATTERN)
    weight: float = Field(gt=0, le=100, allow_inf_nan=False)
    model_version: str = ""
    diversity: float | None = Field(default=None, ge=0, le=1)


class ExperimentSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    namespace: str = ""  # empty: the default namespace
    holdout_percent: float = Field(default=0, ge=0, lt=100, allow_inf_nan=False)
    arms: list[ArmSpec] = Field(min_length=2, max_length=MAX_ARMS)

    @model_validator(mode="after")
    def _distinct_arms(self) -> ExperimentSpec:
        names = [arm.name for arm in self.arms]
        if HOLDOUT_ARM in names:
            raise ValueError(f"arm name {HOLDOUT_ARM!r} is reserved for the holdout")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"arm name(s) used twice: {', '.join(repeated)}")
        return self


class ExperimentsDocument(_Strict):
    version: str = Field(min_length=1, max_length=128)
    experiments: list[ExperimentSpec]

    @model_validator(mode="after")
    def _one_per_namespace(self) -> ExperimentsDocument:
        """One running experiment per namespace: a user in two at once would make both
        reports measure a mix of each other's arms."""
        seen: dict[str, str] = {}
        for position, experiment in enumerate(self.experiments):
            if experiment.namespace in seen:
                raise ValueError(
                    f"experiments[{position}] ({experiment.name}): namespace "
                    f"{experiment.namespace or '(default)'!r} already runs "
                    f"{seen[experiment.namespace]!r}"
                )
            seen[experiment.namespace] = experiment.name
        return self


# ----------------------------------------------------------------------------- assignment


@dataclass(frozen=True)
class Arm:
    name: str
    model_version: str  # empty: the current model
    diversity: float | None
    upper_bucket: int  # users whose arm bucket is below this (and above the previous arm's)


@dataclass(frozen=True)
class Assignment:
    """What one user is served: the experiment and arm to report, the model and options to use."""

    experiment: str
    arm: str
    model_version: str = ""
    diversity: float | None = None

    @property
    def held_out(self) -> bool:
        return self.arm == HOLDOUT_ARM


@dataclass(frozen=True)
class Experiment:
    name: str
    namespace: str
    holdout_buckets: int
    arms: tuple[Arm, ...]

    def assign(self, user_id: str) -> Assignment:
        if bucket(self.name, "holdout", user_id) < self.holdout_buckets:
            return Assignment(self.name, HOLDOUT_ARM)
        position = bucket(self.name, "arm", user_id)
        for arm in self.arms:
            if position < arm.upper_bucket:
                return Assignment(self.name, arm.name, arm.model_version, arm.diversity)
        last = self.arms[-1]  # unreachable: the last upper bound is BUCKETS
        return Assignment(self.name, last.name, last.model_version, last.diversity)

    @property
    def model_versions(self) -> frozenset[str]:
        return frozenset(arm.model_version for arm in self.arms if arm.model_version)


def bucket(experiment: str, purpose: str, user_id: str) -> int:
    """A stable bucket in [0, BUCKETS) for the user: blake2b, not Python's salted hash."""
    digest = hashlib.blake2b(
        f"{experiment}\x00{purpose}\x00{user_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class ExperimentSet:
    version: str
    by_namespace: dict[str, Experiment]

    def assign(self, namespace: str, user_id: str) -> Assignment | None:
        """The user's arm in the namespace's experiment; None when none runs there."""
        experiment = self.by_namespace.get(namespace)
        return experiment.assign(user_id) if experiment is not None else None

    @property
    def model_versions(self) -> frozenset[str]:
        """Every model version some arm names: each is loaded and verified before serving."""
        versions: set[str] = set()
        for experiment in self.by_namespace.values():
            versions |= experiment.model_versions
        return frozenset(versions)


class ExperimentsHolder:
    """The one reference to the experiments in force (None: none). Swapping is one assignment."""

    def __init__(self, experiments: ExperimentSet | None = None) -> None:
        self._current = experiments

    def current(self) -> ExperimentSet | None:
        return self._current

    def swap(self, experiments: ExperimentSet | None) -> None:
        self._current = experiments

    @property
    def version(self) -> str:
        experiments = self._current
        return experiments.version if experiments is not None else ""

    def assign(self, namespace: str, user_id: str) -> Assignment | None:
        experiments = self._current
        return experiments.assign(namespace, user_id) if experiments is not None else None


# ----------------------------------------------------------------------------- parsing


def parse_experiments(
    text: str | bytes, source: str = "experiments", default_namespace: str = ""
) -> ExperimentSet:
    """The experiments of a JSON document; InvalidExperiments (its message starting with
    ``source`` and naming the field) when it cannot be used. An experiment without a namespace
    runs in ``default_namespace``."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidExperiments(f"{source}: not valid JSON: {exc}") from None
    try:
        document = ExperimentsDocument.model_validate(raw)
    except ValidationError as exc:
        raise InvalidExperiments(f"{source}: {_describe(exc)}") from None
    compiled = (_compile(spec, default_namespace) for spec in document.experiments)
    return ExperimentSet(document.version, {e.namespace: e for e in compiled})


def _compile(spec: ExperimentSpec, default_namespace: str) -> Experiment:
    total = sum(arm.weight for arm in spec.arms)
    arms, running = [], 0.0
    for position, arm in enumerate(spec.arms):
        running += arm.weight
        last = position == len(spec.arms) - 1
        upper = BUCKETS if last else round(BUCKETS * running / total)
        arms.append(Arm(arm.name, arm.model_version, arm.diversity, upper))
    holdout = round(BUCKETS * spec.holdout_percent / 100)
    return Experiment(spec.name, spec.namespace or default_namespace, holdout, tuple(arms))


def _describe(exc: ValidationError) -> str:
    """Every schema error on one line, as ``experiments[0].arms[1].weight: reason``."""
    parts = []
    for error in exc.errors():
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        parts.append(f"{where or 'document'}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def describe(experiments: ExperimentSet) -> dict[str, Any]:
    """A JSON-ready summary (for logs and the CLI): each experiment's arms and shares."""
    summary: dict[str, Any] = {"version": experiments.version, "experiments": []}
    for experiment in experiments.by_namespace.values():
        lower, arms = 0, []
        for arm in experiment.arms:
            share = (
                (arm.upper_bucket - lower) / BUCKETS * (1 - experiment.holdout_buckets / BUCKETS)
            )
            arms.append({"arm": arm.name, "model_version": arm.model_version, "share": share})
            lower = arm.upper_bucket
        summary["experiments"].append(
            {
                "name": experiment.name,
                "namespace": experiment.namespace,
                "holdout_share": experiment.holdout_buckets / BUCKETS,
                "arms": arms,
            }
        )
    return summary
