"""train / eval / tune / models as real commands, on generated data and (when present) ml-100k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsvc.data.demo import DemoData
from tests.helpers import SHARED_DATA
from tests.helpers import run_recsvc as run

ML100K = SHARED_DATA / "ml-100k" / "u.data"


def test_eval_json_has_the_metrics_and_baselines(demo_data: DemoData) -> None:
    result = run(
        "eval",
        "--interactions",
        str(demo_data.interactions),
        "--protocol",
        "stratified-user",
        "--factors",
        "16",
        "--iterations",
        "5",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("ndcg@10", "precision@10", "recall@10", "map@10"):
        assert 0 < report[key] <= 1
    assert set(report["baselines"]) == {"popularity", "random", "bpr"}
    assert report["ndcg@10"] > report["baselines"]["popularity"]["ndcg@10"]


@pytest.mark.slow
def test_eval_leave_last_n_and_its_error_without_timestamps(
    tmp_path: Path, demo_data: DemoData
) -> None:
    result = run(
        "eval",
        "--interactions",
        str(demo_data.interactions),
        "--protocol",
        "leave-last-n",
        "--factors",
        "8",
        "--iterations",
        "3",
        "--no-baselines",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    no_time = tmp_path / "i.csv"
    no_time.write_text("user_id,item_id\nu1,a\nu1,b\nu2,a\n")
    result = run("eval", "--interactions", str(no_time), "--protocol", "leave-last-n")
    assert result.returncode == 2 and "timestamp" in result.stderr


@pytest.mark.slow
def test_tune_writes_params_that_train_accepts(demo_data: DemoData, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    result = run(
        "tune", "--interactions", str(demo_data.interactions), "--trials", "3", "--out", str(params)
    )
    assert result.returncode == 0, result.stderr
    tuned = json.loads(params.read_text())
    assert tuned["tuning"]["trials"] == 3 and "ndcg@10" in tuned["tuning"]["test"]
    store = tmp_path / "store"
    result = run(
        "train",
        "--interactions",
        str(demo_data.interactions),
        "--out",
        str(store),
        "--params",
        str(params),
        "--iterations",
        "4",
        "--evaluate",
        "stratified-item",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(run("models", "show", "--model-store", str(store)).stdout)
    assert shown["parameters"]["factors"] == tuned["params"]["factors"]
    assert shown["parameters"]["iterations"] == 4  # an explicit flag beats the file
    assert shown["metrics"]["protocol"] == "stratified-item" and shown["metrics"]["ndcg@10"] > 0
    assert shown["data"]["interactions"] > 0


def test_bad_params_file_is_rejected(tmp_path: Path, demo_data: DemoData) -> None:
    params = tmp_path / "p.json"
    params.write_text('{"factors": 8, "colour": "blue"}')
    result = run(
        "train",
        "--interactions",
        str(demo_data.interactions),
        "--out",
        str(tmp_path / "s"),
        "--params",
        str(params),
    )
    assert result.returncode == 2 and "colour" in result.stderr


@pytest.mark.slow
def test_models_list_verify_gc(demo_data: DemoData, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for _ in range(3):
        result = run(
            "train",
            "--interactions",
            str(demo_data.interactions),
            "--out",
            str(store),
            "--factors",
            "4",
            "--iterations",
            "1",
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
    listed = run("models", "list", "--model-store", str(store)).stdout.splitlines()
    assert len(listed) == 3 and listed[-1].startswith("*")
    assert run("models", "verify", "--model-store", str(store)).returncode == 0
    oldest, middle = listed[0].split()[0], listed[1].split()[0]
    newest = listed[2].split()[1]
    rollback = run(
        "models", "use", "--model-store", str(store), middle, "--by", "ana", "--reason", "bad CTR"
    )
    assert rollback.returncode == 0 and (store / "LATEST").read_text().strip() == middle
    damaged = store / "versions" / oldest / "item_factors.npy"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    verify = run("models", "verify", "--model-store", str(store))
    assert verify.returncode == 1 and f"FAILED  {oldest}" in verify.stdout
    refused = run("models", "use", "--model-store", str(store), oldest)
    assert refused.returncode == 2 and "item_factors.npy" in refused.stderr
    experiments = tmp_path / "experiments.json"
    arms = [{"name": "control", "weight": 50}, {"name": "new", "weight": 50}]
    arms[1]["model_version"] = oldest
    experiments.write_text(json.dumps({"version": "1", "experiments": [
        {"name": "ranker", "arms": arms}]}))  # fmt: skip
    promote = ["models", "promote", "--model-store", str(store), "--experiments", str(experiments)]
    refused = run(*promote, "--arm", "new", "--reason", "won")  # the damaged version
    assert refused.returncode == 2 and "item_factors.npy" in refused.stderr
    arms[1]["model_version"] = newest
    experiments.write_text(json.dumps({"version": "1", "experiments": [
        {"name": "ranker", "arms": arms}]}))  # fmt: skip
    assert "has arms control, new" in run(*promote, "--arm", "x", "--reason", "r").stderr
    assert "current model" in run(*promote, "--arm", "control", "--reason", "r").stderr
    promoted = run(*promote, "--arm", "new", "--reason", "CTR +20%, p=0.001", "--by", "bo")
    assert promoted.returncode == 0 and (store / "LATEST").read_text().strip() == newest
    history = run("models", "history", "--model-store", str(store), "--json").stdout.splitlines()
    entries = [json.loads(line) for line in history]  # refused switches are not recorded
    assert [(e["version"], e["previous"], e["by"]) for e in entries] == [
        (middle, newest, "ana"),
        (newest, middle, "bo"),
    ]
    assert entries[0]["reason"] == "bad CTR" and entries[1]["arm"] == "new"
    gc = run("models", "gc", "--model-store", str(store), "--keep", "1")
    # --keep 1 keeps the newest, which is LATEST again: the other two go.
    assert gc.returncode == 0 and gc.stdout.count("removed") == 2
    assert len(run("models", "list", "--model-store", str(store)).stdout.splitlines()) == 1


def test_bpr_model_trains_and_serves_sessions(demo_data: DemoData, tmp_path: Path) -> None:
    from recsvc.artifacts import ModelStore
    from recsvc.core.queries import RecommendQuery, Strategy
    from recsvc.server import build_recommender
    from tests.conftest import SEARCH, TEST_SETTINGS

    store = tmp_path / "store"
    result = run(
        "train",
        "--interactions",
        str(demo_data.interactions),
        "--out",
        str(store),
        "--algorithm",
        "bpr",
        "--factors",
        "16",
        "--iterations",
        "20",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    model = ModelStore(store).load_latest(SEARCH)
    assert model.info.algorithm == "bpr" and model.item_factors.shape[1] == 17  # + item bias
    recommender = build_recommender(TEST_SETTINGS, model)
    result_session = recommender.recommend(RecommendQuery("", 5, recent_item_ids=("i00001",)))
    assert result_session.strategy is Strategy.SESSION and len(result_session.items) == 5


@pytest.mark.slow
@pytest.mark.skipif(not ML100K.exists(), reason="../shared/data/ml-100k is not present")
def test_ml100k_reference_protocol_beats_the_baselines() -> None:
    result = run(
        "eval",
        "--interactions",
        str(ML100K),
        "--protocol",
        "stratified-item",
        "--weighting",
        "binary",
        "--factors",
        "32",
        "--regularization",
        "20",
        "--alpha",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["data"]["interactions"] == 100_000 and report["split"]["test"] == 24_934
    assert report["ndcg@10"] >= 0.46
    assert report["ndcg@10"] > report["baselines"]["bpr"]["ndcg@10"]
    assert report["ndcg@10"] > 1.5 * report["baselines"]["popularity"]["ndcg@10"]
