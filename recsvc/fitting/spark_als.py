"""The ``spark`` training engine: ``pyspark.ml.recommendation.ALS`` with ``implicitPrefs=True``.

Spark computes the factors; only the two factor matrices come back to the driver, where the
training pipeline builds the same checksummed artefact as for the implicit engine (the manifest
records ``engine: spark``). Two inputs:

- :func:`fit_spark_matrix`: a user-item matrix that is already on the driver (``recsvc eval``
  and ``tune``, whose splits are made there, and ``recsvc train`` from a file). The weighting
  is the implicit engine's own (:func:`recsvc.fitting.factors.weight_matrix`), so both engines
  see the very same numbers.
- :func:`fit_spark_store`: the Parquet interaction store read by Spark itself (the train
  worker). The event rules of :mod:`recsvc.data.event_filters` (tombstones, impressions,
  dislikes), the per-pair sum, ``weight_transform`` and the weighting (binary, BM25, TF-IDF
  with implicit's formulas) run in Spark, and Spark maps the string ids to ints.

How the options map (Spark ALS-WR against implicit's ALS, both Hu, Koren and Volinsky 2008):

- ``factors`` -> ``rank``; ``iterations`` -> ``maxIter``; ``seed`` -> ``seed``.
- ``alpha`` -> ``alpha`` unchanged. implicit's confidence is ``alpha * w``, Spark's is
  ``1 + alpha * w``: the same to within 1, which matters only when ``alpha * w`` is small.
- ``regularization`` -> ``regParam = regularization * n_users / n_interactions``. Spark scales
  the penalty of each user's (item's) solve by its number of interactions (ALS-WR, Zhou et al.
  2008: ``regParam * n_u``); implicit adds ``regularization`` unscaled. Dividing by the mean
  interactions per user gives the average user the penalty implicit would give it, so that one
  setting (and the tuning range of ``recsvc tune``) means about the same on both engines; users
  and items with more interactions than the mean are regularised more than by implicit. The
  ``regParam`` used is logged and recorded in the manifest's parameters (``spark_reg_param``).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from recsvc.config import TrainSettings
from recsvc.core.state import NOT_POSITIVE
from recsvc.data.event_filters import DISLIKE, FORGET, TOMBSTONE_SLACK_MS
from recsvc.data.interaction_store import SCHEMA
from recsvc.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

APP_NAME = "recsvc-train"
# Spark prints INFO lines by the hundred; our own log says what happened.
_SPARK_LOG_LEVEL = "WARN"
# The interaction store's Arrow column types as Spark SQL types.
_SPARK_TYPES = {"string": "string", "float": "float", "int32": "int", "int64": "bigint"}


@dataclass(frozen=True)
class SparkFactors:
    """Factors learned by Spark. user_factors, item_factors : float32, shape (n, factors),
    rows in the caller's id order (zeros for a row Spark saw no interaction of)."""

    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    reg_param: float
    seconds: float


def parse_spark_conf(pairs: list[str] | None) -> dict[str, str]:
    """``--spark-conf KEY=VALUE`` flags as a dict; a malformed pair is a ConfigError."""
    conf: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--spark-conf: {pair!r} is not KEY=VALUE")
        if not key.startswith("spark.") or key == "spark.":
            raise ConfigError(f"--spark-conf: {key!r} is not a Spark setting (spark.*)")
        conf[key] = value
    return conf


