"""The ``recsvc`` command line: train, embed, serve, demo, call, eval, tune, models, worker,
config, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recsvc.cli.images import add_embed, add_embed_merge
from recsvc.cli.offline import add_eval, add_import, add_models, add_train, add_tune
from recsvc.cli.report import add_report
from recsvc.cli.serving import add_call, add_config, add_demo, add_serve
from recsvc.cli.worker_commands import add_worker
from recsvc.errors import RecsvcError


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
    add_train(commands)
    add_import(commands)
    add_embed(commands)
    add_embed_merge(commands)
    add_serve(commands)
    add_demo(commands)
    add_call(commands)
    add_eval(commands)
    add_tune(commands)
    add_report(commands)
    add_models(commands)
    add_worker(commands)
    add_config(commands)
    return parser
