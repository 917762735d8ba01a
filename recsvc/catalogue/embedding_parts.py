"""Parts of a sharded embedding run, and their merge into the one table a single run writes.

``recsvc embed --shard I/N --out OUT`` writes ``OUT.part-I-of-N``: an embedding table of the
shard's items that also keeps each row's position in the catalogue and says which shard it is,
whether the shard went through all its items (``complete``; a checkpoint or an interrupted run
is not), and a digest of the whole catalogue's ids. ``recsvc embed-merge`` checks that every
part is there, complete and made from the same catalogue with the same backbone and weights,
then writes the rows in catalogue order: the same table, vector for vector, as one run.
Parts are kept after a merge: the next sharded run resumes from them (only new or changed
images are embedded again).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.catalogue.shards import Shard
from recsvc.errors import DataError

log = logging.getLogger(__name__)

# How often embed-merge --wait looks for parts that are not there or not complete yet.
POLL_SECONDS = 5.0

SHARD_KEY = "shard"
COMPLETE_KEY = "complete"
CATALOGUE_KEY = "catalogue_sha256"
CATALOGUE_ITEMS_KEY = "catalogue_items"


def part_path(out: Path, shard: Shard) -> Path:
    """Where shard ``shard`` of the table ``out`` is written: ``OUT.part-I-of-N``."""
    return out.with_name(f"{out.name}.part-{shard.index}-of-{shard.count}")


def table_path(out: Path, shard: Shard | None) -> Path:
    """The file a run writes: the part of its shard, or ``out`` itself."""
    return part_path(out, shard) if shard else out


def catalogue_digest(item_ids: Iterable[str]) -> str:
    """blake2b of the catalogue's ids in order (length-prefixed, so no id can fake a border)."""
    digest = hashlib.blake2b(digest_size=16)
    for item_id in item_ids:
        data = item_id.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()


def part_info(shard: Shard, catalogue_ids: list[str], complete: bool) -> dict[str, str]:
    """What a part records about itself (EmbeddingTable.part_info)."""
    return {
        SHARD_KEY: str(shard),
        COMPLETE_KEY: "true" if complete else "false",
        CATALOGUE_KEY: catalogue_digest(catalogue_ids),
        CATALOGUE_ITEMS_KEY: str(len(catalogue_ids)),
    }


@dataclass
class MergeReport:
    parts: int
    merged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    items: int = 0
    backbone: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "parts": self.parts,
            "merged": self.merged,
            "missing": self.missing,
            "incomplete": self.incomplete,
            "items": self.items,
            "backbone": self.backbone,
            "seconds": round(self.seconds, 2),
        }


def merge_parts(
    out: Path,
    count: int,
    allow_missing: bool = False,
    wait_seconds: float = 0.0,
    poll_seconds: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> MergeReport:
    """Merge the ``count`` parts of ``out`` into ``out`` (written atomically).

    Waits up to ``wait_seconds`` for every part to be there and complete. Then a part that is
    missing or incomplete is an error (nothing written), unless ``allow_missing``: the parts
    there are merged, complete or not, and the report names the others. A part that cannot be
    read, holds another shard, or was made from another catalogue, backbone or weights than
    the others is always an error. Every error names the parts at fault (DataError).
    """
    started = time.monotonic()
    shards = [Shard(index, count) for index in range(count)]
    deadline = started + max(0.0, wait_seconds)
    while True:
        states = {shard: _state(part_path(out, shard)) for shard in shards}
        waiting = [shard for shard, state in states.items() if state != "complete"]
        remaining = deadline - time.monotonic()
        if not waiting or remaining <= 0:
            break
        log.info("embed-merge: waiting for %d of %d parts", len(waiting), count)
        sleep(min(poll_seconds, remaining))

    report = MergeReport(parts=count)
    report.missing = [part_path(out, s).name for s in shards if states[s] == "missing"]
    report.incomplete = [part_path(out, s).name for s in shards if states[s] == "incomplete"]
    if (report.missing or report.incomplete) and not allow_missing:
        raise DataError(_not_ready(report, wait_seconds))
    present = [shard for shard in shards if states[shard] != "missing"]
    if not present:
        raise DataError(
            f"none of the {count} parts of {out} is there ({part_path(out, shards[0])}, ...)"
        )
    tables = {shard: _load_part(part_path(out, shard), shard) for shard in present}
    merged = _merge(tables, out)
    merged.save(out)
    report.merged = [part_path(out, shard).name for shard in present]
    report.items = len(merged.item_ids)
    report.backbone = merged.backbone
    report.seconds = time.monotonic() - started
    log.info("embed-merge: %s", report.as_dict())
    return report


def _state(path: Path) -> str:
    """ "missing", "incomplete", "complete", or "unreadable" (reported when loaded)."""
    if not path.exists():
        return "missing"
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError):
        return "unreadable"
    key = f"recsvc.part.{COMPLETE_KEY}".encode()
    return "complete" if meta.get(key) == b"true" else "incomplete"


