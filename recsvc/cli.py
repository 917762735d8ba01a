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

log = logging.getLogger("recsvc")

DEFAULT_DEMO_DIR = Path(".recsvc-demo")


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
    p.add_argument("--interactions", type=Path, required=True, help="interactions file")
    p.add_argument("--out", type=Path, help="model store directory (default: RECSVC_MODEL_STORE)")
    p.add_argument("--items", type=Path, help="optional catalogue: item id and category columns")
    p.add_argument("--factors", type=int)
    p.add_argument("--iterations", type=int)
    p.add_argument("--regularization", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="CPU threads (0 = every core)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from workers.train import train_from_files

    settings = _settings(
        args,
        model_store=args.out,
        train={
            "factors": args.factors,
            "iterations": args.iterations,
            "regularization": args.regularization,
            "alpha": args.alpha,
            "device": args.device,
            "threads": args.threads,
            "seed": args.seed,
        },
    )
    model = train_from_files(
        args.interactions,
        ModelStore(settings.model_store),
        settings.train,
        settings.index,
        items_path=args.items,
        progress=not args.no_progress,
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
    _common(p)
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from recsvc.server import serve

    settings = _settings(
        args, model_store=args.model_store, server={"host": args.host, "port": args.port}
    )
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
    call("info", "the model being served", lambda c, a: c.model_info())
    call("health", "the server's health status", lambda c, a: {"status": c.health()})


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


# ---------------------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    settings = load_settings(args.config, log_level=args.log_level, **overrides)
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


if __name__ == "__main__":
    raise SystemExit(main())