def spark_session(train: TrainSettings) -> SparkSession:
    """The process's Spark session at ``train.spark_master`` with ``train.spark_conf``.

    Spark keeps one session per process (``getOrCreate``): a later call reuses it, and its
    master and static settings are those of the first. Under ``spark-submit`` the master it
    was given wins over ``train.spark_master``. A session that fails to start (no Java, a bad
    setting) is a ConfigError that says so.
    """
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ConfigError(
            "train.engine spark needs pyspark: pip install 'recsvc[spark]' (and Java 17)"
        ) from exc
    builder = SparkSession.builder.appName(APP_NAME)
    try:
        submitted = SparkConf().get("spark.master", None)  # set by spark-submit --master
    except Exception as exc:
        raise ConfigError(
            f"Spark did not start (Java 17 must be installed): {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    if submitted is None:
        builder = builder.master(train.spark_master)
    elif submitted != train.spark_master:
        log.info("spark: master %s from spark-submit (train.spark_master unused)", submitted)
    for key, value in train.spark_conf.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:
        raise ConfigError(
            f"Spark did not start at master {submitted or train.spark_master!r} with the "
            f"settings {sorted(train.spark_conf)} (train.spark_master, train.spark_conf / "
            f"--spark-conf; Java 17 must be installed): {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    session.sparkContext.setLogLevel(_SPARK_LOG_LEVEL)
    # py4j logs each connection it closes at INFO, down to interpreter exit.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    _ensure_checkpoint_dir(session, session.sparkContext.master or "")
    return session


def _ensure_checkpoint_dir(session: SparkSession, master: str) -> None:
    """ALS cuts its lineage every 10 sweeps only with a checkpoint directory; without one,
    ~25 sweeps overflow the executors' stacks (StackOverflowError, measured on ml-100k).
    Local masters get a temporary directory; a cluster needs ``spark.checkpoint.dir`` on
    storage every executor reaches (HDFS, S3, a shared volume)."""
    context = session.sparkContext
    if context.getCheckpointDir():
        return
    if master.startswith("local"):
        directory = tempfile.mkdtemp(prefix="recsvc-spark-checkpoints-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        context.setCheckpointDir(directory)
    else:
        log.warning(
            "spark: no spark.checkpoint.dir: ALS with many iterations may overflow the stack"
        )


def spark_reg_param(regularization: float, n_users: int, n_interactions: int) -> float:
    """Spark's regParam for implicit's ``regularization`` (the module's docstring: why)."""
    if n_interactions == 0:
        return regularization
    return regularization * n_users / n_interactions


def fit_spark_matrix(weighted: sp.csr_matrix, train: TrainSettings) -> SparkFactors:
    """ALS on Spark over an already weighted (n_users, n_items) matrix on the driver."""
    _check_algorithm(train)
    spark = spark_session(train)
    coo = weighted.tocoo()
    table = pa.table(
        {
            "user": pa.array(coo.row.astype(np.int32)),
            "item": pa.array(coo.col.astype(np.int32)),
            "rating": pa.array(coo.data.astype(np.float32)),
        }
    )
    ratings = spark.createDataFrame(table)
    n_users, n_items = weighted.shape
    reg = spark_reg_param(train.regularization, n_users, int(weighted.nnz))
    return _fit(ratings, n_users, n_items, train, reg)


def fit_spark_store(
    parts: list[Path],
    user_ids: list[str],
    item_ids: list[str],
    train: TrainSettings,
    deleted_items: list[str] | None = None,
) -> SparkFactors:
    """ALS on Spark over the Parquet parts of the interaction store, read by Spark (every
    executor must reach them: a shared volume or object storage on a cluster).

    ``user_ids`` / ``item_ids``: the order of the rows of the factors returned (the driver's id
    maps of the artefact). ``deleted_items`` leave the training data, as in the train worker.
    """
    _check_algorithm(train)
    if not parts:
        raise ConfigError("spark engine: the interaction store holds no part to train on")
    spark = spark_session(train)
    schema = ", ".join(f"{field.name} {_SPARK_TYPES[str(field.type)]}" for field in SCHEMA)
    events = spark.read.schema(schema).parquet(*(str(part) for part in parts))
    pairs = _weighted_pairs(_positive_events(events, deleted_items or []), train)
    indexed, users, items = _index_ids(pairs)
    n_interactions = indexed.count()
    reg = spark_reg_param(train.regularization, len(users), n_interactions)
    fitted = _fit(indexed, len(users), len(items), train, reg)
    return SparkFactors(
        _reorder(fitted.user_factors, users, user_ids, "users"),
        _reorder(fitted.item_factors, items, item_ids, "items"),
        reg,
        fitted.seconds,
    )


def _check_algorithm(train: TrainSettings) -> None:
    if train.algorithm != "als":
        raise ConfigError("train.engine spark trains ALS only; use engine implicit for bpr")


def _fit(
    ratings: DataFrame, n_users: int, n_items: int, train: TrainSettings, reg: float
) -> SparkFactors:
    from pyspark.ml.recommendation import ALS

    # One block per core Spark has: its default of 10 blocks costs ~10 shuffle tasks per
    # half-sweep whatever the cores, most of the time on small data (docs/BENCHMARKS.md).
    blocks = max(1, ratings.sparkSession.sparkContext.defaultParallelism)
    als = ALS(
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        rank=train.factors,
        maxIter=train.iterations,
        regParam=reg,
        alpha=train.alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        seed=train.seed,
    )
    started = time.perf_counter()
    model = als.fit(ratings)
    users = _collect_factors(model.userFactors, n_users, train.factors)
    items = _collect_factors(model.itemFactors, n_items, train.factors)
    seconds = time.perf_counter() - started
    log.info("spark ALS: %d users, %d items, regParam %.6g, %.2fs", n_users, n_items, reg, seconds)
    return SparkFactors(users, items, reg, seconds)


def _collect_factors(frame: DataFrame, rows: int, rank: int) -> npt.NDArray[np.float32]:
    """Spark's (id, features) rows as a dense (rows, rank) array; rows Spark has not: zero."""
    table = frame.toArrow()
    out = np.zeros((rows, rank), dtype=np.float32)
    if table.num_rows:
        ids = table.column("id").to_numpy().astype(np.int64)
        features = table.column("features").combine_chunks().flatten()
        out[ids] = features.to_numpy(zero_copy_only=False).reshape(-1, rank)
    return out


def _positive_events(events: DataFrame, deleted_items: list[str]) -> DataFrame:
    """The rules of recsvc.data.event_filters in Spark: events a tombstone covers, the
    non-positive types, every event of a disliked pair and deleted items leave."""
    from pyspark.sql import functions as F

    events = events.dropDuplicates(["event_id"])  # a batch ingested twice counts once
    marks = (
        events.where(F.col("event_type") == FORGET)
        .groupBy("user_id")
        .agg((F.max("timestamp_ms") + F.lit(TOMBSTONE_SLACK_MS)).alias("forgotten_to_ms"))
    )
    kept = events.join(marks, "user_id", "left").where(
        F.col("forgotten_to_ms").isNull() | (F.col("timestamp_ms") > F.col("forgotten_to_ms"))
    )
    disliked = kept.where(F.col("event_type") == DISLIKE).select("user_id", "item_id").distinct()
    positives = kept.where(~F.col("event_type").isin(sorted(k.value for k in NOT_POSITIVE)))
    positives = positives.join(disliked, ["user_id", "item_id"], "left_anti")
    if deleted_items:
        positives = positives.where(~F.col("item_id").isin(deleted_items))
    return positives


def _weighted_pairs(events: DataFrame, train: TrainSettings) -> DataFrame:
    """(user_id, item_id, rating): weights summed per pair, then ``weight_transform`` and
    ``weighting`` with the formulas of recsvc.fitting.factors.weight_matrix (implicit's)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    pairs = events.groupBy("user_id", "item_id").agg(F.sum("weight").alias("w"))
    if train.weight_transform == "log1p":
        pairs = pairs.withColumn("w", F.log1p(F.greatest(F.col("w"), F.lit(0.0))))
    if train.weighting == "binary":
        pairs = pairs.withColumn("w", F.lit(1.0))
    elif train.weighting in ("bm25", "tfidf"):
        n_users = pairs.select("user_id").distinct().count()
        per_item = Window.partitionBy("item_id")
        idf = F.log(F.lit(float(n_users))) - F.log1p(F.count(F.lit(1)).over(per_item))
        if train.weighting == "tfidf":
            pairs = pairs.withColumn("w", F.sqrt("w") * idf)
        else:
            k1, b = train.bm25_k1, train.bm25_b
            row_sum = F.sum("w").over(Window.partitionBy("user_id"))
            mean_length = pairs.groupBy("user_id").agg(F.sum("w").alias("s")).agg(F.avg("s"))
            average = float(mean_length.first()[0] or 1.0)  # type: ignore[index]
            norm = (1.0 - b) + b * row_sum / F.lit(average)
            pairs = pairs.withColumn("w", F.col("w") * (k1 + 1.0) / (k1 * norm + F.col("w")) * idf)
    return pairs.select("user_id", "item_id", F.col("w").cast("float").alias("rating"))


def _index_ids(pairs: DataFrame) -> tuple[DataFrame, list[str], list[str]]:
    """String ids to the int ids ALS needs, in Spark; also each int's string (the labels)."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as F

    indexer = StringIndexer(
        inputCols=["user_id", "item_id"],
        outputCols=["user_index", "item_index"],
        stringOrderType="alphabetAsc",
    ).fit(pairs)
    users, items = (list(labels) for labels in indexer.labelsArray)
    indexed = indexer.transform(pairs).select(
        F.col("user_index").cast("int").alias("user"),
        F.col("item_index").cast("int").alias("item"),
        "rating",
    )
    return indexed, users, items


def _reorder(
    factors: npt.NDArray[np.float32], spark_ids: list[str], wanted: list[str], what: str
) -> npt.NDArray[np.float32]:
    """Rows of Spark's id order put in ``wanted``'s order; an id Spark did not see: zeros."""
    row_of = {identifier: row for row, identifier in enumerate(spark_ids)}
    rows = np.asarray([row_of.get(identifier, -1) for identifier in wanted], dtype=np.int64)
    missing = int((rows < 0).sum())
    if missing:
        log.warning("spark ALS: %d %s of the model had no training event in Spark", missing, what)
    out = np.zeros((len(wanted), factors.shape[1]), dtype=np.float32)
    out[rows >= 0] = factors[rows[rows >= 0]]
    return out


def _first_line(exc: BaseException) -> str:
    text: Any = str(exc).strip()
    return str(text.splitlines()[0]) if text else ""
