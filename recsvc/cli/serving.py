"""recsvc serve, demo, call and config."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recsvc.cli.common import DEFAULT_DEMO_DIR, common_options, settings_from
from recsvc.config import Settings, settings_table

log = logging.getLogger("recsvc")


def add_serve(commands: Any) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the latest model over gRPC",
        description="Load and verify the latest model in the model store and serve it over gRPC "
        "(with health checking and reflection). Prints 'listening on HOST:PORT' when ready; "
        "on an empty model store it listens unready, answering UNAVAILABLE, until the first "
        "version appears. SIGTERM drains and stops.",
    )
    p.add_argument("--model-store", type=Path, help="model store directory")
    p.add_argument("--host", help="address to listen on")
    p.add_argument("--port", type=int, help="port (0 picks a free one)")
    p.add_argument("--workers", type=int, help="server processes (default 1; >1 needs Redis)")
    common_options(p)
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from recsvc.server import serve

    settings = settings_from(
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


def add_demo(commands: Any) -> None:
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
    common_options(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from recsvc.data.demo import generate_demo_data
    from recsvc.server import serve
    from recsvc.training.pipeline import train_from_files

    store_dir = args.dir / "model-store"
    settings = settings_from(
        args, model_store=store_dir, server={"host": args.host, "port": args.port}
    )
    store = ModelStore.from_settings(settings)
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


def add_call(commands: Any) -> None:
    p = commands.add_parser(
        "call",
        help="call a running server (recommend, similar, search-image, examples, upsert, "
        "record, forget-user, info, ...)",
        description="Call a running recsvc server and print the answer as JSON.",
    )
    calls = p.add_subparsers(title="calls", metavar="CALL", required=True)

    def call(
        name: str, help_text: str, run: Callable[[Any, argparse.Namespace], Any]
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = calls.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the server")
        sub.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
        sub.add_argument(
            "--namespace", default="", help="namespace to call (default: the server's default)"
        )
        _add_security_options(sub)
        sub.set_defaults(run=lambda args: _run_call(args, run))
        return sub

    rec = call(
        "recommend",
        "top-k items for a user",
        lambda c, a: c.recommend(
            a.user,
            a.k,
            exclude_seen=not a.include_seen,
            recent_item_ids=a.recent or (),
            filter=a.filter,
            context=_pairs(a.context, "--context"),
            explain=a.explain,
        ),
    )
    rec.add_argument("--user", default="", help="user id (may be empty with --recent)")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--recent", nargs="*", help="recent item ids of an anonymous session")
    rec.add_argument("--include-seen", action="store_true", help="allow items the user has seen")
    rec.add_argument("--filter", default="", help=_FILTER_HELP)
    rec.add_argument(
        "--context",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="facts about the request that rules match on, e.g. segment=vip",
    )
    rec.add_argument(
        "--explain",
        action="store_true",
        help="give each item its reasons (history items, visual neighbour, rule), printed as "
        "text instead of JSON (docs/explanations.md)",
    )
    sim = call(
        "similar",
        "items similar to an item",
        lambda c, a: c.similar_items(a.item, a.k, _similarity_mode(a.mode), filter=a.filter),
    )
    sim.add_argument("--filter", default="", help=_FILTER_HELP)
    sim.add_argument("--item", required=True)
    sim.add_argument("-k", type=int, default=10)
    sim.add_argument(
        "--mode", default="collaborative", choices=["collaborative", "visual", "hybrid"]
    )
    photo = call(
        "search-image",
        "items that look like a photo",
        lambda c, a: c.search_by_image(a.image.read_bytes(), a.k, filter=a.filter),
    )
    photo.add_argument("--filter", default="", help=_FILTER_HELP)
    photo.add_argument("--image", type=Path, required=True, help="JPEG, PNG or WebP file")
    photo.add_argument("-k", type=int, default=10)
    by_example = call(
        "examples",
        "items like the positive examples and unlike the negative ones (item ids or photos)",
        lambda c, a: c.recommend_from_examples(
            [*(a.positive or ()), *(path.read_bytes() for path in a.positive_image or ())],
            [*(a.negative or ()), *(path.read_bytes() for path in a.negative_image or ())],
            a.k,
            _similarity_mode(a.mode),
            filter=a.filter,
            exclude_item_ids=a.exclude or (),
        ),
    )
    by_example.add_argument("--positive", nargs="+", metavar="ID", help="items to move towards")
    by_example.add_argument("--negative", nargs="+", metavar="ID", help="items to move away from")
    by_example.add_argument(
        "--positive-image", nargs="+", type=Path, metavar="FILE", help="photos to move towards"
    )
    by_example.add_argument(
        "--negative-image", nargs="+", type=Path, metavar="FILE", help="photos to move away from"
    )
    by_example.add_argument("-k", type=int, default=10)
    by_example.add_argument(
        "--mode", default="collaborative", choices=["collaborative", "visual", "hybrid"]
    )
    by_example.add_argument("--filter", default="", help=_FILTER_HELP)
    by_example.add_argument("--exclude", nargs="+", metavar="ID", help="items not to return")
    upsert = call(
        "upsert",
        "add or update an item (with a photo: recommendable at once)",
        lambda c, a: dict(
            zip(
                ("created", "updated"),
                c.upsert_items([_raw_item(a)]),
                strict=True,
            )
        ),
    )
    upsert.add_argument("--item", required=True)
    upsert.add_argument("--category", default="")
    upsert.add_argument("--image", type=Path, help="the product photo (sent as bytes)")
    upsert.add_argument(
        "--attribute",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="attributes filters can use, e.g. price=19.90 brand=acme (replace the item's)",
    )
    shown = upsert.add_mutually_exclusive_group()
    shown.add_argument(
        "--hide", action="store_true", help="stop recommending the item (kept for training)"
    )
    shown.add_argument("--show", action="store_true", help="recommend the item again")
    delete = call(
        "delete",
        "delete items: never recommended again, left out of the next training",
        lambda c, a: dict(zip(("deleted", "not_found"), c.delete_items(a.items), strict=True)),
    )
    delete.add_argument("--items", nargs="+", required=True, help="item ids")
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
        "--event",
        default="view",
        choices=["view", "click", "cart", "purchase", "rating", "dislike", "impression"],
        help="dislike: never recommend the item to the user; impression: shown, not clicked "
        "(stored for evaluation, never a positive)",
    )
    forget = call(
        "forget-user",
        "forget a user: their vector, history and (at the next compaction and training) their "
        "events (docs/privacy.md)",
        lambda c, a: {"found": c.forget_user(a.user)},
    )
    forget.add_argument("user", help="the user id to forget")
    call("info", "the model being served", lambda c, a: c.model_info())
    call("health", "the server's health status", lambda c, a: {"status": c.health()})


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS and authentication")
    group.add_argument("--tls", action="store_true", help="use TLS, verified by the system's CAs")
    group.add_argument("--tls-ca", type=Path, help="CA file (PEM) to verify the server (TLS on)")
    group.add_argument("--tls-cert", type=Path, help="client certificate (PEM), mutual TLS")
    group.add_argument("--tls-key", type=Path, help="client private key (PEM), mutual TLS")
    group.add_argument("--tls-server-name", help="name to expect in the server's certificate")
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file", type=Path, help="file holding the bearer token (safer than --token)"
    )
    tokens.add_argument("--token", help="bearer token (visible to other local users in ps)")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        return str(args.token_file.read_text().strip())
    return str(args.token) if args.token else None


def _similarity_mode(name: str) -> Any:
    from recsvc.core.queries import SimilarityMode

    return SimilarityMode(name)


_FILTER_HELP = 'an expression on item attributes, e.g. \'price < 50 and brand in ("a", "b")\''


def _pairs(texts: list[str], option: str) -> dict[str, str]:
    """KEY=VALUE arguments as a dict; a text without '=' is an argument error."""
    pairs: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise SystemExit(f"recsvc: {option} takes KEY=VALUE, got {text!r}")
        pairs[key] = value
    return pairs


def _raw_item(args: argparse.Namespace) -> Any:
    from recsvc.core.items import RawItem

    return RawItem(
        args.item,
        args.category,
        _pairs(args.attribute, "--attribute"),
        image_bytes=args.image.read_bytes() if args.image else None,
        available=False if args.hide else True if args.show else None,
    )


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

    if (args.tls_cert is None) != (args.tls_key is None):
        print("recsvc: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        client = RecsvcClient(
            args.target,
            timeout=args.timeout,
            tls=args.tls,
            tls_ca_file=args.tls_ca,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_server_name=args.tls_server_name,
            token=_token(args),
            namespace=args.namespace,
        )
    except OSError as exc:
        print(f"recsvc: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    with client:
        try:
            result = run(client, args)
        except grpc.RpcError as exc:
            print(f"recsvc: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if getattr(args, "explain", False):
        from recsvc.cli.explained import format_explained

        print(format_explained(result))
        return 0
    print(json.dumps(result if isinstance(result, dict) else asdict(result), indent=2))
    return 0


def add_config(commands: Any) -> None:
    p = commands.add_parser("config", help="show the settings or their documentation")
    p.add_argument("what", choices=["show", "docs"], help="show: effective values; docs: the table")
    common_options(p)
    p.set_defaults(run=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    if args.what == "docs":
        print(settings_table())
    else:
        print(json.dumps(shown_settings(settings_from(args)), indent=2))
    return 0


def shown_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as `config show` prints them: secrets redacted as in the
    server's start-up line (a SecretStr prints as stars; a Redis URL loses its password)."""
    shown: dict[str, Any] = json.loads(settings.model_dump_json())
    if shown.get("redis_url"):
        shown["redis_url"] = redacted_url(shown["redis_url"])
    return shown


def redacted_url(url: str) -> str:
    """``url`` with the password of its user-info part and any ``password=`` query parameter
    replaced by ``***`` (redis-py reads the password from either)."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        user_info, _, host = parts.netloc.rpartition("@")
        user, colon, _ = user_info.partition(":")
        url = url.replace(parts.netloc, f"{user}{':***' if colon else ''}@{host}", 1)
    if parts.query:
        query = "&".join(
            f"{name}=***" if name.lower() == "password" and sep else field
            for field in parts.query.split("&")
            for name, sep, _ in [field.partition("=")]
        )
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    return url
