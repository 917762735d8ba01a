"""The accuracy / exposure trade-off curve of the popularity discount, as a PNG (matplotlib,
the optional ``plot`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsvc.errors import ConfigError

MISSING = "--plot needs matplotlib, which is not installed: pip install 'recsvc[plot]'"


def require_matplotlib() -> None:
    """Raise ConfigError (saying how to install it) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING) from None


def plot_tradeoff(curve: Sequence[dict[str, Any]], k: int, path: Path) -> None:
    """Write ``curve`` (recsvc.evaluation.holdout.discount_curve: one dict per discount) to
    ``path`` as a PNG: nDCG@k against long-tail share, each point labelled with its discount,
    and beside it Gini and novelty against the discount."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    discounts = [float(point["popularity_discount"]) for point in curve]
    ndcg = [float(point[f"ndcg@{k}"]) for point in curve]
    tail = [float(point[f"long_tail_share@{k}"]) for point in curve]
    gini = [float(point[f"gini@{k}"]) for point in curve]
    novelty = [float(point[f"novelty@{k}"]) for point in curve]

    figure, (tradeoff, exposure) = plt.subplots(1, 2, figsize=(11, 4.5))
    tradeoff.plot(tail, ndcg, marker="o")
    for n, (d, x, y) in enumerate(zip(discounts, tail, ndcg, strict=True)):
        offset = (6, 4) if n % 2 == 0 else (6, -12)  # alternate: close points stay readable
        tradeoff.annotate(f"d={d:g}", (x, y), textcoords="offset points", xytext=offset)
    if min(tail) > 0 and max(tail) > 4 * min(tail):  # spread the small shares of low discounts
        tradeoff.set_xscale("log")
    tradeoff.set_xlabel(f"long-tail share@{k}")
    tradeoff.set_ylabel(f"nDCG@{k}")
    tradeoff.set_title("accuracy against long-tail exposure")
    tradeoff.grid(True, alpha=0.3)

    exposure.plot(discounts, gini, marker="o", label=f"Gini@{k}")
    exposure.set_xlabel("popularity discount")
    exposure.set_ylabel("Gini of item exposure")
    exposure.grid(True, alpha=0.3)
    information = exposure.twinx()
    information.plot(discounts, novelty, marker="s", color="tab:orange", label=f"novelty@{k}")
    information.set_ylabel("novelty (bits)")
    lines = exposure.get_lines() + information.get_lines()
    exposure.legend(lines, [str(line.get_label()) for line in lines], loc="center right")
    exposure.set_title("exposure inequality and novelty")

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    figure.savefig(partial, format="png", dpi=100)
    plt.close(figure)
    os.replace(partial, path)  # never a half-written plot under the asked name
