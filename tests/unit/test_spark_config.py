"""The spark engine's settings: --spark-conf parsing, RECSVC_TRAIN__* and the CLI flags."""

from __future__ import annotations

import pytest

from recsvc.cli import build_parser
from recsvc.cli.offline import _train_overrides
from recsvc.config import load_settings
from recsvc.errors import ConfigError
from recsvc.fitting.spark_als import parse_spark_conf, spark_reg_param


def test_pairs_become_a_dict_the_last_value_winning() -> None:
    pairs = ["spark.driver.memory=4g", " spark.sql.shuffle.partitions = 8 ", "spark.a=b=c"]
    pairs.append("spark.driver.memory=6g")
    assert parse_spark_conf(pairs) == {
        "spark.driver.memory": "6g",
        "spark.sql.shuffle.partitions": "8",
        "spark.a": "b=c",
    }
    assert parse_spark_conf(None) == {}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("spark.driver.memory", "is not KEY=VALUE"),
        ("spark.driver.memory=", "is not KEY=VALUE"),
        ("=4g", "is not KEY=VALUE"),
        ("driver.memory=4g", "is not a Spark setting"),
        ("spark.=1", "is not a Spark setting"),
    ],
)
def test_a_malformed_pair_is_refused_by_name(pair: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"--spark-conf: .*{message}"):
        parse_spark_conf([pair])


def test_the_environment_sets_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_TRAIN__ENGINE", "spark")
    monkeypatch.setenv("RECSVC_TRAIN__SPARK_MASTER", "spark://head:7077")
    monkeypatch.setenv("RECSVC_TRAIN__SPARK_CONF", '{"spark.executor.memory": "8g"}')
    train = load_settings().train
    assert (train.engine, train.spark_master) == ("spark", "spark://head:7077")
    assert train.spark_conf == {"spark.executor.memory": "8g"}


def test_defaults_and_a_bad_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    train = load_settings().train
    assert (train.engine, train.spark_master, train.spark_conf) == ("implicit", "local[*]", {})
    monkeypatch.setenv("RECSVC_TRAIN__SPARK_CONF", '{"executor.memory": "8g"}')
    with pytest.raises(ConfigError, match=r"train\.spark_conf"):
        load_settings()


@pytest.mark.parametrize("command", ["train", "eval", "tune"])
def test_each_offline_command_takes_the_engine_flags(command: str) -> None:
    argv = [command, "--engine", "spark", "--spark-master", "local[2]"]
    argv += ["--spark-conf", "spark.driver.memory=2g", "--spark-conf", "spark.ui.enabled=false"]
    if command == "tune":
        argv += ["--out", "params.json"]
    overrides = _train_overrides(build_parser().parse_args(argv))
    assert overrides["engine"] == "spark" and overrides["spark_master"] == "local[2]"
    assert overrides["spark_conf"] == {"spark.driver.memory": "2g", "spark.ui.enabled": "false"}


def test_reg_param_gives_the_average_user_implicits_penalty() -> None:
    # Spark's penalty on user u is regParam * n_u; at the mean n_u it equals regularization.
    assert spark_reg_param(15.0, 943, 75_000) * 75_000 / 943 == pytest.approx(15.0)
    assert spark_reg_param(0.5, 10, 0) == 0.5


def test_spark_trains_als_only() -> None:
    with pytest.raises(ConfigError, match="spark trains ALS only"):
        load_settings(train={"engine": "spark", "algorithm": "bpr"})


def test_flags_extend_the_environments_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_TRAIN__SPARK_CONF", '{"spark.a": "1", "spark.b": "1"}')
    train = load_settings(train={"spark_conf": {"spark.b": "2"}}).train
    assert train.spark_conf == {"spark.a": "1", "spark.b": "2"}
