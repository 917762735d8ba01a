"""The image embedding table: item ids, image hashes, categories and unit vectors, in Parquet.

Written by `recsvc embed` (recsvc.catalogue.embedding), read by training. Kept free of torch
so that reading
it (training without a GPU, the train worker) does not pay for importing torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from recsvc.durable import replace_atomically
from recsvc.errors import DataError
from recsvc.index import normalise_rows

_PART_PREFIX = "recsvc.part."


@dataclass(frozen=True)
class EmbeddingTable:
    """Image embeddings of items: rows aligned with ``item_ids``; unit vectors.

    ``weights_sha256`` identifies the backbone's weights (empty in tables written before it was
    recorded). A shard's part (recsvc.catalogue.embedding_parts) also keeps each row's position
    in the catalogue (``catalogue_rows``) and what it says about itself (``part_info``); a whole
    table has neither.
    """

    backbone: str
    item_ids: list[str]
    sha256: list[str]
    categories: list[str]
    vectors: npt.NDArray[np.float32]
    weights_sha256: str = ""
    catalogue_rows: npt.NDArray[np.int64] | None = None
    part_info: Mapping[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def empty(cls, backbone: str, dim: int) -> EmbeddingTable:
        return cls(backbone, [], [], [], np.empty((0, dim), dtype=np.float32))

    @classmethod
    def load(cls, path: Path) -> EmbeddingTable:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not an embedding table: {exc}") from exc
        meta = table.schema.metadata or {}
        if b"recsvc.backbone" not in meta or "embedding" not in table.column_names:
            raise DataError(f"{path}: not an embedding table written by `recsvc embed`")
        dim = int(meta[b"recsvc.dim"])
        flat = table.column("embedding").combine_chunks().flatten().to_numpy()
        rows = None
        if "catalogue_row" in table.column_names:
            rows = np.asarray(table.column("catalogue_row").to_numpy(), dtype=np.int64)
        return cls(
            backbone=meta[b"recsvc.backbone"].decode(),
            item_ids=table.column("item_id").to_pylist(),
            sha256=table.column("sha256").to_pylist(),
            categories=table.column("category").to_pylist(),
            vectors=np.asarray(flat, dtype=np.float32).reshape(-1, dim),
            weights_sha256=meta.get(b"recsvc.weights_sha256", b"").decode(),
            catalogue_rows=rows,
            part_info=_part_info(meta),
        )

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old table or the new one, never a torn file."""
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(self.vectors.reshape(-1), pa.float32()), self.dim
        )
        columns = {
            "item_id": pa.array(self.item_ids, pa.string()),
            "sha256": pa.array(self.sha256, pa.string()),
            "category": pa.array(self.categories, pa.string()),
            "embedding": embedding,
        }
        if self.catalogue_rows is not None:
            columns["catalogue_row"] = pa.array(self.catalogue_rows, pa.int64())
        meta = {"recsvc.backbone": self.backbone, "recsvc.dim": str(self.dim)}
        if self.weights_sha256:
            meta["recsvc.weights_sha256"] = self.weights_sha256
        meta.update({_PART_PREFIX + key: value for key, value in self.part_info.items()})
        table = pa.table(columns).replace_schema_metadata(meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # from a killed writer
            if leftover.name != f".{path.name}.{os.getpid()}.tmp":
                leftover.unlink(missing_ok=True)
        replace_atomically(path, lambda temporary: pq.write_table(table, temporary))

    def without(self, item_ids: set[str]) -> EmbeddingTable:
        """This table without the rows of ``item_ids`` (e.g. items deleted while serving)."""
        keep = [row for row, item_id in enumerate(self.item_ids) if item_id not in item_ids]
        if len(keep) == len(self.item_ids):
            return self
        return replace(
            self,
            item_ids=[self.item_ids[r] for r in keep],
            sha256=[self.sha256[r] for r in keep],
            categories=[self.categories[r] for r in keep],
            vectors=self.vectors[keep],
            catalogue_rows=None if self.catalogue_rows is None else self.catalogue_rows[keep],
        )

    def with_items(self, items: list[tuple[str, str, npt.NDArray[np.float32]]]) -> EmbeddingTable:
        """This table plus ``(item_id, category, raw embedding)`` rows (replacing the same ids),
        e.g. items upserted while serving; their sha256 is left empty (no image file)."""
        if not items:
            return self
        new_ids = {item_id for item_id, _, _ in items}
        keep = [row for row, item_id in enumerate(self.item_ids) if item_id not in new_ids]
        vectors = normalise_rows(np.stack([vector for _, _, vector in items]))
        return replace(
            self,
            catalogue_rows=None,  # rows from outside the catalogue: no position in it
            item_ids=[self.item_ids[r] for r in keep] + [i for i, _, _ in items],
            sha256=[self.sha256[r] for r in keep] + [""] * len(items),
            categories=[self.categories[r] for r in keep] + [c for _, c, _ in items],
            vectors=np.vstack([self.vectors[keep], vectors]),
        )


def _part_info(meta: Mapping[bytes, bytes]) -> dict[str, str]:
    prefix = _PART_PREFIX.encode()
    return {
        key[len(prefix) :].decode(): value.decode()
        for key, value in meta.items()
        if key.startswith(prefix)
    }
