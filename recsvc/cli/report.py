"""``recsvc report``: per-arm online metrics of experiments, from impressions and events."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from recsvc.cli.common import DefaultsHelpFormatter, common_options, settings_from
from recsvc.data.interaction_store import InteractionStore
from recsvc.errors import DataError

if TYPE_CHECKING:
    from recsvc.evaluation.online import ExperimentReport

SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def add_report(commands: Any) -> None:
    p = commands.add_parser(
        "report",
        help="per-arm CTR, conversions and value of experiments, with confidence intervals",
        description=(
            "Attribute events to the impressions (recommendation_id, item_id) that led to them "
            "and report, per experiment arm: impressions, CTR, conversions per impression and "
            "the value of conversions, with confidence intervals and a chi-squared test of each "
            "arm against the control. Inputs: Parquet files or directories, JSON lines or CSV. "
            "Impressions need recommendation_id, experiment, arm, item_id; events need "
            "recommendation_id, item_id, event_type and optionally value. Or --store: the "
            "interaction store, whose IMPRESSION events the server logged are the impressions "
            "and whose other events naming a recommendation_id are the events (their weight "
            "as value)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--impressions", type=Path, help="what was shown")
    p.add_argument("--events", type=Path, help="the feedback that followed")
    p.add_argument(
        "--store",
        type=Path,
        help="read both from this interaction store (instead of --impressions and --events)",
    )
    p.add_argument("--experiment", help="report this experiment only (default: every one)")
    p.add_argument(
        "--control", help='the arm to compare against (default: "control", else "holdout")'
    )
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the intervals")
    p.add_argument("--alpha", type=float, default=0.05, help="significance for naming a winner")
    p.add_argument("--click-types", default="click", help="event types that count as a click")
    p.add_argument(
        "--conversion-types", default="purchase", help="event types that count as a conversion"
    )
    p.add_argument("--out", type=Path, help="write the JSON report here (default: stdout)")
    p.add_argument("--csv", type=Path, help="also write one row per arm as CSV")
    p.add_argument(
        "--prometheus", type=Path, help="also write the figures as a Prometheus textfile"
    )
    common_options(p)
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    # Imported here: scipy.stats doubles the start-up time of every other command.
    from recsvc.evaluation.online import attribute, experiments_in, report

    settings_from(args)
    if not 0 < args.confidence < 1:
        raise DataError(f"--confidence: must be between 0 and 1, got {args.confidence}")
    if not 0 < args.alpha < 1:
        raise DataError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    impressions, events, source = _inputs(args)
    attributed, unattributed = attribute(
        impressions, events, _types(args.click_types), _types(args.conversion_types)
    )
    names = [args.experiment] if args.experiment else experiments_in(attributed)
    if not names:
        raise DataError(f"{source}: no impressions")
    reports = [
        report(attributed, name, args.control, args.confidence, unattributed) for name in names
    ]
    document = {
        "alpha": args.alpha,
        "experiments": [{**one.to_json(), "winner": one.best_arm(args.alpha)} for one in reports],
    }
    text = json.dumps(document, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    if args.csv:
        write_csv(args.csv, reports)
    if args.prometheus:
        write_prometheus(args.prometheus, reports)
    for one in reports:
        winner = one.best_arm(args.alpha)
        verdict = f"winner {winner}" if winner else f"no difference at p < {args.alpha}"
        print(f"experiment {one.experiment}: {verdict}", file=sys.stderr)
    return 0


def _inputs(args: argparse.Namespace) -> tuple[pa.Table, pa.Table, str]:
    """(impressions, events, what they were read from) as the flags say."""
    if args.store is not None:
        if args.impressions is not None or args.events is not None:
            raise DataError("--store: give either --store or --impressions and --events")
        if not args.store.is_dir():
            raise DataError(f"--store {args.store}: not a directory")
        from recsvc.evaluation.online import split_stored_events

        impressions, events = split_stored_events(InteractionStore(args.store).read())
        return impressions, events, f"--store {args.store}"
    if args.impressions is None or args.events is None:
        raise DataError("--impressions and --events are required (or --store)")
    impressions = read_table(args.impressions, "--impressions")
    events = read_table(args.events, "--events")
    return impressions, events, f"--impressions {args.impressions}"


def read_table(path: Path, flag: str) -> pa.Table:
    try:
        if path.is_dir() or path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix in (".jsonl", ".json"):
            return pa_json.read_json(path)
        if path.suffix == ".csv":
            return pa_csv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{flag} {path}: cannot read: {exc}") from None
    raise DataError(f"{flag} {path}: unknown format; use one of {', '.join(SUFFIXES)}")


def write_csv(path: Path, reports: list[ExperimentReport]) -> None:
    rows = [row for one in reports for row in one.rows()]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_prometheus(path: Path, reports: list[ExperimentReport]) -> None:
    """The node-exporter textfile format, written atomically by prometheus_client."""
    registry = CollectorRegistry()
    labels = ["experiment", "arm"]
    gauges = {
        name: Gauge(f"recsvc_experiment_{name}", text, labels, registry=registry)
        for name, text in [
            ("impressions", "Items shown in the arm's responses"),
            ("clicks", "Impressions clicked at least once"),
            ("ctr", "Clicked impressions per impression"),
            ("conversions", "Impressions converted at least once"),
            ("conversion_rate", "Converted impressions per impression"),
            ("value", "Summed value of attributed conversions"),
            ("ctr_p_value", "Chi-squared p of the arm's CTR against the control's"),
        ]
    }
    for one in reports:
        for arm in one.arms:
            figures = {
                "impressions": arm.impressions,
                "clicks": arm.clicks.count,
                "ctr": arm.clicks.rate,
                "conversions": arm.conversions.count,
                "conversion_rate": arm.conversions.rate,
                "value": arm.value,
                "ctr_p_value": arm.ctr_vs_control.p_value if arm.ctr_vs_control else 1.0,
            }
            for name, value in figures.items():
                gauges[name].labels(one.experiment, arm.arm).set(value)
    write_to_textfile(str(path), registry)


def _types(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
