"""All of recsvc's settings, documented in one place.

Sources, strongest first: explicit overrides (command-line flags), environment variables
(``RECSVC_`` prefix, ``__`` between nested names, e.g. ``RECSVC_SERVER__PORT=50051``), a TOML
config file (``--config FILE`` or ``RECSVC_CONFIG_FILE``), then the defaults below.
``recsvc config docs`` prints the table that the README shows.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recsvc.core.namespaces import DEFAULT_NAMESPACE, NAME_PATTERN, NAME_RULE
from recsvc.errors import ConfigError
from recsvc.index.params import DEFAULT_EXACT_HEAD_SHARE
from recsvc.vision import DEFAULT_BACKBONE

ENV_PREFIX = "RECSVC_"
CONFIG_FILE_ENV = "RECSVC_CONFIG_FILE"
# Variables of the test suite (RECSVC_TEST_REDIS_URL, ...), not settings: never refused.
TEST_ENV_PREFIX = "RECSVC_TEST_"
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """The gRPC server."""

    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 in containers.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    max_receive_message_bytes: int = Field(
        16 * MiB,
        ge=MiB,
        le=256 * MiB,
        description="Largest request accepted (images arrive as bytes).",
    )
    max_send_message_bytes: int = Field(
        16 * MiB, ge=MiB, le=256 * MiB, description="Largest response sent."
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Server processes sharing the port (SO_REUSEPORT); >1 needs Redis.",
    )
    reuse_port: bool = Field(
        False, description="Let several processes bind the port (set for workers automatically)."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint; 0: off. With several workers "
        "the supervisor serves it for all of them.",
    )
    metrics_host: str | None = Field(
        None, description="Address of the /metrics endpoint; unset: server.host."
    )
    echo_generated_request_ids: bool = Field(
        False,
        description="Also send back (trailing metadata x-request-id) the ids made for calls "
        "that came without one; a caller's own x-request-id is always echoed. Off: the "
        "trailer costs about a fifth of Recommend's throughput.",
    )
    access_log: bool = Field(
        False,
        description="Log one INFO line per Recommender call on logger recsvc.access: method, "
        "code, milliseconds, peer, request id.",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans for every gRPC call (needs the otel extra), exported "
        "as the standard OTEL_* variables say (default OTLP to localhost:4317).",
    )
    drain_seconds: float = Field(
        2.0,
        ge=0,
        le=120,
        description="On SIGTERM: seconds to keep serving after health turns NOT_SERVING.",
    )
    grace_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="On SIGTERM: seconds in-flight calls get to finish before cancellation.",
    )
    max_concurrent_rpcs: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Calls one server process answers at once (health checks included); "
        "more are answered RESOURCE_EXHAUSTED at once instead of queueing.",
    )
    malformed_log_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="At most one WARNING per this many seconds for each RPC and kind of "
        "malformed request; the next one counts those left out.",
    )


class ServingSettings(_Section):
    """Request limits and query-time search."""

    max_k: int = Field(1000, ge=1, le=100_000, description="Largest k a request may ask for.")
    max_batch: int = Field(1000, ge=1, le=100_000, description="Most entries in one batch request.")
    max_id_list: int = Field(
        1000, ge=1, le=100_000, description="Most ids in exclude_item_ids or recent_item_ids."
    )
    exact_search_max_items: int = Field(
        2000,
        ge=0,
        description="Catalogues up to this size are searched exactly instead of by HNSW.",
    )
    hnsw_ef_search: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="HNSW ef of user->item queries; unset: the ef training chose for each "
        "model (the smallest reaching recall@10 >= 0.98, the recall GetModelInfo reports).",
    )
    similar_ef_search: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="HNSW ef of item->item (SimilarItems) queries; unset: the ef training "
        "chose for each model (the smallest of 64..2048 reaching recall@10 >= 0.95), 512 for "
        "a model that recorded none. Also the ef of the visual (image) index (unset: 512).",
    )
    search_threads: int = Field(
        1, ge=1, le=256, description="Threads hnswlib may use for one query."
    )
    exact_head_share: float = Field(
        DEFAULT_EXACT_HEAD_SHARE,
        ge=0,
        le=1,
        description="Share of items (largest norms) also searched exactly.",
    )
    popularity_discount: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Popularity discount of Recommend queries that do not set one (0..1; 0: "
        "rank by score). Re-ranks the best max(3k, k+50) candidates by (1 - d) x score + d x "
        "unpopularity, both scaled to the pool (docs/bias.md).",
    )
    model_poll_seconds: float = Field(
        2.0, ge=0, le=3600, description="How often to look for a new model version; 0: never."
    )
    item_poll_seconds: float = Field(
        0.1,
        gt=0,
        le=60,
        description="How often a replica looks for other replicas' UpsertItems and DeleteItems "
        "writes in the item log (one small read each time).",
    )
    item_sync_timeout_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long UpsertItems and DeleteItems wait for every live replica to apply "
        "them before answering (so a hidden item is out of every replica's answers when the call "
        "returns); past it the call answers UNAVAILABLE (the write is kept; a retry is safe). "
        "0: do not wait.",
    )
    first_model_poll_seconds: float = Field(
        2.0,
        ge=0.05,
        le=3600,
        description="How often a server started on an empty model store looks for the first "
        "version (also when model_poll_seconds is 0).",
    )
    batch_slice: int = Field(
        32,
        ge=1,
        le=100_000,
        description="RecommendBatch entries answered per slice; the event loop serves other "
        "calls between slices.",
    )
    freeze_heap: bool = Field(
        True,
        description="After each model swap, exclude the objects alive (the model) from Python's "
        "cyclic garbage collection (gc.freeze), so that a full collection does not stall calls.",
    )
    batch_gather_turns: int = Field(
        8,
        ge=0,
        le=64,
        description="Turns of the event loop a batch of Recommend calls waits for more calls "
        "while more keep arriving (0: answer at once); larger batches share one store round "
        "trip and one index search.",
    )
    interests: int = Field(
        1,
        ge=1,
        le=8,  # recsvc.core.queries.MAX_INTERESTS
        description="Interest vectors per user for Recommend when the request leaves "
        "`interests` at 0: up to this many clusters of the user's history, each searched, the "
        "lists merged in proportion to the clusters' sizes (docs/interests.md). 1: one vector "
        "(off; it did not win on nDCG@10 on ml-100k).",
    )


class StoreSettings(_Section):
    """User state (Redis or in-process) and the event log."""

    timeout_seconds: float = Field(
        0.05, gt=0, le=10, description="Longest wait for the user store in one request."
    )
    event_log_timeout_seconds: float = Field(
        1.0,
        gt=0,
        le=30,
        description="Longest wait for a durable append to the Redis event log (the request's "
        "deadline bounds it too); longer than timeout_seconds, as a lost append fails the call.",
    )
    connect_timeout_seconds: float = Field(0.5, gt=0, le=30, description="Redis connect timeout.")
    retries: int = Field(
        1, ge=0, le=10, description="Quick retries of a failed Redis command, within the deadline."
    )
    key_prefix: str = Field("recsvc", min_length=1, max_length=32, description="Redis key prefix.")
    vector_ttl_seconds: int = Field(
        7 * 86400,
        ge=60,
        description="TTL of a user's cached vector (one per user: a new model version's "
        "replaces it).",
    )
    vector_encoding: Literal["float32", "float16"] = Field(
        "float16",
        description="How Redis stores user vectors: float16 halves their memory and leaves "
        "the top-10 lists as they are (docs/BENCHMARKS.md); float32 stores them exactly.",
    )
    history_ttl_seconds: int = Field(
        30 * 86400, ge=60, description="TTL of a user's recent-interaction history."
    )
    history_max_items: int = Field(
        500, ge=1, le=100_000, description="Items kept per user history (newest first)."
    )
    forgotten_ttl_seconds: int = Field(
        30 * 86400,
        ge=3600,
        description="How long the user store remembers a ForgetUser (its tombstone keeps the "
        "loaded model's factors and history of the user out of serving): longer than the time "
        "until a model trained without the user is loaded. Embedded mode also replays it from "
        "the event log at start-up, within history_ttl_seconds.",
    )
    state_cache_users: int = Field(
        100_000,
        ge=0,
        le=10_000_000,
        description="Users whose Redis state (vector and history) each server keeps in "
        "process, kept current by Redis's client tracking: a Recommend for one of them makes "
        "no round trip to Redis. Another server's write reaches this one's cache within about "
        "a millisecond. 0: off. One Redis server only (off on a cluster).",
    )
    state_cache_max_age_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest time a user's state stays in the state cache after it was read, "
        "whatever Redis says: bounds what a lost invalidation could leave behind.",
    )
    max_users_in_process: int = Field(
        1_000_000, ge=1, description="Users kept by the in-process store (least recent dropped)."
    )
    event_log_path: Path | None = Field(
        None, description="Event log file without Redis; unset: events.jsonl in the model store."
    )
    event_partitions: int = Field(
        1,
        ge=1,
        le=256,
        description="Redis Streams the event log is split into, by crc32(user_id) % N, so "
        "that appends spread over a Redis Cluster's shards (one stream is one shard's core); "
        "1: the single stream of old. A change loses nothing: the ingest worker drains every "
        "count that servers have written with. Retries across a change are not deduplicated.",
    )
    dedupe_ttl_seconds: int = Field(
        86400,
        ge=60,
        description="How long an event_id is remembered for idempotency (Redis); a retry later "
        "than that is accepted as new.",
    )
    dedupe_max_ids_in_process: int = Field(
        200_000,
        ge=1_000,
        le=50_000_000,
        description="Event_ids the file event log remembers for idempotency (embedded mode; "
        "the most recently seen, ~200 B each, read back from the newest segments at start-up); "
        "a retry of an older one is accepted as new.",
    )
    event_log_segment_bytes: int = Field(
        64 * MiB,
        ge=64 * 1024,
        le=64 * 1024 * MiB,
        description="The file event log (embedded mode) closes its active segment past this "
        "size; the ingest worker deletes a closed segment once it ingested all of it and its "
        "newest event is older than history_ttl_seconds (the start-up replay's window).",
    )
    item_log_compact_factor: float = Field(
        4.0,
        ge=1.5,
        le=1000,
        description="The file item log (embedded mode) is rewritten with one record per item "
        "once it holds more than this many records per item.",
    )


class EventWeights(_Section):
    """Default weight of each event type (when an interaction carries no weight)."""

    view: float = Field(1.0, gt=0, description="Weight of a view.")
    click: float = Field(2.0, gt=0, description="Weight of a click.")
    cart: float = Field(3.0, gt=0, description="Weight of an add-to-cart.")
    purchase: float = Field(5.0, gt=0, description="Weight of a purchase.")
    rating: float = Field(1.0, gt=0, description="Weight of a rating sent without a value.")
    dislike: float = Field(
        1.0,
        gt=0,
        description="Weight recorded with a dislike; unused for training and fold-in, where a "
        "dislike counts with zero confidence (the pair is dropped from the positives) and the "
        "item is never recommended to the user.",
    )
    impression: float = Field(
        1.0,
        gt=0,
        description="Weight recorded with an impression (shown, not clicked); unused: "
        "impressions are stored for evaluation and never count as positives.",
    )


class WorkerSettings(_Section):
    """The ingest and train workers."""

    interaction_store: Path = Field(
        Path("interaction-store"), description="Parquet store of ingested interactions."
    )
    batch_size: int = Field(10_000, ge=1, le=10_000_000, description="Events per ingested part.")
    store_compact_min_parts: int = Field(
        16,
        ge=2,
        le=100_000,
        description="The ingest worker merges an interaction-store partition (one ingest day) "
        "into one part, without repeated event ids, once it holds this many parts.",
    )
    store_retention_days: int = Field(
        0,
        ge=0,
        le=36_500,
        description="Ingest days the interaction store keeps (imported history included; "
        "older partitions are deleted by the ingest worker); 0: keep everything.",
    )
    import_part_rows: int = Field(
        500_000,
        ge=1_000,
        le=50_000_000,
        description="Interactions per part written by `recsvc import` (an interrupted import "
        "resumes at the first part not written).",
    )
    interval_seconds: float = Field(
        5.0, gt=0, le=86400, description="Pause between rounds of a worker in loop mode."
    )
    retrain_min_new_events: int = Field(
        1000, ge=1, description="Retrain once this many new interactions were ingested."
    )
    retrain_max_age_seconds: float = Field(
        3600.0, gt=0, description="Retrain at least this often when there is anything new."
    )
    retrain_tolerance: float = Field(
        0.05, ge=0, le=1, description="Refuse a model whose holdout ndcg@10 drops by more."
    )
    keep_versions: int = Field(3, ge=1, le=1000, description="Model versions kept by the worker.")
    warm_start: bool = Field(
        False, description="Retrain ALS from the current model's factors instead of from scratch."
    )
    warm_start_iterations: int = Field(
        5, ge=1, le=1000, description="ALS sweeps of a warm-started retraining."
    )


class IndexSettings(_Section):
    """Building the HNSW index at training time."""

    m: int = Field(16, ge=2, le=128, description="HNSW M: links per node.")
    ef_construction: int = Field(
        200, ge=8, le=10_000, description="HNSW ef while building the user->item index."
    )
    similar_m: int | None = Field(
        None,
        ge=2,
        le=128,
        description="HNSW M of the item->item (cosine) index; unset: by catalogue size, 16 "
        "below 100,000 items and 32 from there (recall holds at millions of items).",
    )
    similar_ef_construction: int | None = Field(
        None,
        ge=8,
        le=10_000,
        description="HNSW ef while building the item->item (cosine) index; unset: by "
        "catalogue size, 100 below 100,000 items and 200 from there.",
    )
    recall_sample: int = Field(
        200, ge=0, le=100_000, description="Queries used to measure recall@10 against exact search."
    )
    seed: int = Field(42, description="Random seed of the index build.")


class TrainSettings(_Section):
    """Training: implicit ALS (default) or BPR."""

    algorithm: Literal["als", "bpr"] = Field("als", description="Model: als or bpr.")
    weighting: Literal["none", "binary", "bm25", "tfidf"] = Field(
        "none", description="Weights fed to the model: as read, all 1, BM25 or TF-IDF."
    )
    weight_transform: Literal["none", "log1p"] = Field(
        "none",
        description="Applied to each summed weight before the weighting: log1p = log(1 + w), "
        "which tames heavy counts such as plays.",
    )
    bm25_k1: float = Field(100.0, gt=0, description="BM25 k1 (with weighting=bm25).")
    bm25_b: float = Field(0.8, ge=0, le=1, description="BM25 b (with weighting=bm25).")
    learning_rate: float = Field(0.01, gt=0, le=10, description="BPR learning rate.")
    factors: int = Field(64, ge=1, le=4096, description="Dimension of the learned factors.")
    iterations: int = Field(15, ge=1, le=1000, description="ALS sweeps over the data.")
    regularization: float = Field(
        0.05, ge=0, le=1e6, description="L2 regularisation of the factors."
    )
    alpha: float = Field(
        1.0, gt=0, le=1e6, description="Confidence scaling: confidence = alpha * weight."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses the GPU when implicit.gpu.HAS_CUDA, else the CPU."
    )
    threads: int = Field(
        0, ge=0, le=1024, description="CPU threads for training; 0 uses every core."
    )
    seed: int = Field(42, description="Random seed, for reproducible models.")
    visual_class_weight: float = Field(
        0.5,
        ge=0,
        le=100,
        description="Weight of the learned visual space's class-probability part: a softmax "
        "classifier of the category, fitted on the catalogue's photos, whose probabilities "
        "join every photo's vector so that a new item meets items of its predicted category "
        "(docs/images.md); 0 turns it off.",
    )
    engine: Literal["implicit", "spark"] = Field(
        "implicit",
        description="Training engine: implicit (one machine, GPU when present) or spark "
        "(pyspark.ml ALS with implicitPrefs; ALS only; needs `pip install 'recsvc[spark]'` "
        "and Java 17). docs/deploy.md: Training on Spark.",
    )
    spark_master: str = Field(
        "local[*]",
        min_length=1,
        description="Spark master URL of the spark engine: local[N], spark://HOST:PORT, "
        "k8s://https://HOST:PORT or yarn.",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description="Extra Spark settings of the spark engine (JSON object of spark.* keys, "
        'e.g. {"spark.driver.memory": "4g"}); --spark-conf KEY=VALUE on the command line.',
    )

    @field_validator("spark_conf")
    @classmethod
    def _spark_keys(cls, conf: dict[str, str]) -> dict[str, str]:
        bad = [key for key in conf if not key.startswith("spark.") or key == "spark."]
        if bad:
            raise ValueError(f"spark_conf: keys must start with 'spark.', got {bad}")
        return conf

    @model_validator(mode="after")
    def _spark_trains_als(self) -> TrainSettings:
        if self.engine == "spark" and self.algorithm != "als":
            raise ValueError("engine: spark trains ALS only; use engine implicit for bpr")
        return self


class ImageSettings(_Section):
    """Product images: the CNN backbone, embedding jobs, and image requests."""

    backbone: str = Field(
        DEFAULT_BACKBONE,
        min_length=1,
        description="CNN backbone; efficientnet_lite0/1/2 ship their weights, others need "
        "`weights`.",
    )
    weights: Path | None = Field(
        None, description="Local weights file (a state dict) for the backbone; never downloaded."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where embedding runs (auto: a GPU when there is one)."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Images per forward pass.")
    loader_workers: int = Field(
        2, ge=0, le=64, description="Processes decoding images for `recsvc embed`; 0: inline."
    )
    max_image_bytes: int = Field(
        10 * MiB, ge=1024, le=256 * MiB, description="Largest encoded image accepted."
    )
    max_failure_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="`recsvc embed` exits 1 when more than this share of the images it tried "
        "could not be read (what succeeded is still written); 1: never.",
    )
    max_pixels: int = Field(
        40_000_000,
        ge=10_000,
        le=1_000_000_000,
        description="Largest image (width x height) decoded: the decompression-bomb guard.",
    )
    shard_count: int = Field(
        1,
        ge=1,
        le=10_000,
        description="`recsvc embed` embeds one of this many shards of the catalogue (by a "
        "hash of the item id) into OUT.part-I-of-N, for `recsvc embed-merge`; 1: the whole "
        "catalogue into OUT.",
    )
    shard_index: int | None = Field(
        None,
        ge=0,
        lt=10_000,
        description="Which shard (0 to shard_count - 1) `recsvc embed` embeds; unset: "
        "JOB_COMPLETION_INDEX (set in the pods of a Kubernetes Indexed Job).",
    )
    path_root: Path | None = Field(
        None,
        description="Directory UpsertItems may read image_path from; unset: image_path refused.",
    )
    hybrid_visual_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of visual similarity in SimilarItems hybrid mode."
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads decoding and embedding request images, apart from the threads "
        "that answer the other RPCs; 0: one per core.",
    )
    max_pending_calls: int = Field(
        8,
        ge=1,
        le=10_000,
        description="SearchByImage/UpsertItems calls with images admitted at once (running or "
        "waiting for an image thread); more are answered RESOURCE_EXHAUSTED at once.",
    )
    read_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Longest read of one image_path file (a slow mount answers UNAVAILABLE).",
    )


class SecuritySettings(_Section):
    """TLS and bearer-token authentication of the gRPC server (docs/deploy.md, Security)."""

    tls_cert_file: Path | None = Field(
        None, description="Server certificate chain (PEM); with tls_key_file: TLS on, else off."
    )
    tls_key_file: Path | None = Field(None, description="Private key of tls_cert_file (PEM).")
    tls_client_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) that signs client certificates; set: mutual TLS, clients "
        "without a certificate it signed are refused.",
    )
    tls_reload_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="How often the TLS files are checked for changes before a handshake (a "
        "renewed certificate is used without a restart); 0: read once at start-up.",
    )
    token_file: Path | None = Field(
        None,
        description="Bearer tokens, one `SCOPES TOKEN` per line (scopes read, write, or "
        "read,write); unset: authentication off (embedded mode).",
    )
    token_reload_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="How often token_file is checked for changes (tokens added or revoked "
        "without a restart); 0: read once at start-up.",
    )
    reflection: Literal["auto", "on", "off"] = Field(
        "auto",
        description="gRPC server reflection; auto: on unless token_file is set. With tokens, "
        "reflection needs the read scope.",
    )
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plaintext port answering only grpc.health.v1 (Kubernetes gRPC probes "
        "cannot speak TLS); 0: off.",
    )

    @model_validator(mode="after")
    def _tls_files_pair(self) -> SecuritySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("security.tls_cert_file and security.tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("security.tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self

    @property
    def reflection_on(self) -> bool:
        if self.reflection == "auto":
            return self.token_file is None
        return self.reflection == "on"


class RulesSettings(_Section):
    """Business rules: boosts and pins from a versioned JSON file (docs/rules.md)."""

    path: Path | None = Field(
        None,
        description="JSON file of boost and pin rules (docs/rules.md); unset: no rules. A bad "
        "file stops start-up; a bad new version while serving is logged and the rules before "
        "stay in force.",
    )
    reload_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="How often the rules file is checked for changes (inode, mtime, size); "
        "0: read at start-up only.",
    )
    max_rules: int = Field(
        1000, ge=1, le=100_000, description="Most rules the rules file may hold."
    )
    max_file_bytes: int = Field(MiB, ge=1024, le=64 * MiB, description="Largest rules file read.")


class ExperimentsSettings(_Section):
    """A/B experiments between models (docs/experiments.md): one document for every namespace."""

    path: Path | None = Field(
        None,
        description="JSON experiments document (docs/experiments.md); unset: no experiments. A "
        "bad document stops start-up; a bad new version while serving is logged and the one "
        "before stays in force.",
    )
    reload_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="How often the experiments document is checked for changes (inode, mtime, "
        "size); 0: read at start-up only. Arm models are loaded before a new version applies.",
    )
    log_impressions: bool = Field(
        True,
        description="Log each response to a user in an experiment (holdout included) as "
        "IMPRESSION events in the event log, for recsvc report; batched off the call's path.",
    )
    max_arm_models: int = Field(
        4,
        ge=0,
        le=16,
        description="Most model versions one namespace loads for experiment arms besides the "
        "current one (each holds a model's memory); a document naming more is refused.",
    )
    max_file_bytes: int = Field(
        MiB, ge=1024, le=64 * MiB, description="Largest experiments document read."
    )
    impression_queue: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Impressions queued per namespace for the event log at most; beyond, new "
        'ones are dropped and counted (recsvc_impressions_total{result="dropped"}), never '
        "calls slowed.",
    )
    impression_batch: int = Field(
        1_000, ge=1, le=100_000, description="Impressions appended to the event log per write."
    )
    impression_flush_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Longest an impression waits for its batch to fill before it is written.",
    )


# The sections a namespace may override (RECSVC_NAMESPACES); the others (server, security,
# images, log, redis_url) belong to the process and are shared by every namespace.
NAMESPACE_SECTIONS = ("store", "serving", "events", "rules", "workers", "train", "index")


class NamespaceSettings(_Section):
    """One namespace's overrides of the deployment's settings (docs/deploy.md, Namespaces)."""

    model_store: Path | None = Field(
        None, description="Model store of the namespace; unset: MODEL_STORE/NAME."
    )
    store: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of store.* (key_prefix unset: STORE__KEY_PREFIX:NAME; "
        "event_log_path, when the deployment sets one: its directory/NAME/its file name).",
    )
    serving: dict[str, Any] = Field(default_factory=dict, description="Overrides of serving.*.")
    events: dict[str, Any] = Field(default_factory=dict, description="Overrides of events.*.")
    rules: dict[str, Any] = Field(default_factory=dict, description="Overrides of rules.*.")
    workers: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of workers.* (interaction_store unset: "
        "WORKERS__INTERACTION_STORE/NAME).",
    )
    train: dict[str, Any] = Field(default_factory=dict, description="Overrides of train.*.")
    index: dict[str, Any] = Field(default_factory=dict, description="Overrides of index.*.")


class Settings(BaseSettings):
    """recsvc's settings. Every field can be set by environment variable or config file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model_store: Path = Field(
        Path("model-store"),
        description="Directory of model versions (written by train, read by serve).",
    )
    # Named RECSVC_MODEL_STORE__SIGNING_KEY(_FILE) as if model_store were a section, the
    # name the deployment docs use; model_store itself stays a plain path for compatibility.
    model_store_signing_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("model_store_signing_key", "RECSVC_MODEL_STORE__SIGNING_KEY"),
        description="HMAC-SHA256 key (16+ bytes): training signs each model's manifest, "
        "serving loads only versions whose signature verifies; unset: no signing.",
    )
    model_store_signing_key_file: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "model_store_signing_key_file", "RECSVC_MODEL_STORE__SIGNING_KEY_FILE"
        ),
        description="File holding the signing key (e.g. a Kubernetes Secret mount) instead.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object each (with request ids)."
    )
    redis_url: str | None = Field(
        None,
        description="Redis for user vectors and events; unset: in-process (embedded mode). "
        "A Redis Cluster: redis+cluster://[user:password@]host:port[,host:port...] "
        "(rediss+cluster:// with TLS; any of its nodes, database 0).",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, url: str | None) -> str | None:
        # redis-py reads "127.0.0.1:6379" as a scheme-less URL and fails deep in a traceback.
        if url is not None and not url.startswith(REDIS_URL_SCHEMES):
            raise ValueError(
                f"{_redact_url(url)!r} must start with redis://, rediss://, unix:// or "
                "redis+cluster:// (rediss+cluster:// with TLS)"
            )
        return url

    server: ServerSettings = Field(default_factory=ServerSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    events: EventWeights = Field(default_factory=EventWeights)
    index: IndexSettings = Field(default_factory=IndexSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    experiments: ExperimentsSettings = Field(default_factory=ExperimentsSettings)
    namespaces: dict[str, NamespaceSettings] = Field(
        default_factory=dict,
        description="Namespaces (tenants) served side by side, as a JSON object: name "
        "([a-z0-9-]{1,63}) -> overrides of model_store and of the store, serving, events, "
        "rules, workers, train and index sections. Paths and the Redis key prefix a namespace "
        "does not set get its name appended. Empty: one namespace, DEFAULT_NAMESPACE, with the "
        "settings as they are.",
    )
    default_namespace: str | None = Field(
        None,
        description="The namespace of requests that name none; unset: the only one there is "
        '("default" when NAMESPACES is empty). Required with two or more namespaces.',
    )

    @model_validator(mode="after")
    def _namespaces_apart(self) -> Settings:
        for name in self.namespaces:
            if NAME_PATTERN.fullmatch(name) is None:
                raise ValueError(f"namespaces: {name[:80]!r} is not a namespace name ({NAME_RULE})")
        default = self.default_namespace
        if default is not None and NAME_PATTERN.fullmatch(default) is None:
            raise ValueError(f"default_namespace: {default[:80]!r} is not a name ({NAME_RULE})")
        if self.namespaces:
            if default is None and len(self.namespaces) > 1:
                raise ValueError(
                    f"default_namespace: required with several namespaces "
                    f"({', '.join(sorted(self.namespaces))})"
                )
            if default is not None and default not in self.namespaces:
                raise ValueError(
                    f"default_namespace: {default!r} is not among the namespaces "
                    f"({', '.join(sorted(self.namespaces))})"
                )
            _check_namespaces_apart({n: self.for_namespace(n) for n in self.namespaces})
        return self

    def namespace_names(self) -> list[str]:
        """Every namespace served, the default one first."""
        default = self.default_namespace_name
        return [default, *sorted(n for n in self.namespaces if n != default)]

    @property
    def default_namespace_name(self) -> str:
        if self.default_namespace is not None:
            return self.default_namespace
        return next(iter(self.namespaces)) if self.namespaces else DEFAULT_NAMESPACE

    def for_namespace(self, name: str | None = None) -> Settings:
        """The effective settings of namespace ``name`` (None or "": the default one): these
        settings with its overrides applied, naming that namespace alone. Unknown: ConfigError."""
        name = name or self.default_namespace_name
        if not self.namespaces:
            if name != self.default_namespace_name:
                raise ConfigError(
                    f"namespace: no namespace {name!r} (served: {self.default_namespace_name})"
                )
            return self
        overrides = self.namespaces.get(name)
        if overrides is None:
            served = ", ".join(sorted(self.namespaces))
            raise ConfigError(f"namespace: no namespace {name!r} (served: {served})")
        update: dict[str, Any] = {
            "model_store": overrides.model_store or self.model_store / name,
            "namespaces": {},
            "default_namespace": name,
        }
        derived: dict[str, dict[str, Any]] = {
            "store": {"key_prefix": f"{self.store.key_prefix}:{name}"},
            "workers": {"interaction_store": self.workers.interaction_store / name},
        }
        if self.store.event_log_path is not None:
            path = self.store.event_log_path
            derived["store"]["event_log_path"] = path.parent / name / path.name
        for section in NAMESPACE_SECTIONS:
            current: BaseModel = getattr(self, section)
            values = {**current.model_dump(), **derived.get(section, {})}
            values.update(getattr(overrides, section))
            try:
                update[section] = type(current).model_validate(values)
            except ValidationError as exc:
                raise ValueError(f"namespaces.{name}.{section}: {_one_line(exc)}") from exc
        return self.model_copy(update=update)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides beat the environment, the environment beats the config file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _check_namespaces_apart(namespaces: Mapping[str, Settings]) -> None:
    """Refuse two namespaces sharing a model store, key prefix, event log or interaction
    store: their models, users or events would mix (a leak between tenants)."""
    seen: dict[tuple[str, str], str] = {}
    for name, settings in namespaces.items():
        places = {
            "model_store": str(settings.model_store.resolve()),
            "store.key_prefix": settings.store.key_prefix,
            "store.event_log_path": str((settings.store.event_log_path or Path()).resolve())
            if settings.store.event_log_path
            else "",
            "workers.interaction_store": str(settings.workers.interaction_store.resolve()),
        }
        for what, place in places.items():
            if not place:
                continue
            other = seen.setdefault((what, place), name)
            if other != name:
                raise ValueError(
                    f"namespaces.{name}.{what}: {place!r} is also namespace {other!r}'s"
                )


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from overrides, environment, config file and defaults.

    ``overrides`` are nested dicts, e.g. ``server={"port": 0}``; ``None`` values are dropped so
    that unset command-line flags do not hide the environment.
    """
    path = config_file or (Path(p) if (p := os.environ.get(CONFIG_FILE_ENV)) else None)
    settings_cls: type[Settings] = Settings
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        settings_cls = type(
            "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}}
        )
    check_environment(os.environ)
    try:
        return settings_cls(**_drop_none(overrides))
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_one_line(exc)}") from exc
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def _one_line(exc: ValidationError) -> str:
    """Every bad field as ``section.field: reason``, on one line (pydantic's own text spans
    three lines a field and echoes the value, which may be a secret)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )


def env_names() -> list[str]:
    """Every environment variable that sets something: ``RECSVC_FIELD``, ``RECSVC_SECTION`` (a
    JSON object), ``RECSVC_SECTION__FIELD``, the aliases and ``RECSVC_CONFIG_FILE``."""
    names = [CONFIG_FILE_ENV]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):  # read from its aliases only, not from the name
            names += [c for c in alias.choices if isinstance(c, str) and c.startswith(ENV_PREFIX)]
        else:
            names.append(f"{ENV_PREFIX}{name}".upper())
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            names += [f"{ENV_PREFIX}{name}__{sub}".upper() for sub in annotation.model_fields]
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a ``RECSVC_*`` variable that is no setting (a typo would otherwise be ignored
    silently), naming the closest valid one."""
    valid = env_names()
    known = set(valid)
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(TEST_ENV_PREFIX):
            continue
        if upper in known:
            continue
        close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
        if not close:
            # "RECSVC_METRICS_PORT" is far from "RECSVC_SERVER__METRICS_PORT" as a whole: a
            # variable that names a field without its section is matched by the field's name.
            suffix = upper.removeprefix(ENV_PREFIX)
            close = [v for v in valid if v.endswith(f"__{suffix}")][:1]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown setting {name}{hint}")


def _redact_url(url: str) -> str:
    """``url`` without the password of its user-info part."""
    scheme, sep, rest = url.rpartition("://")
    if "@" not in rest:
        return url
    user_info, _, host = rest.rpartition("@")
    user = user_info.split(":", 1)[0]
    return f"{scheme}{sep}{user}{':***' if ':' in user_info else ''}@{host}"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            cleaned[key] = value
    return cleaned


def settings_table() -> str:
    """The Markdown table of every setting: environment variable, default, meaning."""
    rows = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            for sub_name, sub_field in annotation.model_fields.items():
                env = f"{ENV_PREFIX}{name}__{sub_name}".upper()
                rows.append(f"| `{env}` | `{sub_field.default}` | {sub_field.description} |")
        else:
            env = _env_name(name, field.validation_alias)
            default = field.get_default(call_default_factory=True)
            rows.append(f"| `{env}` | `{default}` | {field.description} |")
    return "\n".join(rows)


def _env_name(name: str, alias: object) -> str:
    """A top-level field's variable: the alias spelled with the prefix, where it has one."""
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    named = [c for c in choices if isinstance(c, str) and c.startswith(ENV_PREFIX)]
    return named[0] if named else f"{ENV_PREFIX}{name}".upper()
