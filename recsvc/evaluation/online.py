"""Online metrics of an experiment: feedback attributed to the recommendations that led to it.

An impression is one item shown in one response (``recommendation_id``, ``item_id``, with the
experiment and arm the response was served under). An event (a click, a purchase) names the
``recommendation_id`` that led to it; it is attributed to the impression of the same response
and item. Per arm the report counts impressions, clicked and converted impressions and the
value of the conversions, with confidence intervals, and tests each arm against the control.

Counting impressions (not events) keeps the rates bounded: a user who clicks an item five times
clicked one impression.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from recsvc.errors import DataError

IMPRESSION_COLUMNS = ("recommendation_id", "experiment", "arm", "item_id")
EVENT_COLUMNS = ("recommendation_id", "item_id", "event_type")


@dataclass(frozen=True)
class Rate:
    """A share of impressions with its confidence interval (Wilson score)."""

    count: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """An arm against the control on one rate: relative lift and the chi-squared test's p."""

    control: str
    lift: float  # (rate - control rate) / control rate; nan when the control's rate is 0
    p_value: float

    def significant(self, alpha: float) -> bool:
        return self.p_value < alpha


@dataclass(frozen=True)
class ArmReport:
    experiment: str
    arm: str
    responses: int
    impressions: int
    clicks: Rate
    conversions: Rate
    value: float  # the summed value of attributed conversions
    value_per_impression: float
    value_per_impression_low: float
    value_per_impression_high: float
    ctr_vs_control: Comparison | None = None
    conversion_vs_control: Comparison | None = None


@dataclass(frozen=True)
class ExperimentReport:
    experiment: str
    control: str
    confidence: float
    arms: list[ArmReport] = field(default_factory=list)
    unattributed_events: int = 0  # events naming a response or item no impression has

    def best_arm(self, alpha: float) -> str | None:
        """The arm whose CTR beats the control's at significance ``alpha`` by the largest lift
        (the control itself when an arm is significantly worse and none better); None when no
        difference is significant."""
        better = [
            arm
            for arm in self.arms
            if arm.ctr_vs_control is not None
            and arm.ctr_vs_control.significant(alpha)
            and arm.ctr_vs_control.lift > 0
        ]
        if better:
            return max(better, key=lambda arm: arm.clicks.rate).arm
        worse = any(
            arm.ctr_vs_control is not None and arm.ctr_vs_control.significant(alpha)
            for arm in self.arms
        )
        return self.control if worse else None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = _finite(asdict(self))
        return document

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per arm (for CSV)."""
        rows = []
        for arm in self.arms:
            row: dict[str, Any] = {
                "experiment": arm.experiment,
                "arm": arm.arm,
                "responses": arm.responses,
                "impressions": arm.impressions,
            }
            row["clicks"] = arm.clicks.count
            row["ctr"], row["ctr_low"], row["ctr_high"] = (
                arm.clicks.rate,
                arm.clicks.low,
                arm.clicks.high,
            )
            row["conversions"] = arm.conversions.count
            row["conversion_rate"] = arm.conversions.rate
            row["conversion_rate_low"] = arm.conversions.low
            row["conversion_rate_high"] = arm.conversions.high
            row["value"] = arm.value
            row["value_per_impression"] = arm.value_per_impression
            for name, comparison in (
                ("ctr", arm.ctr_vs_control),
                ("conversion", arm.conversion_vs_control),
            ):
                row[f"{name}_lift"] = comparison.lift if comparison else ""
                row[f"{name}_p_value"] = comparison.p_value if comparison else ""
            rows.append(row)
        return rows


def split_stored_events(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The interaction store's events as (impressions, events) for :func:`attribute`: the
    IMPRESSION rows the server logged (with experiment and arm), and the other rows that name
    a recommendation id, each event's ``weight`` as its ``value``."""
    attributed = pc.is_valid(table.column("recommendation_id"))
    shown = pc.equal(table.column("event_type"), "impression")
    impressions = table.filter(
        pc.and_(pc.and_(attributed, shown), pc.is_valid(table.column("experiment")))
    ).select(["recommendation_id", "experiment", "arm", "item_id", "position"])
    events = table.filter(pc.and_(attributed, pc.invert(shown)))
    events = events.select(["recommendation_id", "item_id", "event_type", "weight"])
    events = events.rename_columns(["recommendation_id", "item_id", "event_type", "value"])
    return impressions, events.set_column(3, "value", pc.cast(events.column("value"), pa.float64()))


