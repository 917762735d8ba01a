"""recsvc embed, and the image part of recsvc eval."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from recsvc.catalogue.image_pattern import PATTERN_HELP
from recsvc.cli.common import common_options, settings_from
from recsvc.config import Settings
from recsvc.errors import ConfigError, DataError


def add_embed(commands: Any) -> None:
    p = commands.add_parser(
        "embed",
        help="embed a catalogue's product images (resumable)",
        description="Read a catalogue (CSV, TSV or Parquet: item id, image path or bytes, "
        "category, attributes), embed every image with the configured CNN backbone "
        "(efficientnet_lite0 by default, no download) and write an embedding table that "
        "`recsvc train --images` uses. Items whose image is unchanged since the last run are "
        "skipped; bad images are reported and skipped; Ctrl-C or SIGTERM keeps what is done.",
        epilog="Exit status: 0 done; 1 no image could be read (nothing written) or more than "
        "--max-failure-share of the images failed (the others written), the first failures on "
        "stderr; 2 bad input (e.g. a bad --image-pattern); 3 interrupted (what was done is "
        "kept).",
    )
    add_catalogue_options(p)
    p.add_argument("--out", type=Path, required=True, help="embedding table to create or resume")
    p.add_argument("--backbone", help="CNN backbone (default: RECSVC_IMAGES__BACKBONE)")
    p.add_argument("--weights", type=Path, help="local weights file for the backbone")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run the CNN")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--loader-workers", type=int, help="decoding processes (0: inline)")
    p.add_argument(
        "--max-failure-share",
        type=float,
        help="exit 1 when more than this share of the images tried failed (0-1; default: "
        "RECSVC_IMAGES__MAX_FAILURE_SHARE, 0.05)",
    )
    p.add_argument(
        "--shard",
        type=_shard_argument,
        metavar="I/N",
        help="embed only shard I of N (0 <= I < N; items assigned by a hash of their id) into "
        "OUT.part-I-of-N, for `recsvc embed-merge` (default: RECSVC_IMAGES__SHARD_COUNT and "
        "RECSVC_IMAGES__SHARD_INDEX or JOB_COMPLETION_INDEX; none: the whole catalogue)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    common_options(p)
    p.set_defaults(run=_run_embed)


def add_embed_merge(commands: Any) -> None:
    p = commands.add_parser(
        "embed-merge",
        help="merge the parts of a sharded `recsvc embed` into one embedding table",
        description="Check that the N parts OUT.part-I-of-N written by `recsvc embed --shard "
        "I/N` are all there, complete, and made from the same catalogue with the same backbone "
        "and weights, then write OUT: the same table (same ids, order and vectors) as one run "
        "over the whole catalogue. The parts are kept: the next sharded run resumes from them.",
        epilog="Exit status: 0 written; 1 a part is missing, incomplete, unreadable or does "
        "not agree with the others (named on stderr; nothing written); 2 bad input.",
    )
    p.add_argument("--out", type=Path, required=True, help="the embedding table to write")
    p.add_argument(
        "--parts",
        type=int,
        help="how many shards the run had (default: RECSVC_IMAGES__SHARD_COUNT)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="merge the parts that are there, complete or not, and name the others (their "
        "items are left out)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for every part to be there and complete (e.g. a merge Job "
        "started with the shards)",
    )
    common_options(p)
    p.set_defaults(run=_run_embed_merge)


def _shard_argument(text: str) -> Any:
    from recsvc.catalogue.shards import parse_shard

    try:
        return parse_shard(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_catalogue_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("catalogue")
    g.add_argument("--catalogue", type=Path, required=True, help="catalogue file")
    g.add_argument("--image-dir", type=Path, help="base of relative image paths")
    g.add_argument("--image-pattern", help=PATTERN_HELP.replace("%", "%%"))
    g.add_argument("--item-column", help="item id column (default: found by name)")
    g.add_argument("--image-column", help="image path or bytes column")
    g.add_argument("--category-column", help="category column (default: 'category')")


def read_catalogue_from(args: argparse.Namespace) -> Any:
    from recsvc.catalogue.reader import CatalogueOptions, read_catalogue

    return read_catalogue(
        args.catalogue,
        CatalogueOptions(
            item_column=args.item_column,
            image_column=args.image_column,
            category_column=args.category_column,
            image_dir=args.image_dir,
            image_pattern=args.image_pattern,
        ),
    )


def _run_embed(args: argparse.Namespace) -> int:
    from recsvc.catalogue.embedding import embed_catalogue, embed_options
    from recsvc.catalogue.embedding_parts import table_path
    from recsvc.catalogue.shards import resolve_shard
    from recsvc.vision.embedder import ImageEmbedder

    settings = settings_from(
        args,
        images={
            "backbone": args.backbone,
            "weights": args.weights,
            "device": args.device,
            "batch_size": args.batch_size,
            "loader_workers": args.loader_workers,
            "max_failure_share": args.max_failure_share,
        },
    )
    images = settings.images
    shard = args.shard or resolve_shard(images.shard_count, images.shard_index, os.environ)
    catalogue = read_catalogue_from(args)
    embedder = ImageEmbedder.from_settings(settings.images)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    report = embed_catalogue(
        catalogue,
        embedder,
        args.out,
        embed_options(settings.images, progress=not args.no_progress),
        should_stop=stop.is_set,
        shard=shard,
    )
    print(
        json.dumps(
            {
                "out": str(table_path(args.out, shard)),
                "shard": str(shard) if shard else None,
                "backbone": embedder.name,
                "device": str(embedder.device),
                "catalogue_rows_skipped": catalogue.rows_skipped,
                **report.as_dict(),
            }
        )
    )
    if report.interrupted:
        return 3
    problem = report.problem(settings.images.max_failure_share)
    if problem:
        print(f"recsvc: error: embed: {problem}", file=sys.stderr)
        return 1
    return 0


def _run_embed_merge(args: argparse.Namespace) -> int:
    from recsvc.catalogue.embedding_parts import merge_parts

    settings = settings_from(args)
    parts = args.parts if args.parts is not None else settings.images.shard_count
    if parts < 1:
        raise ConfigError(f"--parts {parts}: at least one part is needed")
    if args.wait < 0:
        raise ConfigError(f"--wait {args.wait:g}: a number of seconds >= 0 is needed")
    try:
        report = merge_parts(args.out, parts, args.allow_missing, args.wait)
    except DataError as exc:
        print(f"recsvc: error: embed-merge: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), **report.as_dict()}))
    return 0


def add_image_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images (instead of --interactions)")
    g.add_argument(
        "--images", type=Path, help="embedding table from `recsvc embed` (default: none)"
    )
    g.add_argument("--label-column", help="visual agreement label (default: the category)")
    g.add_argument(
        "--visual-space",
        choices=["lda", "lda-all", "proxy"],
        default="lda",
        help="how the visual space learns (default: %(default)s, what `recsvc train` does): lda "
        "= discriminant analysis on the label; lda-all = also separating every other label "
        "column of --catalogue; proxy = a metric-learning head on every label column",
    )
    g.add_argument(
        "--visual-class-weight",
        type=float,
        metavar="W",
        help="weight of the visual space's class-probability part, 0 = off (default: "
        "RECSVC_TRAIN__VISUAL_CLASS_WEIGHT, what `recsvc train` does)",
    )
    g.add_argument(
        "--attributes",
        help="comma-separated catalogue columns the simulated users have preferences over "
        "(cold start); default: the category and every column with 2 to 50 distinct text "
        "values filled for at least half of the items",
    )
    g.add_argument("--users", type=int, default=4000, help="simulated users (cold start)")
    g.add_argument(
        "--holdout",
        type=int,
        default=2000,
        help="visual agreement measured for N random items; the visual space learns on the rest",
    )
    g.add_argument(
        "--catalogue",
        type=Path,
        help="the catalogue the table came from, for the cold start (default: none)",
    )


def run_image_eval(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Visual agreement and the cold-start protocol (see recsvc.evaluation.cold_start)."""
    from recsvc.catalogue.embedding_table import EmbeddingTable
    from recsvc.catalogue.reader import CATEGORY, CatalogueOptions, read_catalogue
    from recsvc.evaluation.cold_start import SimulationSettings, evaluate_cold_start, visual_quality
    from recsvc.fitting.visual_space import VisualSpaceSettings

    table = EmbeddingTable.load(args.images)
    result: dict[str, Any] = {"images": str(args.images), "backbone": table.backbone}
    catalogue = (
        read_catalogue(args.catalogue, CatalogueOptions(images=False)) if args.catalogue else None
    )

    def columns(names: list[str]) -> dict[str, list[str]]:
        """Per table row: the category the table holds, or a catalogue column."""
        found: dict[str, list[str]] = {}
        from_table = any(table.categories)
        others = [name for name in names if name != CATEGORY or not from_table]
        by_name = catalogue.labels(others) if catalogue else {}
        if others and catalogue is None:
            raise DataError(f"--catalogue is needed for the columns {', '.join(others)}")
        for name in names:
            if name == CATEGORY and from_table:
                found[name] = list(table.categories)
            else:
                found[name] = [by_name[name].get(item_id, "") for item_id in table.item_ids]
        return found

    labels = columns([args.label_column])[args.label_column] if args.label_column else None
    label_name = args.label_column or CATEGORY
    # The learned space uses every other label column of the catalogue too.
    others = [n for n in catalogue.detect_label_columns() if n != label_name] if catalogue else []
    result["visual"] = visual_quality(
        table.vectors,
        labels if labels is not None else table.categories,
        k=args.k,
        holdout=args.holdout,
        seed=settings.train.seed,
        other_labels=columns(others),
        space=VisualSpaceSettings(
            method=args.visual_space,
            seed=settings.train.seed,
            class_weight=(
                settings.train.visual_class_weight
                if args.visual_class_weight is None
                else args.visual_class_weight
            ),
        ),
    )
    if catalogue is not None:
        if args.attributes:
            names = [name.strip() for name in args.attributes.split(",") if name.strip()]
        else:
            names = catalogue.detect_label_columns()
            if CATEGORY not in names and any(table.categories):
                names.insert(0, CATEGORY)
        if not names:
            raise DataError(
                f"--catalogue {args.catalogue}: no column looks like a label; name them with "
                f"--attributes (columns: {', '.join(catalogue.label_names())})"
            )
        attributes = columns(names)
        simulation = SimulationSettings(users=args.users, seed=settings.train.seed)
        result["cold_start"] = {
            "attributes": names,
            **evaluate_cold_start(table.vectors, attributes, settings.train, simulation, k=args.k),
        }
    return result
