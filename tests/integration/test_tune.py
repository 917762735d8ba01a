"""recsvc tune as a real command: pinned flags, failed trials, resuming after SIGKILL; what eval
leaves out; the weight transform in a model's parameters; defaults in --help."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from recsvc.cli import build_parser
from recsvc.cli.common import DefaultsHelpFormatter
from recsvc.data.demo import DemoData
from recsvc.testing import recsvc_command, server_env
from tests.helpers import run_recsvc as run

# Small, fast trials: the search still covers the weighting, the transform and regularisation.
FAST = ("--factors", "8", "--iterations", "3", "--threads", "1", "--no-progress", "--json")


def tune(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run("tune", "--interactions", str(data), "--out", str(out), *FAST, *flags)


def test_a_pinned_weighting_is_the_one_returned(demo_data: DemoData, tmp_path: Path) -> None:
    out = tmp_path / "params.json"
    result = tune(demo_data.interactions, out, "--trials", "3", "--weighting", "tfidf")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params"]["weighting"] == "tfidf" and report["params"]["factors"] == 8
    assert report["tuning"]["pinned"] == {"factors": 8, "iterations": 3, "weighting": "tfidf"}
    assert json.loads(out.read_text())["params"] == report["params"]
    assert report["tuning"]["trials_detail"]["completed"] == 3


def test_a_flag_that_cannot_apply_is_refused(demo_data: DemoData, tmp_path: Path) -> None:
    result = tune(demo_data.interactions, tmp_path / "p.json", "--algorithm", "bpr", "--alpha", "2")
    assert result.returncode == 2 and "--alpha has no effect" in result.stderr


@pytest.fixture
def overflowing(tmp_path: Path, demo_data: DemoData) -> Path:
    """The demo interactions with absurd weights (1e30): ALS on them as read gives NaN factors
    (implicit raises ModelFitError), on their log1p it fits."""
    lines = demo_data.interactions.read_text().splitlines()
    header = lines[0].split(",")
    user, item = header.index("user_id"), header.index("item_id")
    rows = [line.split(",") for line in lines[1:]]
    path = tmp_path / "overflowing.csv"
    path.write_text(
        "user_id,item_id,weight\n" + "".join(f"{r[user]},{r[item]},1e30\n" for r in rows)
    )
    return path


@pytest.mark.slow
def test_trials_that_raise_are_counted_failed_and_the_search_completes(
    overflowing: Path, tmp_path: Path
) -> None:
    result = tune(overflowing, tmp_path / "p.json", "--trials", "8", "--weighting", "none")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    detail = report["tuning"]["trials_detail"]
    assert detail["failed"] >= 1 and detail["completed"] >= 1, detail
    assert detail["failed"] + detail["completed"] == 8
    assert report["params"]["weight_transform"] == "log1p"
    assert "NaN encountered in factors" in result.stderr
    assert np.isfinite(report["tuning"]["test"]["ndcg@10"])


def test_a_search_where_every_trial_fails_exits_2_with_the_error(
    overflowing: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    result = tune(
        overflowing, out, "--trials", "2", "--weighting", "none", "--weight-transform", "none"
    )
    assert result.returncode == 2
    assert "no trial completed (2 failed; the first: ModelFitError" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_tune_killed_with_sigkill_resumes_from_its_trials(
    demo_data: DemoData, tmp_path: Path
) -> None:
    out = tmp_path / "params.json"
    command = recsvc_command(
        "tune", "--interactions", str(demo_data.interactions), "--out", str(out), "--trials", "40"
    ) + list(FAST)
    process = subprocess.Popen(
        command, env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # The parameters file appears once a trial has completed (and is in the journal).
        deadline = time.monotonic() + 120
        while not out.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    first = json.loads(out.read_text())
    if first["status"] == "done":  # pragma: no cover - finished before the kill landed
        pytest.skip("the tune finished before it could be killed")
    done_before = first["tuning"]["trials"]
    assert done_before >= 1

    result = subprocess.run(command, env=server_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    detail = json.loads(result.stdout)["tuning"]["trials_detail"]
    assert detail["resumed"] >= done_before
    assert detail["completed"] + detail["failed"] == 40
    assert detail["interrupted"] <= 1  # the trial that was running when the kill came
    assert "resuming" in result.stderr
    assert json.loads(out.read_text())["status"] == "done"


def _subcommand(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = commands.choices[name]
    return parser


@pytest.mark.parametrize("name", ["tune", "eval", "train", "import"])
def test_help_shows_every_default(name: str) -> None:
    parser = _subcommand(name)
    formatter = DefaultsHelpFormatter(prog=name)
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.required:
            continue  # -h, on/off switches and required options have no default
        text = formatter._get_help_string(action) or ""
        assert "default" in text, f"{name} {action.option_strings[0]}: no default in --help"
    text = parser.format_help()
    if name in ("tune", "eval"):
        assert "(default: 0.75)" in text and "(default: stratified-item)" in text
    if name == "tune":
        assert "--weighting {none,binary,bm25,tfidf}" in text and "(default: searched)" in text


@pytest.mark.slow
def test_eval_says_what_it_left_out_and_train_records_the_transform(
    demo_data: DemoData, tmp_path: Path
) -> None:
    model = ("--factors", "8", "--iterations", "3", "--weight-transform", "log1p")
    data = ("--interactions", str(demo_data.interactions))
    result = run("eval", *data, *model, "--no-baselines", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params"]["weight_transform"] == "log1p"
    items = report["not_evaluated"]["items_never_in_test"]
    assert "<= 2 interactions" in items["reason"] and 0 <= items["count"] <= items["of"]
    table = run("eval", *data, *model, "--no-baselines")
    assert "users evaluated:" in table.stdout, table.stderr
    store = tmp_path / "store"
    result = run("train", *data, *model, "--out", str(store), "--no-progress")
    assert result.returncode == 0, result.stderr
    shown = json.loads(run("models", "show", "--model-store", str(store)).stdout)
    assert shown["parameters"]["weight_transform"] == "log1p"  # retraining's recipe keeps it
