"""ItemService: SearchByImage and UpsertItems, and keeping upserted items across model swaps.

Upserted items are validated as a whole (a bad one rejects the call, naming it, before
anything changes), their images embedded in a worker thread, stored durably in the item log,
and only then added to the current model's side table (``recsvc.core.added``): a new item with
an image is recommendable when the call returns. Every model version loaded later gets the
logged items it does not know yet, and each replica polls the log for other replicas' writes.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsvc.core.added import NewItem
from recsvc.core.holder import RecommenderHolder
from recsvc.core.queries import ImageQuery, SimilarItems, check_batch_size, check_id
from recsvc.core.recommender import Recommender
from recsvc.core.state import ItemLog, StoredItem
from recsvc.errors import InvalidArgument, StoreUnavailable, Unavailable
from recsvc.vision.encoder import BadImage, ImageEncoder

log = logging.getLogger(__name__)

MAX_CATEGORY_BYTES = 256
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_BYTES = 1024


@dataclass(frozen=True)
class RawItem:
    """UpsertItems' input as the caller sent it (validated by the service)."""

    item_id: str
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    image_bytes: bytes | None = None
    image_path: str | None = None


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int
    path_root: Path | None
    default_backbone: str


class ItemService:
    def __init__(
        self,
        holder: RecommenderHolder,
        item_log: ItemLog,
        encoder: ImageEncoder,
        limits: ImageLimits,
    ) -> None:
        self.holder = holder
        self.item_log = item_log
        self.encoder = encoder
        self.limits = limits
        self.items: dict[str, StoredItem] = {}
        self._log_version: str | None = None
        # One thread: image work never competes with itself, and never blocks the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="images")

    # ------------------------------------------------------------------ image search

    async def search_by_image(self, image: bytes, query: ImageQuery) -> SimilarItems:
        recommender = self.holder.current()
        query.validate(recommender.limits)
        self._check_bytes(image, "image")
        visual = recommender.visual_part("image")
        embedding = await self._embed([image], visual.backbone, ["image"])
        return recommender.search_by_image(embedding[0], query)

    # ------------------------------------------------------------------ upserts

    async def upsert(self, raw: list[RawItem]) -> tuple[int, int]:
        """Validate, embed, log durably, then add; returns (created, updated)."""
        recommender = self.holder.current()
        images = self._validate(raw, recommender)
        backbone = self._backbone(recommender)
        positions = [i for i, data in enumerate(images) if data is not None]
        embeddings: dict[int, npt.NDArray[np.float32]] = {}
        if positions:
            fields = [_image_field(raw[i], i) for i in positions]
            found = await self._embed([images[i] or b"" for i in positions], backbone, fields)
            embeddings = dict(zip(positions, found, strict=True))
        stored = [
            StoredItem(
                item.item_id,
                item.category,
                dict(item.attributes),
                backbone,
                embeddings.get(i, self._previous_embedding(item.item_id, backbone)),
            )
            for i, item in enumerate(raw)
        ]
        # Created or updated is decided before the write: while it is in flight, the log
        # refresh may already read these items back.
        current = self.holder.current()
        existing = sum(
            1
            for item in stored
            if item.item_id in self.items
            or item.item_id in current.model.items
            or item.item_id in current.added.rows
        )
        try:
            await self.item_log.put(stored)
        except StoreUnavailable as exc:
            raise Unavailable(f"items: not stored, the item log is unavailable ({exc})") from exc
        for item in stored:
            self.items[item.item_id] = item
        # The model answering now may have been swapped in during the write.
        current = self.holder.current()
        current.add_items(self._usable(stored, current))
        return len(stored) - existing, existing

    def prepare(self, recommender: Recommender) -> Recommender:
        """Give a freshly loaded model the logged items it does not know (before the swap)."""
        recommender.add_items(self._usable(list(self.items.values()), recommender))
        return recommender

    async def refresh(self) -> bool:
        """Reload the item log when another replica wrote to it; True when it changed. An
        unavailable log is retried at the next poll (serving goes on without it)."""
        try:
            version = await self.item_log.version()
            if version == self._log_version:
                return False
            items = await self.item_log.read_all()
        except StoreUnavailable as exc:
            log.warning("item log unavailable, upserted items not refreshed: %s", exc)
            return False
        self.items, self._log_version = items, version
        if self.holder.loaded:
            self.prepare(self.holder.current())
        return True

    async def run(self, interval: float) -> None:
        """Poll the item log forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ helpers

    def _usable(self, items: list[StoredItem], recommender: Recommender) -> list[NewItem]:
        visual = recommender.model.visual
        backbone = visual.backbone if visual is not None else None
        return [
            NewItem(
                item.item_id,
                item.category,
                item.attributes,
                item.embedding if item.backbone == backbone else None,
            )
            for item in items
            if item.item_id not in recommender.model.items
        ]

    def _previous_embedding(self, item_id: str, backbone: str) -> npt.NDArray[np.float32] | None:
        """An update without an image keeps the item's earlier image."""
        previous = self.items.get(item_id)
        if previous is not None and previous.backbone == backbone:
            return previous.embedding
        return None

    def _backbone(self, recommender: Recommender) -> str:
        visual = recommender.model.visual
        return visual.backbone if visual is not None else self.limits.default_backbone

    def _check_bytes(self, data: bytes, field_name: str) -> None:
        if not data:
            raise InvalidArgument(field_name, "must not be empty")
        if len(data) > self.limits.max_image_bytes:
            raise InvalidArgument(
                field_name,
                f"{len(data)} bytes is more than the limit of {self.limits.max_image_bytes}",
            )

    def _validate(self, raw: list[RawItem], recommender: Recommender) -> list[bytes | None]:
        """Check every item (naming the first bad field) and read image files; returns each
        item's image bytes (None: no image)."""
        check_batch_size(len(raw), recommender.limits, "items")
        seen: set[str] = set()
        images: list[bytes | None] = []
        for i, item in enumerate(raw):
            check_id(item.item_id, f"items[{i}].item_id")
            if item.item_id in seen:
                raise InvalidArgument(f"items[{i}].item_id", "appears twice in this request")
            seen.add(item.item_id)
            if len(item.category.encode()) > MAX_CATEGORY_BYTES:
                raise InvalidArgument(f"items[{i}].category", f"at most {MAX_CATEGORY_BYTES} bytes")
            if len(item.attributes) > MAX_ATTRIBUTES:
                raise InvalidArgument(f"items[{i}].attributes", f"at most {MAX_ATTRIBUTES} entries")
            for key, value in item.attributes.items():
                if len(key.encode()) + len(value.encode()) > MAX_ATTRIBUTE_BYTES:
                    raise InvalidArgument(
                        f"items[{i}].attributes[{key[:40]!r}]",
                        f"key and value together at most {MAX_ATTRIBUTE_BYTES} bytes",
                    )
            if item.image_bytes is not None:
                self._check_bytes(item.image_bytes, f"items[{i}].image_bytes")
                images.append(item.image_bytes)
            elif item.image_path is not None:
                images.append(self._read_path(item.image_path, f"items[{i}].image_path"))
            else:
                images.append(None)
        return images

    def _read_path(self, path_text: str, field_name: str) -> bytes:
        root = self.limits.path_root
        if root is None:
            raise InvalidArgument(
                field_name,
                "reading images from server paths is disabled (set RECSVC_IMAGES__PATH_ROOT)",
            )
        path = (root / path_text).resolve()
        if not path.is_relative_to(root.resolve()):
            raise InvalidArgument(field_name, f"must be inside the image root {root}")
        try:
            size = path.stat().st_size
            if size > self.limits.max_image_bytes:
                raise InvalidArgument(
                    field_name,
                    f"{size} bytes is more than the limit of {self.limits.max_image_bytes}",
                )
            return path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(field_name, f"cannot read {path_text}: {exc.strerror}") from exc

    async def _embed(
        self, images: list[bytes], backbone: str, fields: list[str]
    ) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.encoder.embed, images, backbone)
        except BadImage as exc:
            raise InvalidArgument(fields[exc.position], f"unusable image: {exc}") from exc


def _image_field(item: RawItem, position: int) -> str:
    name = "image_bytes" if item.image_bytes is not None else "image_path"
    return f"items[{position}].{name}"
