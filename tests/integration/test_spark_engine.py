"""The spark training engine for real: pyspark ALS in local[2] on the small demo data.

One Spark session serves the module (its JVM takes ~10 s to start): the commands run in this
process, where the engine's ``getOrCreate`` finds it. The served model comes from a real
`recsvc serve` process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsvc.artifacts import ModelStore
from recsvc.cli import main
from recsvc.client import RecsvcClient
from recsvc.config import IndexSettings, TrainSettings
from recsvc.core.state import EventType, Interaction
from recsvc.data.demo import DemoData
from recsvc.data.interaction_files import read_interactions
from recsvc.data.interaction_store import InteractionStore, file_sha256, import_interactions
from recsvc.testing import running_server, server_env
from tests.conftest import SEARCH
from workers.retrain import RetrainPolicy, TrainWorker

pytestmark = [pytest.mark.slow, pytest.mark.spark]
pyspark = pytest.importorskip("pyspark", reason="the spark extra is not installed")

MASTER = "local[2]"
# Small data: a few shuffle partitions instead of Spark's 200.
QUIET = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
}
SPARK_FLAGS = ["--engine", "spark", "--spark-master", MASTER]
SMALL = ["--factors", "16", "--iterations", "8", "--regularization", "1", "--alpha", "5"]
SPARK_TRAIN = TrainSettings(
    engine="spark",
    spark_master=MASTER,
    spark_conf=QUIET,
    factors=16,
    iterations=8,
    regularization=1.0,
    alpha=5.0,
)


@pytest.fixture(scope="module", autouse=True)
def spark_session() -> Iterator[object]:
    from recsvc.fitting.spark_als import spark_session

    session = spark_session(SPARK_TRAIN)
    yield session
    session.stop()


def run_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_on_spark_publishes_a_model_that_a_server_serves(
    demo_data: DemoData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    code, out, err = run_in_process(
        capsys,
        "train",
        "--interactions",
        str(demo_data.interactions),
        "--out",
        str(store),
        *SPARK_FLAGS,
        *SMALL,
        "--no-progress",
    )
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["engine"] == "spark"
    manifest = ModelStore(store).read_manifest(ModelStore(store).latest_version() or "")
    assert manifest.engine == "spark" and manifest.parameters["spark_reg_param"] > 0
    data = read_interactions(demo_data.interactions)
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    with (
        running_server(["serve", "--model-store", str(store), "--port", "0"], env) as proc,
        RecsvcClient(proc.target) as client,
    ):
        info = client.model_info()
        assert info.engine == "spark" and info.version == manifest.model_version
        user = data.user_ids[0]
        seen = {data.item_ids[i] for i in data.matrix[0].indices}
        result = client.recommend(user, k=10)
    ids = [item.item_id for item in result.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert set(ids) <= set(data.item_ids) and not set(ids) & seen


def test_eval_on_spark_ranks_about_as_well_as_implicit(
    demo_data: DemoData, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["eval", "--interactions", str(demo_data.interactions), *SMALL, "--seed", "7"]
    common += ["--no-baselines", "--json"]
    code, out, err = run_in_process(capsys, *common, *SPARK_FLAGS)
    assert code == 0, err
    spark = json.loads(out)
    code, out, err = run_in_process(capsys, *common, "--threads", "1")
    assert code == 0, err
    implicit = json.loads(out)
    # The same parameters (regParam scaled as spark_als documents): close, not identical.
    assert spark["ndcg@10"] > 0.8 * implicit["ndcg@10"] > 0


def test_the_train_worker_has_spark_read_the_interaction_store(
    demo_data: DemoData, tmp_path: Path
) -> None:
    events = InteractionStore(tmp_path / "interactions")
    path = demo_data.interactions
    import_interactions(events, path, lambda: read_interactions(path), file_sha256(path))
    models = ModelStore(tmp_path / "models")
    policy = RetrainPolicy(0, 0.0, 1.0, 2, warm_start=False, warm_start_iterations=2)
    worker = TrainWorker(events, models, SPARK_TRAIN, IndexSettings(recall_sample=50), policy)
    version = worker.run_once(force=True)
    assert version is not None
    model = models.load_latest(SEARCH)
    assert model.info.engine == "spark"
    stored = events.interactions()
    assert model.users.ids == stored.user_ids and model.items.ids == stored.item_ids
    # Every user and item has a training event, so Spark learned a factor row for each.
    assert np.all(np.abs(model.user_factors).sum(axis=1) > 0)
    assert np.all(np.abs(model.item_factors).sum(axis=1) > 0)


def test_spark_reads_the_store_as_training_does(demo_data: DemoData, tmp_path: Path) -> None:
    """The rules (repeats, tombstones, dislikes, impressions) and the weighting in Spark give
    the very pairs and weights of recsvc.fitting.factors.weight_matrix on the store (BM25 on
    log1p here; binary, none and TF-IDF matched too when written, to 4e-7)."""
    from recsvc.fitting import spark_als
    from recsvc.fitting.factors import weight_matrix

    events = InteractionStore(tmp_path / "interactions")
    path = demo_data.interactions
    import_interactions(events, path, lambda: read_interactions(path), file_sha256(path))
    data = events.interactions()
    forgotten, disliking = data.user_ids[0], data.user_ids[1]
    disliked = data.item_ids[data.matrix[1].indices[0]]
    now = int(time.time() * 1000)
    extra = [
        Interaction(forgotten, "", EventType.FORGET, 0.0, now, "f1"),
        Interaction(disliking, disliked, EventType.DISLIKE, 1.0, now, "d1"),
        Interaction(disliking, data.item_ids[5], EventType.IMPRESSION, 1.0, now, "i1"),
        Interaction(disliking, data.item_ids[6], EventType.CLICK, 2.0, now, "c1"),
    ]
    events.write_part(extra, "a", "b")
    events.write_part(extra, "a", "c")  # the same events again: read once
    train = SPARK_TRAIN.model_copy(update={"weighting": "bm25", "weight_transform": "log1p"})
    spark = spark_als.spark_session(train)
    raw = spark.read.parquet(*(str(part) for part in events.parts()))
    pairs = spark_als._weighted_pairs(spark_als._positive_events(raw, []), train).toArrow()
    expected = events.interactions()
    assert forgotten not in expected.user_ids and disliked in expected.item_ids
    weights = weight_matrix(expected.matrix, train).tocoo()
    want = {
        (expected.user_ids[u], expected.item_ids[i]): w
        for u, i, w in zip(weights.row, weights.col, weights.data, strict=True)
    }
    got = dict(
        zip(
            zip(
                pairs.column("user_id").to_pylist(),
                pairs.column("item_id").to_pylist(),
                strict=True,
            ),
            pairs.column("rating").to_pylist(),
            strict=True,
        )
    )
    assert got.keys() == want.keys()
    keys = sorted(want)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=1e-5)


def test_a_bad_spark_conf_is_a_clear_error(
    demo_data: DemoData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = ["train", "--interactions", str(demo_data.interactions), "--out", str(tmp_path)]
    code, _, err = run_in_process(capsys, *train, *SPARK_FLAGS, "--spark-conf", "executor=4g")
    assert code == 2 and "--spark-conf: 'executor' is not a Spark setting" in err
    code, _, err = run_in_process(capsys, *train, *SPARK_FLAGS, "--spark-conf", "spark.x")
    assert code == 2 and "--spark-conf: 'spark.x' is not KEY=VALUE" in err
