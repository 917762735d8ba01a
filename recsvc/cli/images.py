"""recsvc embed, and the image part of recsvc eval."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

from recsvc.cli.common import common_options, settings_from
from recsvc.config import Settings


def add_embed(commands: Any) -> None:
    p = commands.add_parser(
        "embed",
        help="embed a catalogue's product images (resumable)",
        description="Read a catalogue (CSV, TSV or Parquet: item id, image path or bytes, "
        "category, attributes), embed every image with the configured CNN backbone "
        "(efficientnet_lite0 by default, no download) and write an embedding table that "
        "`recsvc train --images` uses. Items whose image is unchanged since the last run are "
        "skipped; bad images are reported and skipped; Ctrl-C or SIGTERM keeps what is done.",
    )
    add_catalogue_options(p)
    p.add_argument("--out", type=Path, required=True, help="embedding table to create or resume")
    p.add_argument("--backbone", help="CNN backbone (default: RECSVC_IMAGES__BACKBONE)")
    p.add_argument("--weights", type=Path, help="local weights file for the backbone")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run the CNN")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--loader-workers", type=int, help="decoding processes (0: inline)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    common_options(p)
    p.set_defaults(run=_run_embed)


def add_catalogue_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("catalogue")
    g.add_argument("--catalogue", type=Path, required=True, help="catalogue file")
    g.add_argument("--image-dir", type=Path, help="base of relative image paths")
    g.add_argument(
        "--image-pattern", help="file name when there is no image column, e.g. {item_id}.jpg"
    )
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
    from recsvc.vision.embedder import ImageEmbedder

    settings = settings_from(
        args,
        images={
            "backbone": args.backbone,
            "weights": args.weights,
            "device": args.device,
            "batch_size": args.batch_size,
            "loader_workers": args.loader_workers,
        },
    )
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
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "backbone": embedder.name,
                "device": str(embedder.device),
                "catalogue_rows_skipped": catalogue.rows_skipped,
                **report.as_dict(),
            }
        )
    )
    return 3 if report.interrupted else 0


def add_image_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images (instead of --interactions)")
    g.add_argument("--images", type=Path, help="embedding table from `recsvc embed`")
    g.add_argument("--label-column", help="visual agreement label (default: the category)")
    g.add_argument(
        "--attributes",
        default="gender,category,baseColour,usage",
        help="catalogue columns the simulated users have preferences over (cold start)",
    )
    g.add_argument("--users", type=int, default=4000, help="simulated users (cold start)")
    g.add_argument(
        "--holdout",
        type=int,
        default=2000,
        help="visual agreement measured for N random items; the visual space learns on the rest",
    )
    g.add_argument(
        "--catalogue", type=Path, help="the catalogue the table came from (for the cold start)"
    )


def run_image_eval(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Visual agreement and the cold-start protocol (see recsvc.evaluation.cold_start)."""
    from recsvc.catalogue.embedding_table import EmbeddingTable
    from recsvc.catalogue.reader import read_catalogue
    from recsvc.evaluation.cold_start import SimulationSettings, evaluate_cold_start, visual_quality

    table = EmbeddingTable.load(args.images)
    result: dict[str, Any] = {"images": str(args.images), "backbone": table.backbone}
    catalogue = read_catalogue(args.catalogue) if args.catalogue else None
    by_id = {item.item_id: item for item in catalogue.items} if catalogue else {}

    def column(name: str) -> list[str]:
        """Per table row: the category the table holds, or a catalogue column."""
        if name == "category":
            return list(table.categories)
        return [by_id[i].attributes.get(name, "") if i in by_id else "" for i in table.item_ids]

    labels = column(args.label_column) if args.label_column else table.categories
    result["visual"] = visual_quality(
        table.vectors, labels, k=args.k, holdout=args.holdout, seed=settings.train.seed
    )
    if catalogue is not None:
        attributes = {name: column(name) for name in args.attributes.split(",")}
        simulation = SimulationSettings(users=args.users, seed=settings.train.seed)
        result["cold_start"] = evaluate_cold_start(
            table.vectors, attributes, settings.train, simulation, k=args.k
        )
    return result
