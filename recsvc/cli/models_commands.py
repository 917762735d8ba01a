"""recsvc models sync, promote and history: a serving pod's verified local copy of the shared
model store, and the recorded switches of its LATEST."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from recsvc.cli.common import common_options, namespace_option, settings_from
from recsvc.config import Settings

log = logging.getLogger("recsvc")


def add_models_sync(actions: Any) -> None:
    text = (
        "copy each new latest version of a shared model store (--source) into a local one "
        "(--dest), verify the copy (manifest, signature, sha256 of every file) and only then "
        "publish it there atomically; a server watching --dest never sees a partial or "
        "unverified version. Loops until SIGTERM (every RECSVC_SERVING__MODEL_POLL_SECONDS, "
        "or --interval)"
    )
    sub = actions.add_parser("sync", help="keep a local, verified copy of a shared store's latest")
    sub.description = text
    sub.add_argument("--source", type=Path, required=True, help="the shared model store")
    sub.add_argument("--dest", type=Path, required=True, help="the local model store")
    sub.add_argument("--once", action="store_true", help="one round, then exit (1: not synced)")
    sub.add_argument("--interval", type=float, help="seconds between rounds")
    sub.add_argument(
        "--keep", type=int, default=2, help="versions kept in --dest, LATEST included (default 2)"
    )
    namespace_option(sub)
    common_options(sub)
    sub.set_defaults(run=_run_sync)


def _run_sync(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from recsvc.artifacts.signing import signing_key_from
    from recsvc.artifacts.sync import ModelSync
    from recsvc.errors import ArtifactError

    settings = settings_from(args)
    if args.interval is not None and args.interval <= 0:
        raise ArtifactError(f"--interval must be positive, not {args.interval}")
    if args.keep < 1:
        raise ArtifactError(f"--keep must be at least 1, not {args.keep}")
    key = signing_key_from(settings)
    sync = ModelSync(ModelStore(args.source, key), ModelStore(args.dest, key), args.keep)
    interval = args.interval or settings.serving.model_poll_seconds or 2.0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        try:
            version = sync.sync_once()
            failed = False
        except (ArtifactError, OSError) as exc:  # a store file must never end the loop
            log.error("models sync: not synced, still serving the previous version: %s", exc)
            version, failed = None, True
        if version is not None or args.once:
            print(json.dumps({"synced": version, "failed": failed}), flush=True)
        if args.once:
            return 1 if failed else 0
        if stop.wait(interval):
            return 0


def add_who_and_why(parser: argparse.ArgumentParser, reason_required: bool) -> None:
    parser.add_argument(
        "--reason",
        required=reason_required,
        default="",
        help="why LATEST moves, recorded in the store's HISTORY",
    )
    parser.add_argument("--by", help="who moves it, recorded in HISTORY (default: the login name)")


def add_models_promote(actions: Any) -> None:
    text = (
        "point LATEST at the model version an experiment's arm serves, once it loads fully as "
        "serving would load it, and record who, when and why in the store's HISTORY"
    )
    sub = actions.add_parser("promote", help="make an experiment arm's model the current one")
    sub.description = text
    sub.add_argument("--model-store", type=Path, help="model store directory")
    sub.add_argument("--experiments", type=Path, required=True, help="the experiments document")
    sub.add_argument(
        "--experiment", help="the experiment's name (default: the only one in the document)"
    )
    sub.add_argument("--arm", required=True, help="the arm whose model version is promoted")
    add_who_and_why(sub, reason_required=True)
    namespace_option(sub)
    common_options(sub)
    sub.set_defaults(run=_run_promote)


def add_models_history(actions: Any) -> None:
    text = "the recorded switches of LATEST, oldest first: when, version, previous, by, why"
    sub = actions.add_parser("history", help=text, description=text)
    sub.add_argument("--model-store", type=Path, help="model store directory")
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    namespace_option(sub)
    common_options(sub)
    sub.set_defaults(run=_run_history)


def promote(
    settings: Settings,
    version: str,
    by: str | None,
    reason: str,
    experiment: str = "",
    arm: str = "",
) -> None:
    """Load ``version`` as a server would, record the switch in HISTORY, then point LATEST
    at it: LATEST never names a version that replicas would refuse or crash-loop on."""
    from recsvc.artifacts import ModelStore
    from recsvc.artifacts.promotions import record_promotion
    from recsvc.errors import ArtifactError, RecsvcError
    from recsvc.server import load_recommender

    store = ModelStore.from_settings(settings)
    try:
        load_recommender(settings, version)
    except RecsvcError:
        raise
    except Exception as exc:
        raise ArtifactError(f"model {version}: {type(exc).__name__}: {exc}") from exc
    previous = store.latest_version()
    record_promotion(store.root, version, previous, by or _login(), reason, experiment, arm)
    store.point_latest_to(version)
    print(f"LATEST -> {version} (was {previous or 'none'})")


def _run_promote(args: argparse.Namespace) -> int:
    from recsvc.core.experiments import parse_experiments
    from recsvc.errors import ConfigError

    settings = settings_from(args, model_store=args.model_store)
    try:
        document = args.experiments.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"--experiments {args.experiments}: cannot read: {exc.strerror}"
        ) from None
    experiments = parse_experiments(document, f"--experiments {args.experiments}")
    running = list(experiments.by_namespace.values())
    names = [experiment.name for experiment in running]
    if args.experiment is None and len(running) != 1:
        raise ConfigError(
            f"--experiment: the document runs {len(running)} experiments; name one of "
            f"{', '.join(names) or '(none)'}"
        )
    chosen = next((e for e in running if args.experiment in (None, e.name)), None)
    if chosen is None:
        raise ConfigError(
            f"--experiment {args.experiment!r}: not in the document ({', '.join(names)})"
        )
    arm = next((a for a in chosen.arms if a.name == args.arm), None)
    if arm is None:
        arms = ", ".join(a.name for a in chosen.arms)
        raise ConfigError(f"--arm {args.arm!r}: experiment {chosen.name} has arms {arms}")
    if not arm.model_version:
        raise ConfigError(
            f"--arm {args.arm!r}: it serves the current model (LATEST) already; nothing to promote"
        )
    promote(settings, arm.model_version, args.by, args.reason, chosen.name, arm.name)
    return 0


def _run_history(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from recsvc.artifacts.promotions import read_history

    settings = settings_from(args, model_store=args.model_store)
    for entry in read_history(settings.model_store):
        if args.json:
            print(json.dumps(asdict(entry)))
            continue
        source = f" (experiment {entry.experiment}, arm {entry.arm})" if entry.experiment else ""
        print(
            f"{entry.at}  {entry.previous or '-'} -> {entry.version}  by {entry.by}{source}: "
            f"{entry.reason or '(no reason given)'}"
        )
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a container without a passwd entry
        return "unknown"
