"""Embedding a catalogue's images, resumably: catalogue -> image embedding table (Parquet).

Data-loader workers read, hash, decode and preprocess images in parallel with the forward pass.
Every item's embedding is stored with the sha256 of its image bytes and the backbone's name;
a later run re-embeds only items whose image changed (or that failed before), so an interrupted
run resumes where it stopped. The table is checkpointed every few batches and always written
atomically (temporary file, fsync, rename), so an interruption never leaves a torn file.
Bad images (corrupt, truncated, bombs, missing files) are skipped and reported; a run where no
image could be read writes nothing, and :meth:`EmbedReport.problem` says when the share of
failures is over the limit the caller allows (``recsvc embed`` then exits non-zero).
With a :class:`~recsvc.catalogue.shards.Shard`, only that shard's items are embedded, into its
own part (recsvc.catalogue.embedding_parts), which ``recsvc embed-merge`` joins with the others.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from recsvc.catalogue.embedding_parts import part_info, table_path
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.catalogue.reader import Catalogue, CatalogueItem
from recsvc.catalogue.shards import Shard
from recsvc.config import ImageSettings
from recsvc.vision import ImageError, decode_image
from recsvc.vision.decode import DEFAULT_MAX_PIXELS
from recsvc.vision.embedder import ImageEmbedder, Preprocess

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FAILURES_KEPT = 20
FAILURES_NAMED = 3
DEFAULT_MAX_FAILURE_SHARE = 0.05


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 32
    loader_workers: int = 2
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    checkpoint_every: int = 20
    progress: bool = True


def embed_options(images: ImageSettings, progress: bool = True) -> EmbedOptions:
    """The embed job's options from the image settings."""
    return EmbedOptions(
        batch_size=images.batch_size,
        loader_workers=images.loader_workers,
        max_image_bytes=images.max_image_bytes,
        max_pixels=images.max_pixels,
        progress=progress,
    )


@dataclass
class EmbedReport:
    embedded: int = 0
    reused: int = 0
    failed: int = 0
    without_image: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def fail(self, item_id: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(f"{item_id}: {reason}")

    @property
    def succeeded(self) -> int:
        return self.embedded + self.reused

    def problem(self, max_failure_share: float) -> str | None:
        """Why this run should not count as a success, or None: no image could be read, or
        more than ``max_failure_share`` of the images tried failed. Names the first few."""
        tried = self.succeeded + self.failed
        if not tried and self.without_image:
            return (
                f"none of the {self.without_image} items has an image (no image column or pattern)"
            )
        if not self.failed:
            return None
        first = "; ".join(self.failures[:FAILURES_NAMED])
        if not self.succeeded:
            return f"no image could be read ({self.failed} tried, nothing written), e.g. {first}"
        if self.failed > max_failure_share * tried:
            return (
                f"{self.failed} of {tried} images failed ({self.failed / tried:.1%}, more than "
                f"the allowed {max_failure_share:.1%}); the {self.succeeded} others were "
                f"written; e.g. {first}"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return {
            "embedded": self.embedded,
            "reused": self.reused,
            "failed": self.failed,
            "without_image": self.without_image,
            "failures": self.failures,
            "seconds": round(self.seconds, 2),
            "images_per_second": round(rate, 1),
            "interrupted": self.interrupted,
        }


class _ImageDataset(Dataset[tuple[int, str, torch.Tensor | None, str]]):
    """Reads, hashes, decodes and preprocesses one item in a loader worker. Items whose hash
    matches ``known`` come back without a tensor (nothing to do)."""

    def __init__(
        self,
        items: list[CatalogueItem],
        known: dict[str, str],
        preprocess: Preprocess,
        options: EmbedOptions,
    ) -> None:
        self.items = items
        self.known = known
        self.preprocess = preprocess
        self.options = options

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, str, torch.Tensor | None, str]:
        item = self.items[position]
        try:
            data = _read_image(item.image, self.options.max_image_bytes)
            digest = hashlib.sha256(data).hexdigest()
            if self.known.get(item.item_id) == digest:
                return position, digest, None, ""
            size = self.preprocess.size
            image = decode_image(data, self.options.max_pixels, draft=size)
            return position, digest, self.preprocess(image), ""
        except ImageError as exc:
            return position, "", None, str(exc)


def _read_image(image: Path | bytes | None, limit: int) -> bytes:
    if isinstance(image, bytes):
        data = image
    elif image is None:
        raise ImageError("no image")
    else:
        try:
            if image.stat().st_size > limit:
                raise ImageError(f"{image}: larger than {limit} bytes")
            data = image.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {image}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ImageError(f"larger than {limit} bytes")
    return data


def _collate(
    batch: list[tuple[int, str, torch.Tensor | None, str]],
) -> list[tuple[int, str, torch.Tensor | None, str]]:
    return batch


def embed_catalogue(
    catalogue: Catalogue,
    embedder: ImageEmbedder,
    out: Path,
    options: EmbedOptions | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    shard: Shard | None = None,
) -> EmbedReport:
    """Embed every catalogue item's image into the table at ``out`` (created or resumed).

    ``shard``: embed only its items, into its part next to ``out`` (resumed from that part, or,
    when there is none yet, from ``out``: a merged table or a single run's).
    """
    options = options or EmbedOptions()
    started = time.perf_counter()
    report = EmbedReport()
    target = table_path(out, shard)
    previous = _previous(target if target.exists() or shard is None else out, embedder)
    known = dict(zip(previous.item_ids, previous.sha256, strict=True))
    previous_rows = {item_id: row for row, item_id in enumerate(previous.item_ids)}

    mine = [
        (row, item)
        for row, item in enumerate(catalogue.items)
        if shard is None or shard.owns(item.item_id)
    ]
    with_image = [item for _, item in mine if item.image is not None]
    rows = [row for row, item in mine if item.image is not None]
    report.without_image = len(mine) - len(with_image)
    done: dict[str, tuple[str, npt.NDArray[np.float32]]] = {}
    dataset = _ImageDataset(with_image, known, embedder.preprocess, options)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.loader_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )

    catalogue_ids = [item.item_id for item in catalogue.items] if shard else []

    def checkpoint(complete: bool = False) -> None:
        # Nothing read yet (e.g. every path wrong): leave the file as it was. A shard with no
        # image to embed still writes its (empty) part, so that the merge finds every part.
        if done or (complete and shard is not None and not with_image):
            table = _merge(previous, previous_rows, with_image, rows, done, embedder)
            if shard is None:
                table = replace(table, catalogue_rows=None)
            else:
                table = replace(table, part_info=part_info(shard, catalogue_ids, complete))
            table.save(target)

    bar = tqdm(
        total=len(with_image), desc="embed", unit="img", disable=not options.progress, leave=False
    )
    finished = False
    try:
        for batch_number, batch in enumerate(loader, start=1):
            ready = [
                (pos, digest, tensor) for pos, digest, tensor, _ in batch if tensor is not None
            ]
            for position, digest, tensor, problem in batch:
                item_id = with_image[position].item_id
                if problem:
                    report.fail(item_id, problem)
                elif tensor is None:
                    report.reused += 1
                    done[item_id] = (digest, previous.vectors[previous_rows[item_id]])
            if ready:
                vectors = embedder.embed_tensors(
                    torch.stack([t for _, _, t in ready]), pad_to=options.batch_size
                )
                for (position, digest, _), vector in zip(ready, vectors, strict=True):
                    done[with_image[position].item_id] = (digest, vector)
                report.embedded += len(ready)
            bar.update(len(batch))
            if batch_number % options.checkpoint_every == 0:
                checkpoint()
            if should_stop():
                report.interrupted = True
                break
        else:
            finished = True
    finally:
        bar.close()
        checkpoint(complete=finished)  # also on Ctrl-C: what was done is kept for the next run
        report.seconds = time.perf_counter() - started
    log.info("embed: %s", {k: v for k, v in report.as_dict().items() if k != "failures"})
    return report


