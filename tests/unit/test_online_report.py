"""Online metrics: attribution of events to impressions, and a simulated experiment whose true
click probabilities are known, so the report's verdict can be checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsvc.cli import main
from recsvc.errors import DataError
from recsvc.evaluation.online import attribute, report

SHOWN_PER_RESPONSE = 5


def simulate(
    ctr: dict[str, float], impressions_per_arm: int, seed: int, conversion_share: float = 0.1
) -> tuple[pa.Table, pa.Table]:
    """Impressions of responses of SHOWN_PER_RESPONSE items per arm; each impression is clicked
    with its arm's probability, and a tenth of clicks convert with a value."""
    rng = np.random.default_rng(seed)
    shown: dict[str, list[object]] = {
        "recommendation_id": [],
        "experiment": [],
        "arm": [],
        "item_id": [],
        "position": [],
    }
    events: dict[str, list[object]] = {
        "recommendation_id": [],
        "item_id": [],
        "event_type": [],
        "value": [],
    }
    for arm, probability in ctr.items():
        responses = impressions_per_arm // SHOWN_PER_RESPONSE
        items = rng.integers(0, 1000, size=(responses, SHOWN_PER_RESPONSE))
        clicked = rng.random((responses, SHOWN_PER_RESPONSE)) < probability
        converted = clicked & (rng.random((responses, SHOWN_PER_RESPONSE)) < conversion_share)
        for response in range(responses):
            rid = f"{arm}-{seed}-{response}"
            for position in range(SHOWN_PER_RESPONSE):
                item = f"i{items[response, position]}-{position}"
                shown["recommendation_id"].append(rid)
                shown["experiment"].append("ranker")
                shown["arm"].append(arm)
                shown["item_id"].append(item)
                shown["position"].append(position)
                if clicked[response, position]:
                    events["recommendation_id"].append(rid)
                    events["item_id"].append(item)
                    events["event_type"].append("click")
                    events["value"].append(None)
                if converted[response, position]:
                    events["recommendation_id"].append(rid)
                    events["item_id"].append(item)
                    events["event_type"].append("purchase")
                    events["value"].append(20.0)
    return pa.table(shown), pa.table(events, schema=EVENT_SCHEMA)


EVENT_SCHEMA = pa.schema(
    [
        ("recommendation_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("value", pa.float64()),
    ]
)


def test_a_20_percent_better_arm_is_found_at_50000_impressions_per_arm() -> None:
    impressions, events = simulate({"control": 0.05, "new": 0.06}, 50_000, seed=7)
    attributed, unattributed = attribute(impressions, events)
    result = report(attributed, "ranker")
    by_arm = {arm.arm: arm for arm in result.arms}
    assert unattributed == 0
    assert by_arm["control"].impressions == by_arm["new"].impressions == 50_000
    new = by_arm["new"]
    assert new.ctr_vs_control is not None and new.ctr_vs_control.p_value < 0.05
    assert new.clicks.low < 0.06 < new.clicks.high
    assert result.best_arm(0.05) == "new"
    assert new.value == pytest.approx(20.0 * new.conversions.count)


@pytest.mark.slow
def test_equal_arms_are_not_called_different_on_most_seeds() -> None:
    significant = 0
    for seed in range(10):
        impressions, events = simulate({"control": 0.05, "new": 0.05}, 50_000, seed=seed)
        result = report(attribute(impressions, events)[0], "ranker")
        significant += result.best_arm(0.05) is not None
    assert significant <= 2  # 5% expected by chance


def test_attribution_counts_an_impression_once_and_sets_stray_events_apart() -> None:
    impressions = pa.table(
        {
            "recommendation_id": ["r1", "r1", "r2", "r2"],
            "experiment": ["e"] * 4,
            "arm": ["control", "control", "new", "new"],
            "item_id": ["a", "b", "a", "b"],
        }
    )
    events = pa.table(
        {
            "recommendation_id": ["r1", "r1", "r1", "r2", "", None, "r9"],
            "item_id": ["a", "a", "a", "b", "b", "b", "a"],
            "event_type": ["click", "click", "purchase", "view", "click", "click", "click"],
            "value": [None, None, 30.0, None, None, None, None],
        },
        schema=EVENT_SCHEMA,
    )
    attributed, unattributed = attribute(impressions, events)
    result = report(attributed, "e")
    by_arm = {arm.arm: arm for arm in result.arms}
    assert unattributed == 1  # r9: no such response
    assert by_arm["control"].clicks.count == 1 and by_arm["control"].impressions == 2
    assert by_arm["control"].conversions.count == 1 and by_arm["control"].value == 30.0
    assert by_arm["new"].clicks.count == 0  # a view is neither; unnamed events are not attributed


def test_missing_columns_and_unknown_arms_are_named() -> None:
    impressions = pa.table({"recommendation_id": ["r"], "arm": ["a"], "item_id": ["x"]})
    with pytest.raises(DataError, match=r"impressions: missing column\(s\) experiment"):
        attribute(impressions, pa.table({"x": [1]}))
    impressions = impressions.append_column("experiment", pa.array(["e"]))
    attributed, _ = attribute(
        impressions,
        pa.table({"recommendation_id": ["r"], "item_id": ["x"], "event_type": ["click"]}),
    )
    with pytest.raises(DataError, match="--control 'b'"):
        report(attributed, "e", control="b")
    with pytest.raises(DataError, match="experiment 'other': no impressions"):
        report(attributed, "other")


def test_report_command_writes_json_csv_and_prometheus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    impressions, events = simulate({"control": 0.05, "new": 0.08}, 20_000, seed=3)
    pq.write_table(impressions, tmp_path / "impressions.parquet")
    pq.write_table(events, tmp_path / "events.parquet")
    code = main(
        [
            "report",
            "--impressions", str(tmp_path / "impressions.parquet"),
            "--events", str(tmp_path / "events.parquet"),
            "--out", str(tmp_path / "report.json"),
            "--csv", str(tmp_path / "report.csv"),
            "--prometheus", str(tmp_path / "report.prom"),
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["experiments"][0]["winner"] == "new"
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [row["arm"] for row in rows] == ["control", "new"]
    assert float(rows[1]["ctr"]) > float(rows[0]["ctr"])
    prom = (tmp_path / "report.prom").read_text()
    assert 'recsvc_experiment_impressions{arm="new",experiment="ranker"} 20000.0' in prom
    assert "experiment ranker: winner new" in capsys.readouterr().err


def test_report_command_refuses_an_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "shown.txt").write_text("x")
    code = main(["report", "--impressions", str(tmp_path / "shown.txt"),
                 "--events", str(tmp_path / "shown.txt")])  # fmt: skip
    assert code == 2
