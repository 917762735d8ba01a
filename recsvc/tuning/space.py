"""The search space of ``recsvc tune``: which parameters are searched, over which ranges, and
which are pinned by the caller.

A pinned parameter keeps the caller's value in every trial; the others are suggested by
optuna. Parameters that do not apply to a trial (alpha for BPR, k1 and b without BM25, the
transform under binary weighting) are neither suggested nor recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from recsvc.config import TrainSettings
from recsvc.errors import ConfigError

WEIGHTINGS = ("none", "binary", "bm25", "tfidf")
TRANSFORMS = ("none", "log1p")

# Ranges: (low, high, log scale). BM25's k1 spans saturation after one count (0.01) to
# nearly linear weights for play counts in the thousands (10,000).
RANGES: dict[str, tuple[float, float, bool]] = {
    "factors": (8, 256, True),
    "als.iterations": (10, 40, False),
    "als.regularization": (1e-2, 100.0, True),
    "alpha": (0.05, 100.0, True),
    "bpr.iterations": (20, 300, True),
    # BPR steps are learning_rate * gradient per sampled triple: above ~0.1 with little
    # regularisation the factors overflow to NaN within a few epochs.
    "bpr.regularization": (1e-4, 1.0, True),
    "learning_rate": (1e-3, 0.1, True),
    "bm25_k1": (0.01, 10_000.0, True),
    "bm25_b": (0.0, 1.0, False),
}

# Parameters the search may choose; the flags that pin them have the same names.
SEARCHED = (
    "factors",
    "iterations",
    "regularization",
    "alpha",
    "learning_rate",
    "weighting",
    "weight_transform",
    "bm25_k1",
    "bm25_b",
)

SPACE_HELP = (
    "Search space (a flag given pins its parameter; the rest is searched): factors 8-256 "
    "(log); weighting none/binary/bm25/tfidf with --weight-transform none/log1p (not for "
    "binary); BM25 k1 0.01-10000 (log) and b 0-1; ALS: iterations 10-40, regularization "
    "0.01-100 (log), alpha 0.05-100 (log); BPR: iterations 20-300 (log), regularization "
    "1e-4-1 (log), learning rate 0.001-0.1 (log). The algorithm is not searched "
    "(--algorithm, default als)."
)


def applies(name: str, algorithm: str, weighting: str | None) -> bool:
    """Whether parameter ``name`` shapes a model of ``algorithm`` with ``weighting`` (None:
    the weighting is still open, so BM25's parameters may apply)."""
    if name == "alpha":
        return algorithm == "als"
    if name == "learning_rate":
        return algorithm == "bpr"
    if name in ("bm25_k1", "bm25_b"):
        return weighting in (None, "bm25")
    if name == "weight_transform":
        return weighting != "binary"
    return name in SEARCHED


def check_pins(pinned: Mapping[str, Any], algorithm: str) -> None:
    """A pinned parameter that can never apply is a mistake on the command line."""
    for name in pinned:
        if name not in SEARCHED:
            raise ConfigError(f"tune: {name} is not a searched parameter")
        if not applies(name, algorithm, pinned.get("weighting")):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} has no effect here: alpha is for --algorithm als, --learning-rate for "
                "bpr, --bm25-k1/--bm25-b for --weighting bm25, --weight-transform for any "
                "weighting but binary"
            )


def suggest(
    trial: optuna.Trial | optuna.trial.FixedTrial,
    base: TrainSettings,
    pinned: Mapping[str, Any],
) -> TrainSettings:
    """One point of the search space for ``base.algorithm``: pinned values as given, the
    others suggested by ``trial``."""
    algorithm = base.algorithm
    values: dict[str, Any] = {}

    def choose(name: str, pick: Any) -> None:
        values[name] = pinned[name] if name in pinned else pick(name)

    def number(name: str, key: str | None = None, integer: bool = False) -> None:
        low, high, log = RANGES[key or name]
        if integer:
            choose(name, lambda n: trial.suggest_int(n, int(low), int(high), log=log))
        else:
            choose(name, lambda n: trial.suggest_float(n, low, high, log=log))

    number("factors", integer=True)
    number("iterations", f"{algorithm}.iterations", integer=True)
    number("regularization", f"{algorithm}.regularization")
    number("alpha" if algorithm == "als" else "learning_rate")
    choose("weighting", lambda n: trial.suggest_categorical(n, WEIGHTINGS))
    if values["weighting"] == "bm25":
        number("bm25_k1")
        number("bm25_b")
    if values["weighting"] != "binary":
        choose("weight_transform", lambda n: trial.suggest_categorical(n, TRANSFORMS))
    else:
        values["weight_transform"] = "none"  # all ones whatever the transform
    return base.model_copy(update=values)


def recipe(settings: TrainSettings) -> dict[str, Any]:
    """The parameters that shape a model of ``settings`` (those that do not apply left out)."""
    names = ["algorithm", *SEARCHED]
    return {
        name: getattr(settings, name)
        for name in names
        if name == "algorithm" or applies(name, settings.algorithm, settings.weighting)
    }
