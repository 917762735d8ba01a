"""recsvc eval's exposure metrics, popularity-discount curve and plot, as real commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsvc.data.demo import DemoData
from tests.helpers import run_recsvc as run

SMALL = ("--factors", "8", "--iterations", "3", "--no-baselines")


@pytest.mark.slow
def test_eval_prints_the_tradeoff_curve_and_writes_its_plot(
    demo_data: DemoData, tmp_path: Path
) -> None:
    plot = tmp_path / "plots" / "curve.png"
    data = ("--interactions", str(demo_data.interactions))
    categories = ("--item-categories", str(demo_data.items))
    curve = ("--popularity-discount", "0,0.5,1")
    table = run("eval", *data, *SMALL, *categories, *curve, "--plot", str(plot))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = lines.index("model by popularity discount (the accuracy / exposure trade-off)")
    rows = [line.split() for line in lines[header + 2 : header + 5]]
    assert [row[0] for row in rows] == ["0.00", "0.50", "1.00"]
    tail_share = [float(row[2]) for row in rows]
    assert tail_share[2] > tail_share[0]  # the discount moves slots to the long tail
    assert "model exposure by category" in table.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(plot.parent.glob("*.tmp"))

    report = run("eval", *data, *SMALL, *categories, *curve, "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    points = summary["model"]["popularity_discount"]
    assert [p["popularity_discount"] for p in points] == [0.0, 0.5, 1.0]
    assert points[0]["ndcg@10"] == summary["ndcg@10"]  # discount 0: the plain ranking
    assert 0 <= summary["gini@10"] <= 1 and 0 <= summary["long_tail_share@10"] <= 1
    shares = summary["category_exposure@10"]
    assert abs(sum(s["catalogue"] for s in shares.values()) - 1) < 1e-3


@pytest.mark.slow
def test_eval_rejects_a_discount_outside_zero_to_one(demo_data: DemoData) -> None:
    data = ("--interactions", str(demo_data.interactions))
    for bad in ("1.5", "nan", "0,x"):
        result = run("eval", *data, *SMALL, "--popularity-discount", bad)
        assert result.returncode == 2 and "--popularity-discount" in result.stderr, bad
