"""recsvc worker ingest | train | embed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsvc.cli.common import common_options, namespace_option, settings_from
from recsvc.cli.images import add_catalogue_options, read_catalogue_from

# `worker train --check-due` when training is not due: distinct from 1 (failure) and 2 (usage or
# configuration error), so that a script can tell "nothing to do" from "broken".
NOT_DUE_EXIT = 3


def add_worker(commands: Any) -> None:
    p = commands.add_parser(
        "worker",
        help="run the ingest, train or embed worker (once, or in a loop)",
        description="Continuous learning: `ingest` moves recorded interactions from the event log "
        "into the Parquet interaction store, effectively once; `train` trains on the whole store "
        "(history from `recsvc import` + ingested events) when enough new interactions arrived "
        "(or enough time passed, or there is no model yet), refuses a model whose holdout metric "
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
            sub.add_argument(
                "--base",
                type=Path,
                help="deprecated: an interactions file trained on as well; load it into the "
                "interaction store once with `recsvc import` instead",
            )
            sub.add_argument("--force", action="store_true", help="train even if not due")
            sub.add_argument(
                "--check-due",
                action="store_true",
                help="only decide, as a round would, whether training is due; print one line "
                f"saying why; exit 0 when due, {NOT_DUE_EXIT} when not (cheap: no training, "
                "no GPU; the CronJob runs it before it starts the GPU Job)",
            )
            sub.add_argument("--images", type=Path, help="embedding table (from the embed worker)")
        else:
            add_catalogue_options(sub)
            sub.add_argument("--out", type=Path, required=True, help="embedding table")
        namespace_option(sub)
        common_options(sub)
        sub.set_defaults(run=_run_worker, kind=name)


def _run_worker(args: argparse.Namespace) -> int:
    from workers.loop import Round, run_rounds

    settings = settings_from(
        args,
        model_store=args.model_store,
        workers={"interaction_store": args.interaction_store, "interval_seconds": args.interval},
    )
    if args.kind == "train" and args.check_due:
        from workers.retrain import check_due

        due, reason = check_due(settings)
        print(reason, flush=True)
        return 0 if due else NOT_DUE_EXIT
    round_once: Round
    if args.kind == "ingest":
        from workers.ingest import build_ingest_round

        round_once = build_ingest_round(settings, args.event_log)
    elif args.kind == "train":
        from workers.retrain import build_train_round

        round_once = build_train_round(settings, args.base, args.images, args.force)
    else:
        from workers.embed import build_embed_round

        round_once = build_embed_round(settings, lambda: read_catalogue_from(args), args.out)
    return run_rounds(args.kind, round_once, settings.workers.interval_seconds, args.once)
