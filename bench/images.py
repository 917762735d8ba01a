"""Image pipeline benchmark: images/s end to end against the bare forward pass.

- forward: the backbone alone on tensors decoded and preprocessed beforehand (batches of
  --batch), after a warm-up batch: the ceiling;
- pipeline: `recsvc embed`'s job (recsvc.catalogue.embedding.embed_catalogue) over the same
  files: read, sha256, decode, letterbox, normalise, forward, write the Parquet table; with 0,
  1 and 2 data-loader workers.

On the CPU by default; `--device cuda` (or auto on a GPU machine) uses float16 autocast and
channels-last. Images come from ../shared/data/fashion-products/images when present, else
synthetic product pictures are written first. `--backbones` compares several backbones (each at
its own input size), interleaved round by round; the table then also gives each one's share of
the first backbone's forward images/s and the bytes per item of its embedding table.

    .venv/bin/python bench/images.py [--images 1024] [--batch 32] [--device cpu]
    .venv/bin/python bench/images.py --images 256 --workers 2 --rounds 2 \
        --backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2
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
from recsvc.vision import DEFAULT_BACKBONE  # noqa: E402
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
) -> tuple[float, int]:
    """images/s of `recsvc embed`'s job, and the size of the table it wrote."""
    catalogue = Catalogue([CatalogueItem(p.stem, p) for p in files])
    options = EmbedOptions(batch_size=batch, loader_workers=workers, progress=False)
    report = embed_catalogue(catalogue, embedder, out, options)
    assert report.embedded == len(files), report.as_dict()
    size = out.stat().st_size
    out.unlink()
    return report.embedded / report.seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument(
        "--backbones", nargs="+", default=[DEFAULT_BACKBONE], help="backbones to compare"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        files = image_files(args.images, Path(scratch))
        embedders = {
            name: ImageEmbedder(load_backbone(name), args.device) for name in args.backbones
        }
        tensors = {}
        for name, embedder in embedders.items():
            size = embedder.preprocess.size
            tensors[name] = [
                embedder.preprocess(decode_image(p.read_bytes(), draft=size)) for p in files
            ]
            embedder.embed_tensors(torch.stack(tensors[name][: args.batch]))  # warm-up
        # This machine's speed drifts over minutes: the runs are interleaved, medians kept.
        samples: dict[str, list[float]] = {}
        table_bytes: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, embedder in embedders.items():
                prefix = f"{name}: " if len(embedders) > 1 else ""
                samples.setdefault(f"{prefix}forward only", []).append(
                    bare_forward(embedder, tensors[name], args.batch)
                )
                for workers in args.workers:
                    out = Path(scratch) / "table.parquet"
                    rate, table_bytes[name] = pipeline(embedder, files, args.batch, workers, out)
                    samples.setdefault(f"{prefix}pipeline, {workers} loader workers", []).append(
                        rate
                    )
        rows = {name: statistics.median(values) for name, values in samples.items()}
    first = next(iter(embedders.values()))
    device = str(first.device)
    if first.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name()})"
    machine = platform.processor() or platform.machine()
    print(
        f"images: {len(files)}, batch {args.batch}, device {device}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, {machine}"
    )
    print("| run | images/s | share of its forward | share of the first backbone's forward |")
    print("|---|---:|---:|---:|")
    base = rows[next(iter(rows))]
    for name, rate in rows.items():
        own = rows[name.split(": ")[0] + ": forward only" if ": " in name else "forward only"]
        print(f"| {name} | {rate:.1f} | {rate / own:.0%} | {rate / base:.0%} |")
    print("| backbone | input | dims | table bytes per item |")
    print("|---|---:|---:|---:|")
    for name, embedder in embedders.items():
        per_item = table_bytes.get(name, 0) / len(files)
        print(f"| {name} | {embedder.preprocess.size} | {embedder.dim} | {per_item:,.0f} |")
    print(
        json.dumps(
            {
                "device": device,
                "images": len(files),
                "median": {k: round(v, 1) for k, v in rows.items()},
                "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
                "table_bytes_per_item": {k: round(v / len(files)) for k, v in table_bytes.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