def attribute(
    impressions: pa.Table,
    events: pa.Table,
    click_types: Iterable[str] = ("click",),
    conversion_types: Iterable[str] = ("purchase",),
) -> tuple[pa.Table, int]:
    """One row per impression with ``clicked``, ``converted`` (0/1) and ``value`` (the summed
    ``value`` column of its conversions, else 1 per conversion); and the number of events that
    name a recommendation id but match no impression."""
    _require(impressions, IMPRESSION_COLUMNS, "impressions")
    _require(events, EVENT_COLUMNS, "events")
    impressions = impressions.select(list(IMPRESSION_COLUMNS)).combine_chunks()
    impressions = impressions.group_by(list(IMPRESSION_COLUMNS)).aggregate([])  # shown twice = once
    attributed = events.filter(pc.invert(pc.is_null(events["recommendation_id"])))
    attributed = attributed.filter(pc.not_equal(attributed["recommendation_id"], ""))
    event_type = attributed["event_type"]
    is_click = pc.is_in(event_type, value_set=pa.array(list(click_types), pa.string()))
    is_conversion = pc.is_in(event_type, value_set=pa.array(list(conversion_types), pa.string()))
    values = (
        pc.cast(attributed["value"], pa.float64())
        if "value" in attributed.column_names
        else pa.array(np.ones(attributed.num_rows), pa.float64())
    )
    zero = pa.scalar(0.0, pa.float64())
    flags = pa.table(
        {
            "recommendation_id": attributed["recommendation_id"],
            "item_id": attributed["item_id"],
            "click": pc.cast(is_click, pa.int64()),
            "conversion": pc.cast(is_conversion, pa.int64()),
            "conversion_value": pc.if_else(is_conversion, pc.fill_null(values, zero), zero),
        }
    )
    per_pair = flags.group_by(["recommendation_id", "item_id"]).aggregate(
        [("click", "max"), ("conversion", "max"), ("conversion_value", "sum")]
    )
    joined = impressions.join(per_pair, ["recommendation_id", "item_id"], join_type="left outer")
    unmatched = per_pair.join(
        impressions.select(["recommendation_id", "item_id"]),
        ["recommendation_id", "item_id"],
        join_type="left anti",
    )
    unattributed = _events_in(flags, unmatched)
    table = pa.table(
        {
            "recommendation_id": joined["recommendation_id"],
            "experiment": joined["experiment"],
            "arm": joined["arm"],
            "item_id": joined["item_id"],
            "clicked": pc.fill_null(joined["click_max"], 0),
            "converted": pc.fill_null(joined["conversion_max"], 0),
            "value": pc.fill_null(joined["conversion_value_sum"], zero),
        }
    )
    return table, unattributed


def report(
    attributed: pa.Table,
    experiment: str,
    control: str | None = None,
    confidence: float = 0.95,
    unattributed_events: int = 0,
) -> ExperimentReport:
    """The per-arm report of one experiment from ``attribute``'s table. The control is
    ``control``, else an arm named "control", else the holdout, else the first arm by name."""
    rows = attributed.filter(pc.equal(attributed["experiment"], experiment))
    if rows.num_rows == 0:
        raise DataError(f"experiment {experiment!r}: no impressions")
    arms = sorted(set(rows["arm"].to_pylist()))
    control = control or next((a for a in ("control", "holdout") if a in arms), arms[0])
    if control not in arms:
        raise DataError(
            f"--control {control!r}: experiment {experiment!r} has arms {', '.join(arms)}"
        )
    counts = {arm: _arm_counts(rows.filter(pc.equal(rows["arm"], arm))) for arm in arms}
    reports = [
        _arm_report(
            experiment,
            arm,
            counts[arm],
            counts[control] if arm != control else None,
            control,
            confidence,
        )
        for arm in arms
    ]
    return ExperimentReport(experiment, control, confidence, reports, unattributed_events)


