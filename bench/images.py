"""Image pipeline benchmark: images/s end to end against the bare forward pass.

- forward: the backbone alone on tensors decoded and preprocessed beforehand (batches of
  --batch), after a warm-up batch: the ceiling;
- pipeline: `recsvc embed`'s job (recsvc.catalogue.embedding.embed_catalogue) over the same
  files: read, sha256, decode, letterbox, normalise, forward, write the Parquet table; with 0,
  1 and 2 data-loader workers.

On the CPU by default; `--device cuda` (or auto on a GPU machine) uses float16 autocast and
channels-last. Images come from ../shared/data/fashion-products/images when present, else
synthetic product pictures are written first.

    .venv/bin/python bench/images.py [--images 1024] [--batch 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.catalogue.embedding import EmbedOptions, embed_catalogue  # noqa: E402
from recsvc.catalogue.reader import Catalogue, CatalogueItem  # noqa: E402
from recsvc.testing import make_product_images  # noqa: E402
from recsvc.vision.backbones import load_backbone  # noqa: E402
from recsvc.vision.decode import decode_image  # noqa: E402
from recsvc.vision.embedder import ImageEmbedder  # noqa: E402

FASHION = ROOT.parent / "shared" / "data" / "fashion-products" / "images"


def image_files(count: int, scratch: Path) -> list[Path]:
    if FASHION.is_dir():
        files = sorted(FASHION.glob("*.jpg"), key=lambda p: int(p.stem))[:count]
        if len(files) == count:
            return files
    products = make_product_images(scratch / "synthetic", per_kind=(count + 2) // 3)
    return [products.path(i) for i in products.ids[:count]]


def bare_forward(embedder: ImageEmbedder, tensors: list[torch.Tensor], batch: int) -> float:
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(tensors), batch):
        embedder.embed_tensors(torch.stack(tensors[start : start + batch]))
    return len(tensors) / (time.perf_counter() - started)


def pipeline(
    embedder: ImageEmbedder, files: list[Path], batch: int, workers: int, out: Path
) -> float:
    catalogue = Catalogue([CatalogueItem(p.stem, p) for p in files])
    options = EmbedOptions(batch_size=batch, loader_workers=workers, progress=False)
    report = embed_catalogue(catalogue, embedder, out, options)
    assert report.embedded == len(files), report.as_dict()
    out.unlink()
    return report.embedded / report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        files = image_files(args.images, Path(scratch))
        embedder = ImageEmbedder(load_backbone(), args.device)
        size = embedder.preprocess.size
        tensors = [embedder.preprocess(decode_image(p.read_bytes(), draft=size)) for p in files]
        embedder.embed_tensors(torch.stack(tensors[: args.batch]))  # warm-up
        # This machine's speed drifts over minutes: the runs are interleaved, medians kept.
        samples: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            samples.setdefault("forward only", []).append(
                bare_forward(embedder, tensors, args.batch)
            )
            for workers in args.workers:
                out = Path(scratch) / "table.parquet"
                samples.setdefault(f"pipeline, {workers} loader workers", []).append(
                    pipeline(embedder, files, args.batch, workers, out)
                )
        rows = {name: statistics.median(values) for name, values in samples.items()}
        forward = rows["forward only"]
    device = str(embedder.device)
    if embedder.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name()})"
    machine = platform.processor() or platform.machine()
    print(
        f"images: {len(files)}, batch {args.batch}, device {device}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, {machine}"
    )
    print("| run | images/s | share of forward |")
    print("|---|---:|---:|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.1f} | {rate / forward:.0%} |")
    print(
        json.dumps(
            {
                "device": device,
                "images": len(files),
                "median": {k: round(v, 1) for k, v in rows.items()},
                "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
