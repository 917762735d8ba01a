"""The train worker: retrain when enough new interactions arrived or enough time passed,
refuse a model whose holdout metric dropped, publish, keep the last K versions.

Training data = every event in the Parquet interaction store: the history loaded by `recsvc
import` and the events the ingest worker appended since. (``base_interactions``, the `--base`
file, is deprecated: it is trained on as well, but a run that forgets it silently trains on less;
import the file once instead.) Its state (events seen at the last training, and when) is kept
beside the store.

The holdout guard always runs: the candidate's ndcg@10 on the holdout split is compared with the
current model's recorded figure on the same protocol, or, when the current model has none (it
came from `recsvc train` without --evaluate), with the current model's recipe (the parameters
in its manifest) fit and measured on that same split.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.artifacts import ModelStore
from recsvc.backends import upserted_items_reader
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.config import IndexSettings, Settings, TrainSettings, WorkerSettings
from recsvc.core.state import StoredItem
from recsvc.data.event_filters import training_events
from recsvc.data.interaction_files import read_interactions
from recsvc.data.interaction_store import IMPORT_EVENT_TYPE, InteractionStore
from recsvc.data.matrix import Interactions, interactions_from_arrays
from recsvc.durable import replace_bytes_atomically
from recsvc.evaluation.holdout import Protocol, Split
from recsvc.fitting.factors import TrainedFactors, spark_trained_factors
from recsvc.training.pipeline import (
    holdout_metrics,
    holdout_split,
    recipe_of,
    train_and_publish,
)

log = logging.getLogger(__name__)
STATE = "_train_state.json"
# How the holdout metric that guards publishing is measured.
HOLDOUT_PROTOCOL: Protocol = "stratified-user"


@dataclass(frozen=True)
class RetrainPolicy:
    """When to retrain, what to refuse, what to keep (WorkerSettings documents each)."""

    min_new_events: int
    max_age_seconds: float
    tolerance: float  # refuse when holdout ndcg@10 falls by more than this share
    keep_versions: int
    warm_start: bool
    warm_start_iterations: int
    protocol: Protocol = HOLDOUT_PROTOCOL

    @classmethod
    def from_settings(cls, workers: WorkerSettings) -> RetrainPolicy:
        return cls(
            min_new_events=workers.retrain_min_new_events,
            max_age_seconds=workers.retrain_max_age_seconds,
            tolerance=workers.retrain_tolerance,
            keep_versions=workers.keep_versions,
            warm_start=workers.warm_start,
            warm_start_iterations=workers.warm_start_iterations,
        )


class TrainWorker:
    def __init__(
        self,
        events: InteractionStore,
        models: ModelStore,
        train: TrainSettings,
        index: IndexSettings,
        policy: RetrainPolicy,
        base_interactions: Path | None = None,
        images: Path | None = None,
        upserted: Callable[[], list[StoredItem]] | None = None,
    ) -> None:
        self.events = events
        self.models = models
        self.train = train
        self.index = index
        self.policy = policy
        self.base = base_interactions
        self.images = images
        self.upserted = upserted or (lambda: [])

    def due(self) -> tuple[bool, int]:
        """Whether to train now, and how many events the store holds."""
        due, _, count = self.decide()
        return due, count

    def decide(self) -> tuple[bool, str, int]:
        """Whether to train now, why (one line), and how many events the store holds. Cheap:
        it reads Parquet footers and LATEST, no interaction and no model file (`worker train
        --check-due` runs it on a CPU before a GPU Job is started)."""
        state = self._state()
        count = self.events.count()
        new = count - int(state.get("events", 0))
        age = time.time() - float(state.get("trained_at", 0))
        policy = self.policy
        if count == 0:
            return False, f"not due: the interaction store {self.events.root} is empty", count
        if self.models.latest_version() is None:
            return True, f"due: no model yet, and the store holds {count} interactions", count
        if self.events.latest_tombstone_ms() > float(state.get("trained_at", 0)) * 1000:
            # The current model still holds a forgotten user (served around by the user
            # store's forgotten mark, which expires): replace it.
            return True, "due: a ForgetUser was ingested since the last training", count
        if new >= policy.min_new_events:
            return True, f"due: {new} new interactions (at least {policy.min_new_events})", count
        if new > 0 and age >= policy.max_age_seconds:
            return (
                True,
                f"due: {new} new interactions and the last training is {age:.0f}s old (at "
                f"least {policy.max_age_seconds:.0f}s)",
                count,
            )
        if new <= 0:
            return False, "not due: no new interactions since the last training", count
        return (
            False,
            f"not due: {new} new interactions (fewer than {policy.min_new_events}) and the "
            f"last training is {age:.0f}s old (less than {policy.max_age_seconds:.0f}s)",
            count,
        )

    def run_once(self, force: bool = False) -> str | None:
        """Train and publish if due; returns the new version, or None (not due, or refused)."""
        due, count = self.due()
        if not (due or force):
            return None
        data = self._training_data()
        split = holdout_split(data, self.policy.protocol)
        metrics = holdout_metrics(data, self.train, self.policy.protocol, split)
        current = self._current_metric(data, split)
        if current is not None:
            metrics = {**metrics, "current_ndcg@10": current}
        if current is not None and metrics["ndcg@10"] < current * (1 - self.policy.tolerance):
            log.error(
                "refusing to publish: ndcg@10 %.4f is more than %.0f%% below the current %.4f",
                metrics["ndcg@10"],
                100 * self.policy.tolerance,
                current,
            )
            self._save_state(count)
            return None
        images = self._images()
        train, initial = self._warm_start(data)
        if initial is not None:
            metrics = {**metrics, "warm_start_from": self.models.latest_version()}
        model = train_and_publish(
            data,
            self.models,
            train,
            self.index,
            progress=False,
            metrics=metrics,
            images=images,
            initial=initial,
            fitted=self._spark_factors(data),
        )
        self.models.collect_garbage(self.policy.keep_versions)
        self._save_state(count)
        return model.version

    def _spark_factors(self, data: Interactions) -> TrainedFactors | None:
        """With the spark engine, the factors Spark learns from the store's Parquet parts,
        read by Spark itself (None otherwise, or with the deprecated --base file, which
        Spark does not read: the pipeline then fits ``data`` on Spark)."""
        if self.train.engine != "spark" or self.base is not None:
            return None
        from recsvc.fitting.spark_als import fit_spark_store

        deleted = [item.item_id for item in self.upserted() if item.deleted]
        fitted = fit_spark_store(
            self.events.parts(), data.user_ids, data.item_ids, self.train, deleted
        )
        return spark_trained_factors(fitted)

    def _images(self) -> EmbeddingTable | None:
        """The embedding table (None until the embed worker wrote one) plus the items upserted
        while serving, so that the new model keeps them, with their images, in its indexes."""
        table = EmbeddingTable.load(self.images) if self.images and self.images.exists() else None
        logged = self.upserted()
        if table is not None:  # a deleted item does not come back by its catalogue photo
            table = table.without({item.item_id for item in logged if item.deleted})
        upserted = [item for item in logged if item.embedding is not None and not item.deleted]
        if table is None and upserted:
            table = EmbeddingTable.empty(upserted[0].backbone, len(upserted[0].embedding))  # type: ignore[arg-type]
        if table is None:
            return None
        usable = [
            (item.item_id, item.category, item.embedding)
            for item in upserted
            if item.backbone == table.backbone
            and item.embedding is not None
            and len(item.embedding) == table.dim
        ]
        if usable:
            log.info("training with %d items upserted while serving", len(usable))
        return table.with_items(usable)

    def _warm_start(
        self, data: Interactions
    ) -> tuple[TrainSettings, tuple[np.ndarray, np.ndarray] | None]:
        """The settings and starting factors of this round: the current model's factors for
        the users and items it knows (small random values for new ones), fewer sweeps."""
        version = self.models.latest_version()
        if (
            not self.policy.warm_start
            or version is None
            or self.train.algorithm != "als"
            or self.train.engine == "spark"  # Spark ALS starts from random factors
        ):
            return self.train, None
        users, items, user_factors, item_factors = self.models.load_factors(version)
        if user_factors.shape[1] != self.train.factors:
            log.warning("warm start skipped: model %s has other dimensions", version)
            return self.train, None
        rng = np.random.default_rng(self.train.seed)
        initial = tuple(
            _aligned(old_ids, old, new_ids, rng)
            for old_ids, old, new_ids in (
                (users, user_factors, data.user_ids),
                (items, item_factors, data.item_ids),
            )
        )
        log.info("warm start from %s (%d sweeps)", version, self.policy.warm_start_iterations)
        settings = self.train.model_copy(update={"iterations": self.policy.warm_start_iterations})
        return settings, (initial[0], initial[1])

    def _training_data(self) -> Interactions:
        """The store's events (and the deprecated base file's) as training sees them
        (recsvc.data.event_filters): events of forgotten users, impressions and disliked pairs
        left out, even before a compaction removed them; the dislikes kept for the model."""
        tables: list[pa.Table] = []
        if self.base is not None:
            log.warning(
                "--base is deprecated: load %s into the interaction store once with "
                "`recsvc import` and drop --base",
                self.base,
            )
            tables.append(_base_events(read_interactions(self.base)))
        table = self.events.read()
        if table.num_rows:
            tables.append(table.select(list(_EVENT_COLUMNS)).cast(_EVENT_SCHEMA))
        combined = pa.concat_tables(tables) if tables else _EVENT_SCHEMA.empty_table()
        usable = training_events(combined)
        positives = usable.positives
        deleted = [item.item_id for item in self.upserted() if item.deleted]
        if deleted:
            # Deleted items leave the model; hidden ones stay in training (only not served).
            gone = pc.is_in(positives.column("item_id"), value_set=pa.array(deleted, pa.string()))
            positives = positives.filter(pc.invert(gone))
            log.info("training without %d deleted items", len(deleted))
        interactions = interactions_from_arrays(
            positives.column("user_id"),
            positives.column("item_id"),
            positives.column("weight").to_numpy(zero_copy_only=False).astype(np.float32),
            positives.column("timestamp_ms").to_numpy(zero_copy_only=False) // 1000,
            source=str(self.events.root),
        )
        if usable.dislikes:
            log.info("training with the dislikes of %d users", len(usable.dislikes))
        return replace(interactions, dislikes=usable.dislikes)

    def _current_metric(self, data: Interactions, split: Split) -> float | None:
        """The current model's holdout ndcg@10: recorded in its manifest on our protocol, or
        else its recipe (the parameters in its manifest) fit and measured now on the
        candidate's ``split`` (None: there is no current model).

        Not its published factors: they were fit on the test part too, and that leak inflates
        their figure so much that the guard would refuse even a candidate of the same recipe
        on the same data."""
        version = self.models.latest_version()
        if version is None:
            return None
        manifest = self.models.read_manifest(version)
        metrics = manifest.metrics
        if metrics.get("protocol") == self.policy.protocol and "ndcg@10" in metrics:
            return float(metrics["ndcg@10"])
        recipe = recipe_of(manifest.parameters, self.train)
        log.info("holdout guard: model %s has no holdout figure; measuring its recipe", version)
        measured = holdout_metrics(data, recipe, self.policy.protocol, split)
        return float(measured["ndcg@10"])

    def _state(self) -> dict[str, float]:
        path = self.events.root / STATE
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_state(self, count: int) -> None:
        self.events.root.mkdir(parents=True, exist_ok=True)
        content = json.dumps({"events": count, "trained_at": time.time()})
        replace_bytes_atomically(self.events.root / STATE, content.encode())


_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "weight", "timestamp_ms")
_EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("weight", pa.float32()),
        ("timestamp_ms", pa.int64()),
    ]
)


def _base_events(base: Interactions) -> pa.Table:
    """A history file's pairs as stored events (type ``import``; milliseconds), so that
    tombstones apply to them as to the store's."""
    coo = base.matrix.tocoo()
    if base.timestamps is not None:
        seconds = base.timestamps.tocoo().data.astype(np.int64)
    else:
        seconds = np.zeros(len(coo.data), np.int64)
    return pa.table(
        {
            "user_id": pa.array(np.asarray(base.user_ids, dtype=object)[coo.row], pa.string()),
            "item_id": pa.array(np.asarray(base.item_ids, dtype=object)[coo.col], pa.string()),
            "event_type": pa.array([IMPORT_EVENT_TYPE] * len(coo.data), pa.string()),
            "weight": pa.array(coo.data.astype(np.float32)),
            "timestamp_ms": pa.array(seconds * 1000),
        },
        schema=_EVENT_SCHEMA,
    )


