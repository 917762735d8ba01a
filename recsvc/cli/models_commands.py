"""recsvc models sync: a serving pod's verified local copy of the shared model store."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from recsvc.cli.common import common_options, namespace_option, settings_from

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