def experiments_in(attributed: pa.Table) -> list[str]:
    return sorted(set(attributed["experiment"].to_pylist()))


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class _Counts:
    responses: int
    impressions: int
    clicks: int
    conversions: int
    values: np.ndarray  # per impression


def _arm_counts(rows: pa.Table) -> _Counts:
    return _Counts(
        responses=len(set(rows["recommendation_id"].to_pylist())),
        impressions=rows.num_rows,
        clicks=int(pc.sum(rows["clicked"]).as_py() or 0),
        conversions=int(pc.sum(rows["converted"]).as_py() or 0),
        values=rows["value"].to_numpy(zero_copy_only=False).astype(np.float64),
    )


def _arm_report(
    experiment: str,
    arm: str,
    counts: _Counts,
    control: _Counts | None,
    control_name: str,
    confidence: float,
) -> ArmReport:
    mean, low, high = mean_interval(counts.values, confidence)
    return ArmReport(
        experiment=experiment,
        arm=arm,
        responses=counts.responses,
        impressions=counts.impressions,
        clicks=wilson(counts.clicks, counts.impressions, confidence),
        conversions=wilson(counts.conversions, counts.impressions, confidence),
        value=float(counts.values.sum()),
        value_per_impression=mean,
        value_per_impression_low=low,
        value_per_impression_high=high,
        ctr_vs_control=None
        if control is None
        else compare(
            counts.clicks, counts.impressions, control.clicks, control.impressions, control_name
        ),
        conversion_vs_control=None
        if control is None
        else compare(
            counts.conversions,
            counts.impressions,
            control.conversions,
            control.impressions,
            control_name,
        ),
    )


def wilson(count: int, total: int, confidence: float) -> Rate:
    if total == 0:
        return Rate(count, math.nan, math.nan, math.nan)
    interval = stats.binomtest(count, total).proportion_ci(confidence, method="wilson")
    return Rate(count, count / total, float(interval.low), float(interval.high))


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """The mean with a normal-approximation interval (fine at the thousands of impressions an
    arm has; per-impression values are mostly zero, so the t and normal figures agree)."""
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.norm.ppf(0.5 + confidence / 2) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def compare(
    count: int, total: int, control_count: int, control_total: int, control: str
) -> Comparison:
    """Two proportions: the chi-squared test of the 2x2 table (with Yates' correction, as
    scipy applies by default), and the relative lift."""
    control_rate = control_count / control_total if control_total else math.nan
    rate = count / total if total else math.nan
    lift = (rate - control_rate) / control_rate if control_rate else math.nan
    table = np.array([[count, total - count], [control_count, control_total - control_count]])
    if total == 0 or control_total == 0 or (table.sum(axis=0) == 0).any():
        return Comparison(control, lift, 1.0)  # nothing to tell apart
    result = stats.chi2_contingency(table)
    return Comparison(control, lift, float(result.pvalue))


# ----------------------------------------------------------------------------- helpers


def _require(table: pa.Table, columns: Iterable[str], what: str) -> None:
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise DataError(
            f"{what}: missing column(s) {', '.join(missing)}; it has "
            f"{', '.join(table.column_names) or 'none'}"
        )


def _events_in(flags: pa.Table, pairs: pa.Table) -> int:
    if pairs.num_rows == 0:
        return 0
    matched: pa.Table = flags.join(
        pairs.select(["recommendation_id", "item_id"]),
        ["recommendation_id", "item_id"],
        join_type="inner",
    )
    return int(matched.num_rows)


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
