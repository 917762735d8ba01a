"""recsvc worker ingest | train | embed."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsvc.cli.common import common_options, settings_from
from recsvc.cli.images import add_catalogue_options, read_catalogue_from

log = logging.getLogger("recsvc")


def add_worker(commands: Any) -> None:
    p = commands.add_parser(
        "worker",
        help="run the ingest, train or embed worker (once, or in a loop)",
        description="Continuous learning: `ingest` moves recorded interactions from the event log "
        "into the Parquet interaction store, effectively once; `train` retrains when enough new "
        "interactions arrived (or enough time passed), refuses a model whose holdout metric "
        "dropped, publishes and prunes old versions; `embed` embeds new or changed catalogue "
        "images (the next training run picks them up and refreshes the cold-start projection). "
        "SIGTERM finishes the current round.",
    )
    kinds = p.add_subparsers(title="workers", metavar="WORKER", required=True)
    for name, text in [
        ("ingest", "event log -> interaction store"),
        ("train", "interaction store -> new model version"),
        ("embed", "catalogue images -> embedding table (new or changed images only)"),
    ]:
        sub = kinds.add_parser(name, help=text, description=text)
        sub.add_argument("--model-store", type=Path, help="model store directory")
        sub.add_argument("--interaction-store", type=Path, help="Parquet interaction store")
        sub.add_argument("--once", action="store_true", help="one round, then exit")
        sub.add_argument("--interval", type=float, help="seconds between rounds in loop mode")
        if name == "ingest":
            sub.add_argument(
                "--event-log",
                type=Path,
                help="event log file (default: RECSVC_STORE__EVENT_LOG_PATH, or "
                "events.jsonl in the model store); ignored with RECSVC_REDIS_URL",
            )
        elif name == "train":
            sub.add_argument("--base", type=Path, help="interactions file trained on as well")
            sub.add_argument("--force", action="store_true", help="train even if not due")
            sub.add_argument("--images", type=Path, help="embedding table (from the embed worker)")
        else:
            add_catalogue_options(sub)
            sub.add_argument("--out", type=Path, required=True, help="embedding table")
        common_options(sub)
        sub.set_defaults(run=_run_worker, kind=name)


def _embed_round(args: argparse.Namespace, settings: Any) -> Callable[[], object]:
    """One embed round: re-read the catalogue, embed what is new or changed (resumable)."""
    from recsvc.vision.embedder import ImageEmbedder
    from workers.embed import embed_catalogue, embed_options

    embedder = ImageEmbedder.from_settings(settings.images)
    options = embed_options(settings.images, progress=False)

    def run() -> object:
        report = embed_catalogue(read_catalogue_from(args), embedder, args.out, options)
        return {k: v for k, v in report.as_dict().items() if k != "failures"}

    return run


def _upserted_items(settings: Any) -> Callable[[], list[Any]]:
    """Reads the serving item log (items added by UpsertItems) for the train worker."""
    from recsvc.store.item_log import read_items_from_file, read_items_from_redis

    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        return lambda: read_items_from_redis(client, settings.store.key_prefix)
    return lambda: read_items_from_file(settings.model_store / "items.jsonl")


def _run_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from recsvc.artifacts import ModelStore
    from workers.ingest import FileLogIngester, InteractionStore, RedisStreamIngester
    from workers.retrain import RetrainPolicy, TrainWorker

    settings = settings_from(
        args,
        model_store=args.model_store,
        workers={"interaction_store": args.interaction_store, "interval_seconds": args.interval},
    )
    w = settings.workers
    events = InteractionStore(w.interaction_store)
    round_once: Callable[[], object]
    if args.kind == "ingest":
        if settings.redis_url:
            import redis

            client = redis.Redis.from_url(settings.redis_url)
            stream = f"{settings.store.key_prefix}:{{ev}}:stream"
            round_once = RedisStreamIngester(client, stream, events, w.batch_size).run_once
        else:
            log_path = (
                args.event_log
                or settings.store.event_log_path
                or settings.model_store / "events.jsonl"
            )
            round_once = FileLogIngester(log_path, events, w.batch_size).run_once
    elif args.kind == "train":
        policy = RetrainPolicy(
            w.retrain_min_new_events,
            w.retrain_max_age_seconds,
            w.retrain_tolerance,
            w.keep_versions,
            warm_start=w.warm_start,
            warm_start_iterations=w.warm_start_iterations,
        )
        trainer = TrainWorker(
            events,
            ModelStore(settings.model_store),
            settings.train,
            settings.index,
            policy,
            args.base,
            args.images,
            upserted=_upserted_items(settings),
        )
        round_once = lambda: trainer.run_once(force=args.force)  # noqa: E731
    if args.kind == "embed":
        round_once = _embed_round(args, settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        result = round_once()
        log.info("%s round done: %s", args.kind, result)
        print(json.dumps({"worker": args.kind, "result": result}), flush=True)
        if args.once or stop.wait(w.interval_seconds):
            return 0