def _previous(out: Path, embedder: ImageEmbedder) -> EmbeddingTable:
    if not out.exists():
        return EmbeddingTable.empty(embedder.name, embedder.dim)
    previous = EmbeddingTable.load(out)
    if previous.backbone != embedder.name or previous.dim != embedder.dim:
        log.warning(
            "%s was made with %s (%d dims); re-embedding everything with %s",
            out,
            previous.backbone,
            previous.dim,
            embedder.name,
        )
        return EmbeddingTable.empty(embedder.name, embedder.dim)
    # A table from before weights were recorded has none: its vectors are kept (as before).
    if previous.weights_sha256 and previous.weights_sha256 != embedder.weights_sha256:
        log.warning(
            "%s was made with other %s weights; re-embedding everything", out, embedder.name
        )
        return EmbeddingTable.empty(embedder.name, embedder.dim)
    return previous


def _merge(
    previous: EmbeddingTable,
    previous_rows: dict[str, int],
    items: list[CatalogueItem],
    rows: list[int],
    done: dict[str, tuple[str, npt.NDArray[np.float32]]],
    embedder: ImageEmbedder,
) -> EmbeddingTable:
    """The table to write: this run's results, plus earlier results for items not reached yet
    (in catalogue order, ``rows`` being each item's row in it; items no longer in the
    catalogue are dropped)."""
    kept_rows: list[int] = []
    ids: list[str] = []
    hashes: list[str] = []
    categories: list[str] = []
    vectors: list[npt.NDArray[np.float32]] = []
    for item, row in zip(items, rows, strict=True):
        if item.item_id in done:
            digest, vector = done[item.item_id]
        elif (earlier := previous_rows.get(item.item_id)) is not None:
            digest, vector = previous.sha256[earlier], previous.vectors[earlier]
        else:
            continue
        kept_rows.append(row)
        ids.append(item.item_id)
        hashes.append(digest)
        categories.append(item.category)
        vectors.append(vector)
    matrix = np.stack(vectors) if vectors else np.empty((0, embedder.dim), np.float32)
    return EmbeddingTable(
        embedder.name,
        ids,
        hashes,
        categories,
        matrix.astype(np.float32),
        weights_sha256=embedder.weights_sha256,
        catalogue_rows=np.array(kept_rows, dtype=np.int64),
    )