def _not_ready(report: MergeReport, wait_seconds: float) -> str:
    problems = [f"{name}: missing" for name in report.missing]
    problems += [
        f"{name}: incomplete (a checkpoint of a shard still running or interrupted)"
        for name in report.incomplete
    ]
    waited = f" after waiting {wait_seconds:g} s" if wait_seconds > 0 else ""
    return (
        f"{len(problems)} of {report.parts} parts not ready{waited}: {'; '.join(problems)} "
        "(run those shards again, or merge without them with --allow-missing)"
    )


def _load_part(path: Path, shard: Shard) -> EmbeddingTable:
    try:
        table = EmbeddingTable.load(path)
    except DataError as exc:
        raise DataError(f"part {path.name} is corrupt: {exc}") from exc
    holds = table.part_info.get(SHARD_KEY)
    if holds is None or table.catalogue_rows is None:
        raise DataError(f"part {path.name} is not a shard part (written by `recsvc embed`)")
    if holds != str(shard):
        raise DataError(f"part {path.name} holds shard {holds}, not {shard}")
    return table


def _identity(table: EmbeddingTable) -> tuple[str, int, str, str]:
    return (table.backbone, table.dim, table.weights_sha256, table.part_info.get(CATALOGUE_KEY, ""))


def _describe(table: EmbeddingTable) -> str:
    backbone, dim, weights, catalogue = _identity(table)
    return (
        f"{backbone}, {dim} dims, weights {weights[:12] or 'unrecorded'}, catalogue "
        f"{catalogue[:12]} ({table.part_info.get(CATALOGUE_ITEMS_KEY, '?')} items)"
    )


def _merge(tables: dict[Shard, EmbeddingTable], out: Path) -> EmbeddingTable:
    """One table of every part's rows in catalogue order; parts must agree (DataError)."""
    (first_shard, first), *_ = tables.items()
    for shard, table in tables.items():
        if _identity(table) != _identity(first):
            raise DataError(
                f"parts do not agree: {part_path(out, shard).name} was made with "
                f"{_describe(table)}, {part_path(out, first_shard).name} with "
                f"{_describe(first)}; embed every shard again with the same catalogue, "
                "backbone and weights"
            )
    # (every part has its rows: _load_part checked)
    parts = [(t, t.catalogue_rows) for t in tables.values() if t.catalogue_rows is not None]
    rows = np.concatenate([part_rows for _, part_rows in parts])
    ordered = np.sort(rows)
    if np.any(ordered[1:] == ordered[:-1]):
        raise DataError(f"parts of {out} overlap (an item is in two parts); embed them again")
    # Each part's rows go straight to their place: the parts and the result in memory, no more.
    count = len(rows)
    item_ids, sha256, categories = [""] * count, [""] * count, [""] * count
    vectors = np.empty((count, first.dim), dtype=np.float32)
    for table, part_rows in parts:
        places = np.searchsorted(ordered, part_rows)
        vectors[places] = table.vectors
        for place, item_id, digest, category in zip(
            places.tolist(), table.item_ids, table.sha256, table.categories, strict=True
        ):
            item_ids[place], sha256[place], categories[place] = item_id, digest, category
    return EmbeddingTable(
        backbone=first.backbone,
        item_ids=item_ids,
        sha256=sha256,
        categories=categories,
        vectors=vectors,
        weights_sha256=first.weights_sha256,
    )
