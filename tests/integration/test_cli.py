"""The `recsvc` command line: most commands run in this process (tests.helpers.run_recsvc), the
entry point, servers and the image loader processes as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsvc.cli import main
from recsvc.client import RecsvcClient
from recsvc.data.demo import DemoData
from recsvc.testing import ProductImages, running_server, server_env
from tests.helpers import kind_interactions, run_recsvc_process
from tests.helpers import run_recsvc as run

SUBCOMMANDS = [
    [],
    ["train"],
    ["embed"],
    ["embed-merge"],
    ["eval"],
    ["serve"],
    ["demo"],
    ["call"],
    ["call", "recommend"],
    ["call", "similar"],
    ["call", "info"],
    ["call", "record"],
    ["call", "health"],
    ["config"],
    ["models", "use"],
    ["worker", "embed"],
    ["call", "search-image"],
    ["call", "upsert"],
    ["call", "forget-user"],
]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    """In process (a process each costs ~1.5 s); the entry point itself is run below."""
    for args in SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            main([*args, "--help"])
        assert done.value.code == 0, args
        assert "usage: recsvc" in capsys.readouterr().out, args


def test_the_entry_point_prints_help() -> None:
    result = run_recsvc_process("--help")
    assert result.returncode == 0 and "usage: recsvc" in result.stdout, result.stderr


def test_commands_start_without_scipy_stats() -> None:
    """Only `recsvc report` needs it, and it would add ~0.4 s to every command's start-up."""
    code = "import sys, recsvc.cli\nassert 'scipy.stats' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_call_record_takes_the_negative_feedback_event_types() -> None:
    result = run("call", "record", "--help")
    assert "dislike" in result.stdout and "impression" in result.stdout
    refused = run("call", "record", "--user", "u", "--items", "i", "--event", "forget")
    assert refused.returncode != 0 and "invalid choice" in refused.stderr


def test_train_publishes_a_model(demo_data: DemoData, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = run(
        "train",
        "--interactions",
        str(demo_data.interactions),
        "--out",
        str(store),
        "--factors",
        "8",
        "--iterations",
        "3",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["users"] == 600 and summary["trained_on"] == "cpu"
    assert (store / "LATEST").read_text().strip() == summary["model_version"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("user_id,item_id\n", "holds no interactions"), ("a,b\n1,2\n", "needs a user column")],
)
def test_train_on_bad_input_fails_and_publishes_nothing(
    tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    store = tmp_path / "store"
    result = run("train", "--interactions", str(bad), "--out", str(store))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (store / "LATEST").exists()


def test_train_rejects_bad_parameters_by_name(demo_data: DemoData, tmp_path: Path) -> None:
    result = run(
        "train",
        "--interactions",
        str(demo_data.interactions),
        "--out",
        str(tmp_path / "s"),
        "--factors",
        "0",
    )
    assert result.returncode == 2 and "factors" in result.stderr


@pytest.mark.slow
def test_config_docs_and_show() -> None:
    docs = run("config", "docs")
    assert docs.returncode == 0 and "RECSVC_SERVER__PORT" in docs.stdout
    shown = json.loads(run("config", "show").stdout)
    assert shown["server"]["port"] == 50051


@pytest.mark.slow
def test_demo_serves_the_embedded_default(tmp_path: Path) -> None:
    """`recsvc demo` generates data, trains, serves; the answer excludes the user's history."""
    args = ["demo", "--dir", str(tmp_path / "demo"), "--port", "0"]
    with running_server(args, server_env(), startup_timeout=180) as proc:
        assert "recsvc call recommend" in "".join(proc.output)
        with RecsvcClient(proc.target) as client:
            assert client.health("recsvc.v1.Recommender") == "SERVING"
            result = client.recommend("u00001", k=10)
            ids = [i.item_id for i in result.items]
            assert len(set(ids)) == 10
            history = (tmp_path / "demo" / "data" / "interactions.csv").read_text().splitlines()
            seen = {line.split(",")[1] for line in history if line.startswith("u00001,")}
            assert seen and not seen & set(ids)
        result = run("call", "recommend", "--target", proc.target, "--user", "u00002", "-k", "3")
        assert result.returncode == 0 and len(json.loads(result.stdout)["items"]) == 3
        result = run(
            "call",
            "record",
            "--target",
            proc.target,
            "--user",
            "u00002",
            "--items",
            "i00001",
            "i00002",
            "--event",
            "purchase",
        )
        assert result.returncode == 0 and json.loads(result.stdout) == {
            "accepted": 2,
            "duplicates": 0,
        }
        result = run("call", "similar", "--target", proc.target, "--item", "nope")
        assert result.returncode == 1 and "NOT_FOUND" in result.stderr


@pytest.mark.slow
def test_embed_train_and_evaluate_with_images(products: ProductImages, tmp_path: Path) -> None:
    table = tmp_path / "embeddings.parquet"
    embed = ["embed", "--catalogue", str(products.catalogue), "--out", str(table)]
    # A process of its own: the loader process is forked from it.
    first = run_recsvc_process(
        *embed, "--loader-workers", "1", "--batch-size", "16", "--no-progress"
    )
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["embedded"] == len(products.ids) and report["failed"] == 0
    again = json.loads(run(*embed, "--loader-workers", "0", "--no-progress").stdout)
    assert again["reused"] == len(products.ids) and again["embedded"] == 0

    interactions = kind_interactions(products, products.ids[:48])
    store = tmp_path / "store"
    trained = run(
        "train",
        "--interactions",
        str(interactions),
        "--images",
        str(table),
        "--out",
        str(store),
        "--items",
        str(products.catalogue),
        "--factors",
        "8",
        "--iterations",
        "5",
        "--no-progress",
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["items"] == len(products.ids)  # cold items included
    shown = json.loads(run("models", "show", "--model-store", str(store)).stdout)
    assert shown["images"]["cold_items"] == 12 and shown["images"]["projection"] is True

    evaluated = run(
        "eval",
        "--images",
        str(table),
        "--catalogue",
        str(products.catalogue),
        "--attributes",
        "category,colour",
        "--users",
        "300",
        "--holdout",
        "20",
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    learned = result["visual"]["learned_space"]["against_catalogue"]
    assert learned["agreement@10"] > 2 * learned["chance"]
    assert (
        result["cold_start"]["cold"]["ndcg@10"]
        > result["cold_start"]["cold_baselines"]["random"]["ndcg@10"]
    )
    missing = run("eval", "--json")
    assert missing.returncode == 2 and "--interactions" in missing.stderr
