"""The ``recsvc`` command line: train, serve, demo, call, config."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recsvc.config import Settings, load_settings, settings_table
from recsvc.errors import RecsvcError
from recsvc.logs import setup_logging

log = logging.getLogger("recsvc")

DEFAULT_DEMO_DIR = Path(".recsvc-demo")
PROTOCOLS = ("stratified-item", "stratified-user", "leave-last-n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except RecsvcError as exc:
        print(f"recsvc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsvc: interrupted; nothing partial was published", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc", description="Real-time recommendation service: train, serve, query."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(commands)
    _add_serve(commands)
    _add_demo(commands)
    _add_call(commands)
    _add_eval(commands)
    _add_tune(commands)
    _add_models(commands)
    _add_worker(commands)
    _add_config(commands)
    return parser


# ---------------------------------------------------------------------------- commands


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (or RECSVC_CONFIG_FILE)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _add_train(commands: Any) -> None:
    p = commands.add_parser(
        "train",
        help="train a model from an interactions file and publish it",
        description="Read interactions (CSV, TSV, Parquet or MovieLens u.data: user, item, "
        "optional weight and timestamp), fit implicit ALS (GPU when available), build the HNSW "
        "indexes and publish a new, checksummed model version to the model store.",
    )
    p.add_argument("--out", type=Path, help="model store directory (default: RECSVC_MODEL_STORE)")
    p.add_argument("--items", type=Path, help="optional catalogue: item id and category columns")
    p.add_argument(
        "--evaluate",
        choices=PROTOCOLS,
        help="also measure these parameters on this protocol's holdout; metrics go into the model",
    )
    _add_data_options(p)
    _add_model_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from workers.train import train_from_files

    settings = _settings(args, model_store=args.out, train=_train_overrides(args))
    model = train_from_files(
        args.interactions,
        ModelStore(settings.model_store),
        settings.train,
        settings.index,
        items_path=args.items,
        progress=not args.no_progress,
        read_options=_read_options(args),
        evaluate=args.evaluate,
    )
    print(
        json.dumps(
            {
                "model_version": model.version,
                "model_store": str(settings.model_store),
                "users": model.info.num_users,
                "items": model.info.num_items,
                "interactions": model.info.num_interactions,
                "trained_on": model.info.trained_on,
                "index_recall_at_10": round(model.info.index_recall_at_10, 4),
            }
        )
    )
    return 0


def _add_serve(commands: Any) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the latest model over gRPC",
        description="Load and verify the latest model in the model store and serve it over gRPC "
        "(with health checking and reflection). Prints 'listening on HOST:PORT' when ready; "
        "SIGTERM drains and stops.",
    )
    p.add_argument("--model-store", type=Path, help="model store directory")
    p.add_argument("--host", help="address to listen on")
    p.add_argument("--port", type=int, help="port (0 picks a free one)")
    p.add_argument("--workers", type=int, help="server processes (default 1; >1 needs Redis)")
    _common(p)
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from recsvc.server import serve

    settings = _settings(
        args,
        model_store=args.model_store,
        server={"host": args.host, "port": args.port, "workers": args.workers},
    )
    if settings.server.workers > 1:
        from recsvc.supervisor import run_workers

        passed = ["--model-store", str(settings.model_store), "--host", settings.server.host]
        if args.config:
            passed += ["--config", str(args.config)]
        return run_workers(settings, passed)
    asyncio.run(serve(settings))
    return 0


def _add_demo(commands: Any) -> None:
    p = commands.add_parser(
        "demo",
        help="generate demo data, train and serve it (no Redis needed)",
        description="The embedded default: generate synthetic shop data (2,000 users, 3,000 items, "
        "12 categories), train a real ALS model with an HNSW index, and serve it over gRPC with "
        "in-process state. Prints how to call it.",
    )
    p.add_argument("--dir", type=Path, default=DEFAULT_DEMO_DIR, help="where data and models go")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--retrain", action="store_true", help="train again even if a model exists")
    _common(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from recsvc.server import serve
    from workers.demo_data import generate_demo_data
    from workers.train import train_from_files

    store_dir = args.dir / "model-store"
    settings = _settings(args, model_store=store_dir, server={"host": args.host, "port": args.port})
    store = ModelStore(store_dir)
    if args.retrain or store.latest_version() is None:
        log.info("generating demo data in %s", args.dir)
        data = generate_demo_data(args.dir / "data")
        train_from_files(data.interactions, store, settings.train, settings.index, data.items)
    _print_demo_help(settings)
    asyncio.run(serve(settings))
    return 0


def _print_demo_help(settings: Settings) -> None:
    port = settings.server.port or "PORT"
    target = f"{settings.server.host}:{port}"
    print(
        f"recsvc demo: model in {settings.model_store}. Once 'listening on' shows, try:\n"
        f"  .venv/bin/recsvc call recommend --target {target} --user u00001 -k 5\n"
        f"  .venv/bin/recsvc call similar --target {target} --item i00042 -k 5\n"
        f"  .venv/bin/recsvc call record --target {target} --user u00001 --items i00042 "
        f"--event purchase\n"
        f"  .venv/bin/recsvc call info --target {target}\n"
        f'  grpcurl -plaintext -d \'{{"user_id": "u00001", "k": 5}}\' {target} '
        f"recsvc.v1.Recommender/Recommend\n"
        f"Ctrl-C stops it.",
        flush=True,
    )


def _add_call(commands: Any) -> None:
    p = commands.add_parser(
        "call",
        help="call a running server (recommend, similar, info, health)",
        description="Call a running recsvc server and print the answer as JSON.",
    )
    calls = p.add_subparsers(title="calls", metavar="CALL", required=True)

    def call(
        name: str, help_text: str, run: Callable[[Any, argparse.Namespace], Any]
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = calls.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the server")
        sub.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
        sub.set_defaults(run=lambda args: _run_call(args, run))
        return sub

    rec = call(
        "recommend",
        "top-k items for a user",
        lambda c, a: c.recommend(
            a.user, a.k, exclude_seen=not a.include_seen, recent_item_ids=a.recent or ()
        ),
    )
    rec.add_argument("--user", default="", help="user id (may be empty with --recent)")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--recent", nargs="*", help="recent item ids of an anonymous session")
    rec.add_argument("--include-seen", action="store_true", help="allow items the user has seen")
    sim = call("similar", "items similar to an item", lambda c, a: c.similar_items(a.item, a.k))
    sim.add_argument("--item", required=True)
    sim.add_argument("-k", type=int, default=10)
    rec_events = call(
        "record",
        "record that a user interacted with items",
        lambda c, a: dict(
            zip(
                ("accepted", "duplicates"),
                c.record_interactions(
                    [_raw_interaction(a.user, item, a.event, n) for n, item in enumerate(a.items)]
                ),
                strict=True,
            )
        ),
    )
    rec_events.add_argument("--user", required=True)
    rec_events.add_argument("--items", nargs="+", required=True, help="item ids")
    rec_events.add_argument(
        "--event", default="view", choices=["view", "click", "cart", "purchase", "rating"]
    )
    call("info", "the model being served", lambda c, a: c.model_info())
    call("health", "the server's health status", lambda c, a: {"status": c.health()})


def _raw_interaction(user: str, item: str, event: str, n: int) -> Any:
    import time
    import uuid

    from recsvc.core.interactions import RawInteraction
    from recsvc.core.state import EventType

    event_id = f"cli-{uuid.uuid4().hex[:12]}-{n}"
    return RawInteraction(user, item, EventType(event), None, int(time.time() * 1000), event_id)


def _run_call(args: argparse.Namespace, run: Callable[[Any, argparse.Namespace], Any]) -> int:
    import grpc

    from recsvc.client import RecsvcClient

    with RecsvcClient(args.target, timeout=args.timeout) as client:
        try:
            result = run(client, args)
        except grpc.RpcError as exc:
            print(f"recsvc: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps(result if isinstance(result, dict) else asdict(result), indent=2))
    return 0


def _add_config(commands: Any) -> None:
    p = commands.add_parser("config", help="show the settings or their documentation")
    p.add_argument("what", choices=["show", "docs"], help="show: effective values; docs: the table")
    _common(p)
    p.set_defaults(run=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    if args.what == "docs":
        print(settings_table())
    else:
        print(_settings(args).model_dump_json(indent=2))
    return 0


def _add_eval(commands: Any) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate a model offline against baselines",
        description="Split the interactions by a protocol, fit the model on the training part and "
        "report ranking metrics at k on the test part, with popularity, random and (for ALS) BPR "
        "baselines computed in the same run. MAP@k = (sum of precision@r at each hit rank r) / "
        "min(k, relevant items), averaged over users with test items.",
    )
    _add_split_options(p)
    _add_data_options(p)
    _add_model_options(p)
    p.add_argument("--no-baselines", action="store_true", help="measure the model only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)
    p.set_defaults(run=_run_eval)


def _load_split(args: argparse.Namespace) -> tuple[Settings, Any, Any, int]:
    """eval and tune: settings, the interactions, their split by the protocol, and its seed."""
    from workers.evaluate import split_interactions
    from workers.interactions import read_interactions

    settings = _settings(args, train=_train_overrides(args))
    data = read_interactions(args.interactions, _read_options(args))
    seed = 42 if args.seed is None else int(args.seed)
    split = split_interactions(
        data.matrix, data.timestamps, args.protocol, args.ratio, seed, args.last_n
    )
    return settings, data, split, seed


def _run_eval(args: argparse.Namespace) -> int:
    from workers.evaluate import evaluate_model, evaluate_with_baselines
    from workers.train import train_parameters

    settings, data, split, seed = _load_split(args)
    if args.no_baselines:
        result: dict[str, Any] = {"model": evaluate_model(split, settings.train, args.k)}
    else:
        result = evaluate_with_baselines(split, settings.train, args.k, seed)
    summary = {
        **{k: v for k, v in result["model"].items() if "@" in k},
        "protocol": args.protocol,
        "k": args.k,
        "seed": seed,
        "data": data.statistics(),
        "split": {"train": int(split.train.nnz), "test": int(split.test.nnz)},
        "params": train_parameters(settings.train),
        **result,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        _print_metrics_table(summary, args.k)
    return 0


def _print_metrics_table(summary: dict[str, Any], k: int) -> None:
    rows = {"model": summary["model"], **summary.get("baselines", {})}
    names = ["ndcg", "precision", "recall", "map", "hit_rate", "coverage", "mean_popularity"]
    print(f"protocol {summary['protocol']}, k={k}, {summary['data']}")
    print(f"{'':12}" + "".join(f"{n + '@' + str(k):>20}" for n in names))
    for label, metrics in rows.items():
        print(f"{label:12}" + "".join(f"{metrics[f'{n}@{k}']:>20.4f}" for n in names))


def _add_tune(commands: Any) -> None:
    p = commands.add_parser(
        "tune",
        help="search hyper-parameters on a validation split (optuna)",
        description="Split by the protocol into train and test; search parameters on validation "
        "splits carved from the training part only; fit the best on the whole training part and "
        "measure it on the test part once. Writes the best parameters to --out, which train and "
        "eval accept as --params.",
    )
    _add_split_options(p)
    _add_data_options(p)
    _add_model_options(p)
    p.add_argument("--trials", type=int, default=120, help="trials to run (default 120)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--metric", default="ndcg", choices=["ndcg", "precision", "recall", "map"])
    p.add_argument("--out", type=Path, required=True, help="where to write the parameters (JSON)")
    _common(p)
    p.set_defaults(run=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from workers.tune import tune, write_params

    settings, _, split, seed = _load_split(args)
    result = tune(
        split,
        settings.train,
        args.protocol,
        args.k,
        args.trials,
        seed,
        metric=args.metric,
        timeout=args.timeout,
        last_n=args.last_n,
    )
    write_params(result, args.out)
    print(json.dumps(result))
    return 0


def _add_models(commands: Any) -> None:
    p = commands.add_parser(
        "models",
        help="list, show, verify or prune the model store",
        description="Inspect and maintain the model store.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, text in [
        ("list", "one line per version (the latest is marked *)"),
        ("show", "a version's manifest (default: the latest)"),
        ("verify", "check every file's checksum (default: every version); exit 1 on damage"),
        ("gc", "remove old versions, keeping the latest and the --keep newest"),
    ]:
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument("--model-store", type=Path, help="model store directory")
        if name in ("show", "verify"):
            sub.add_argument("version", nargs="?", help="a version name")
        if name == "gc":
            sub.add_argument("--keep", type=int, default=3, help="newest versions kept (default 3)")
        _common(sub)
        sub.set_defaults(run=_run_models, action=name)


def _run_models(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from recsvc.errors import ArtifactError

    settings = _settings(args, model_store=args.model_store)
    store = ModelStore(settings.model_store)
    latest = store.latest_version()
    if args.action == "list":
        for version in store.list_versions():
            mark = "*" if version == latest else " "
            try:
                m = store.read_manifest(version)
                print(
                    f"{mark} {version}  {m.algorithm}  users={m.num_users} items={m.num_items} "
                    f"interactions={m.num_interactions} factors={m.factors} on={m.trained_on}"
                )
            except ArtifactError as exc:
                print(f"{mark} {version}  UNREADABLE: {exc}")
        return 0
    if args.action == "show":
        shown: str | None = args.version or latest
        if shown is None:
            raise ArtifactError(f"no model published in {store.root}")
        print(store.read_manifest(shown).model_dump_json(indent=2))
        return 0
    if args.action == "verify":
        failed = 0
        for version in [args.version] if args.version else store.list_versions():
            try:
                store.verify(version)
                print(f"ok      {version}")
            except ArtifactError as exc:
                failed += 1
                print(f"FAILED  {version}: {exc}")
        return 1 if failed else 0
    if args.keep < 1:
        raise ArtifactError("--keep must be at least 1")
    for version in store.collect_garbage(args.keep):
        print(f"removed {version}")
    return 0


def _add_worker(commands: Any) -> None:
    p = commands.add_parser(
        "worker",
        help="run the ingest or train worker (once, or in a loop)",
        description="Continuous learning: `ingest` moves recorded interactions from the event log "
        "into the Parquet interaction store, effectively once; `train` retrains when enough new "
        "interactions arrived (or enough time passed), refuses a model whose holdout metric "
        "dropped, publishes and prunes old versions. SIGTERM finishes the current round.",
    )
    kinds = p.add_subparsers(title="workers", metavar="WORKER", required=True)
    for name, text in [
        ("ingest", "event log -> interaction store"),
        ("train", "interaction store -> new model version"),
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
        else:
            sub.add_argument("--base", type=Path, help="interactions file trained on as well")
            sub.add_argument("--force", action="store_true", help="train even if not due")
        _common(sub)
        sub.set_defaults(run=_run_worker, kind=name)


def _run_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from recsvc.artifacts import ModelStore
    from workers.ingest import FileLogIngester, InteractionStore, RedisStreamIngester
    from workers.retrain import RetrainPolicy, TrainWorker

    settings = _settings(
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
    else:
        policy = RetrainPolicy(
            w.retrain_min_new_events,
            w.retrain_max_age_seconds,
            w.retrain_tolerance,
            w.keep_versions,
        )
        trainer = TrainWorker(
            events,
            ModelStore(settings.model_store),
            settings.train,
            settings.index,
            policy,
            args.base,
        )
        round_once = lambda: trainer.run_once(force=args.force)  # noqa: E731
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        result = round_once()
        log.info("%s round done: %s", args.kind, result)
        print(json.dumps({"worker": args.kind, "result": result}), flush=True)
        if args.once or stop.wait(w.interval_seconds):
            return 0


# ---------------------------------------------------------------------------- helpers


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input data")
    g.add_argument("--interactions", type=Path, required=True, help="interactions file")
    g.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "parquet", "movielens"],
        default="auto",
        help="file format (default: from the name)",
    )
    g.add_argument("--user-column", help="user id column (default: found by name)")
    g.add_argument("--item-column", help="item id column")
    g.add_argument("--weight-column", help="weight column (default: found, else 1 per row)")
    g.add_argument("--timestamp-column", help="timestamp column (Unix seconds or ISO-8601)")
    g.add_argument("--event-column", help="event type column (needs --event-weights)")
    g.add_argument("--event-weights", help="weights per event type, e.g. view=1,cart=3,purchase=5")
    g.add_argument("--strict", action="store_true", help="fail on the first malformed row")
    g.add_argument("--min-user-interactions", type=int, default=1, help="drop sparser users")
    g.add_argument("--min-item-interactions", type=int, default=1, help="drop sparser items")


def _read_options(args: argparse.Namespace) -> Any:
    from workers.interactions import ReadOptions

    return ReadOptions(
        file_format=args.format,
        user_column=args.user_column,
        item_column=args.item_column,
        weight_column=args.weight_column,
        timestamp_column=args.timestamp_column,
        event_column=args.event_column,
        event_weights=_parse_event_weights(args.event_weights),
        strict=args.strict,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
    )


def _parse_event_weights(text: str | None) -> dict[str, float]:
    from recsvc.errors import ConfigError

    weights: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or weights.get(name.strip(), 0) <= 0:
            raise ConfigError(f"--event-weights: {part!r} is not NAME=POSITIVE_NUMBER")
    return weights


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--params", type=Path, help="parameters file written by `recsvc tune`")
    g.add_argument("--algorithm", choices=["als", "bpr"])
    g.add_argument("--weighting", choices=["none", "binary", "bm25", "tfidf"])
    g.add_argument("--factors", type=int)
    g.add_argument("--iterations", type=int)
    g.add_argument("--regularization", type=float)
    g.add_argument("--alpha", type=float, help="ALS confidence scaling")
    g.add_argument("--learning-rate", type=float, help="BPR learning rate")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--threads", type=int, help="CPU threads (0 = every core)")
    g.add_argument("--seed", type=int, help="random seed (default 42)")


def _add_split_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("protocol")
    g.add_argument("--protocol", choices=PROTOCOLS, default="stratified-item")
    g.add_argument("--k", type=int, default=10, help="cut-off of the metrics (default 10)")
    g.add_argument("--ratio", type=float, default=0.75, help="train share for stratified splits")
    g.add_argument("--last-n", type=int, default=1, help="test items per user for leave-last-n")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Training settings: the --params file, overridden by explicit flags."""
    from workers.tune import read_params

    overrides = read_params(args.params) if args.params else {}
    for name in (
        "algorithm",
        "weighting",
        "factors",
        "iterations",
        "regularization",
        "alpha",
        "learning_rate",
        "device",
        "threads",
        "seed",
    ):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return overrides


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    settings = load_settings(args.config, log_level=args.log_level, **overrides)
    setup_logging(settings.log_level, json_lines=settings.log_format == "json")
    return settings


if __name__ == "__main__":
    raise SystemExit(main())