def _aligned(
    old_ids: list[str], old: np.ndarray, new_ids: list[str], rng: np.random.Generator
) -> np.ndarray:
    """Rows of ``old`` re-ordered to ``new_ids``; ids the old model lacks start as implicit's
    own random initialisation (uniform, times 0.01)."""
    row_of = {item: row for row, item in enumerate(old_ids)}
    out = (rng.random((len(new_ids), old.shape[1])) * 0.01).astype(np.float32)
    pairs = [(new, row_of[i]) for new, i in enumerate(new_ids) if i in row_of]
    if pairs:
        new_rows, old_rows = (np.asarray(x) for x in zip(*pairs, strict=True))
        out[new_rows] = old[old_rows]
    return out


def build_train_round(
    settings: Settings, base: Path | None, images: Path | None, force: bool
) -> Callable[[], str | None]:
    """The train worker's round, wired from the settings."""
    trainer = build_train_worker(settings, base, images)
    return lambda: trainer.run_once(force=force)


def check_due(settings: Settings) -> tuple[bool, str]:
    """The train worker's decision, without training: whether a round would train now, and
    why. Reads no Redis (the upserted items matter only once training runs)."""
    due, reason, _ = build_train_worker(settings, None, None, upserted=lambda: []).decide()
    return due, reason


def build_train_worker(
    settings: Settings,
    base: Path | None,
    images: Path | None,
    upserted: Callable[[], list[StoredItem]] | None = None,
) -> TrainWorker:
    """The train worker, wired from the settings."""
    return TrainWorker(
        InteractionStore(settings.workers.interaction_store),
        ModelStore.from_settings(settings),
        settings.train,
        settings.index,
        RetrainPolicy.from_settings(settings.workers),
        base,
        images,
        upserted=upserted if upserted is not None else upserted_items_reader(settings),
    )
