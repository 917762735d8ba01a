"""ItemService: SearchByImage, RecommendFromExamples and UpsertItems, and keeping upserted
items across model swaps.

Upserted items are validated as a whole (a bad one rejects the call, naming it, before
anything changes), their images embedded in a worker thread, stored durably in the item log,
and only then added to the current model's side table (``recsvc.core.added``): a new item with
an image is recommendable when the call returns. Every model version loaded later gets the
logged items it does not know yet, and each replica polls the log for other replicas' writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsvc.core.added import NewItem
from recsvc.core.examples import ExamplesQuery
from recsvc.core.holder import RecommenderHolder
from recsvc.core.queries import ImageQuery, SimilarItems, check_batch_size, check_id
from recsvc.core.recommender import Recommender
from recsvc.core.state import ItemLog, StoredItem
from recsvc.durable import NotRegularFile, open_regular_file
from recsvc.errors import InvalidArgument, ResourceExhausted, StoreUnavailable, Unavailable
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
    available: bool | None = None  # None: unchanged (a new item is available)


@dataclass(frozen=True)
class CatalogueSync:
    """How replicas keep to one catalogue (recsvc.config.ServingSettings says why).

    poll_seconds : how often a replica looks for other replicas' item-log writes
    timeout_seconds : how long a write waits for every live replica to apply it; 0: no wait
    """

    poll_seconds: float = 0.1
    timeout_seconds: float = 5.0

    @property
    def ack_ttl_seconds(self) -> float:
        """A replica silent for this long is taken for gone (not waited for)."""
        return max(3.0, 20 * self.poll_seconds)


@dataclass(frozen=True)
class ImageLimits:
    """How much image work the service takes on (recsvc.config.ImageSettings says why)."""

    max_image_bytes: int
    path_root: Path | None
    default_backbone: str
    threads: int = 1
    max_pending_calls: int = 8
    read_timeout_seconds: float = 5.0


class ItemService:
    def __init__(
        self,
        holder: RecommenderHolder,
        item_log: ItemLog,
        encoder: ImageEncoder,
        limits: ImageLimits,
        sync: CatalogueSync | None = None,
        visual_weight: float = 0.5,
    ) -> None:
        self.holder = holder
        self.visual_weight = visual_weight  # the visual share of HYBRID RecommendFromExamples
        self.item_log = item_log
        self.encoder = encoder
        self.limits = limits
        self.sync = sync or CatalogueSync()
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.items: dict[str, StoredItem] = {}
        self._log_version: str | None = None
        self._acknowledged_at = 0.0
        self._log_down = False
        # A refresh that read the log before a local write must not replace the items after it.
        self._log_lock = asyncio.Lock()
        # Image work has threads of its own: a slow upload never waits behind the event loop's
        # default executor (where Recommend searches) nor holds it up, and calls beyond
        # max_pending_calls are refused instead of queued.
        self._executor = ThreadPoolExecutor(limits.threads, thread_name_prefix="images")
        # File reads apart from both: a read stuck on a slow mount holds only a reader thread.
        self._readers = ThreadPoolExecutor(limits.threads, thread_name_prefix="image-files")
        self._pending = 0
        # The other models serving this catalogue (experiment arms, recsvc.core.arms): they
        # get every item change the current model gets.
        self.followers: Callable[[], Iterable[Recommender]] = tuple

    # ------------------------------------------------------------------ image search

    async def search_by_image(self, image: bytes, query: ImageQuery) -> SimilarItems:
        recommender = self.holder.current()
        query.validate(recommender.limits)
        self._check_bytes(image, "image")
        visual = recommender.visual_part("image")
        recommender.filter_mask(query.filter)  # a bad filter fails before the image is embedded
        with self._admitted():
            embedding = await self._embed([image], visual.backbone, ["image"])
        return recommender.search_by_image(embedding[0], query)

    async def recommend_from_examples(self, query: ExamplesQuery) -> SimilarItems:
        """RecommendFromExamples (recsvc.core.examples): everything that can be refused is
        checked before the photos are embedded, in the image pool as SearchByImage's are;
        the search runs on the model the call started with."""
        recommender = self.holder.current()
        recommender.check_examples(query)
        images = query.images()
        for field_name, data in images:
            self._check_bytes(data, field_name)
        embedded: dict[str, npt.NDArray[np.float32]] = {}
        if images:
            visual = recommender.visual_part(images[0][0])
            fields = [field_name for field_name, _ in images]
            with self._admitted():
                found = await self._embed([data for _, data in images], visual.backbone, fields)
            embedded = dict(zip(fields, found, strict=True))
        return recommender.recommend_from_examples(query, embedded, self.visual_weight)

    # ------------------------------------------------------------------ upserts

    async def upsert(self, raw: list[RawItem]) -> tuple[int, int]:
        """Validate, embed, log durably, then add; returns (created, updated)."""
        recommender = self.holder.current()
        self._validate(raw, recommender)
        backbone = self._backbone(recommender)
        positions = [i for i, item in enumerate(raw) if item.image_bytes or item.image_path]
        embeddings: dict[int, npt.NDArray[np.float32]] = {}
        if positions:
            with self._admitted():
                images = [await self._image_of(raw[i], i) for i in positions]
                fields = [_image_field(raw[i], i) for i in positions]
                found = await self._embed(images, backbone, fields)
            embeddings = dict(zip(positions, found, strict=True))
        stored = [
            StoredItem(
                item.item_id,
                self._category(item),
                self._attributes(item, i),
                backbone,
                embeddings.get(i, self._previous_embedding(item.item_id, backbone)),
                available=self._availability(item),
            )
            for i, item in enumerate(raw)
        ]
        # Created or updated is decided before the write: while it is in flight, the log
        # refresh may already read these items back.
        current = self.holder.current()
        existing = sum(1 for item in stored if self._known(item.item_id, current))
        await self._store(stored, "items")
        return len(stored) - existing, existing

    async def delete(self, item_ids: list[str]) -> tuple[int, int]:
        """Delete items (a tombstone in the item log): never served again, and left out of the
        next training; returns (deleted, not_found). Deleting an unknown id is not an error."""
        recommender = self.holder.current()
        check_batch_size(len(item_ids), recommender.limits, "item_ids")
        for i, item_id in enumerate(item_ids):
            check_id(item_id, f"item_ids[{i}]")
        unique = list(dict.fromkeys(item_ids))
        known = [item_id for item_id in unique if self._known(item_id, recommender)]
        tombstones = [
            StoredItem(item_id, "", {}, "", None, available=False, deleted=True)
            for item_id in known
        ]
        if tombstones:
            await self._store(tombstones, "item_ids")
        return len(known), len(item_ids) - len(known)

    def prepare(
        self, recommender: Recommender, changed: list[StoredItem] | None = None
    ) -> Recommender:
        """Give a freshly loaded model the logged items it does not know, and what the log
        says about hiding, deleting and attributes of every item (before the swap).
        ``changed``: only these records are new to ``recommender`` (None: all may be)."""
        items = list(self.items.values()) if changed is None else changed
        recommender.add_items(self._usable(items, recommender), self.items, changed)
        return recommender

    async def refresh(self) -> bool:
        """Reload the item log when another replica wrote to it; True when it changed. An
        unavailable log is retried at the next poll (serving goes on without it). The version
        served by is acknowledged (writers wait for it), once a model answers."""
        try:
            async with self._log_lock:
                version = await self.item_log.version()
                changed = version != self._log_version
                if changed:
                    changes = await self.item_log.read_changes(self._log_version)
                    if changes.complete:
                        self.items = changes.items
                    else:
                        self.items.update(changes.items)
                    self._log_version = version = changes.version
                    if self.holder.loaded:
                        news = None if changes.complete else list(changes.items.values())
                        self.prepare(self.holder.current(), news)
                        for follower in self.followers():
                            self.prepare(follower, news)
            await self._acknowledge(version, changed)
        except StoreUnavailable as exc:
            if not self._log_down:  # once per outage: the log is polled several times a second
                log.warning("item log unavailable, upserted items not refreshed: %s", exc)
            self._log_down = True
            return False
        if self._log_down:
            log.info("item log available again")
            self._log_down = False
        return changed

    async def run(self, interval: float | None = None) -> None:
        """Poll the item log forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.sync.poll_seconds if interval is None else interval)
            await self.refresh()

    async def _acknowledge(self, version: str, changed: bool) -> None:
        """Tell writers this replica serves by ``version``: at once after a change, otherwise
        often enough that the acknowledgement stays live."""
        if not self.holder.loaded:
            return  # nothing served yet: a replica without a model is not waited for
        now = time.monotonic()
        if changed or now - self._acknowledged_at > self.sync.ack_ttl_seconds / 3:
            await self.item_log.acknowledge(self.replica, version, self.sync.ack_ttl_seconds)
            self._acknowledged_at = now

    async def _await_replicas(self, version: str, field_name: str) -> None:
        """Wait until every live replica serves by ``version`` (at most the sync timeout)."""
        if self.sync.timeout_seconds <= 0:
            return
        deadline = time.monotonic() + self.sync.timeout_seconds
        while True:
            try:
                behind = await self.item_log.lagging(version, self.replica)
            except StoreUnavailable as exc:
                raise Unavailable(
                    f"{field_name}: stored, but replicas could not be checked ({exc}); "
                    "they apply it at their next poll"
                ) from exc
            if not behind:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"{field_name}: stored, but {len(behind)} replica(s) did not apply it within "
                    f"{self.sync.timeout_seconds} s ({', '.join(sorted(behind)[:3])}); they "
                    "apply it at their next poll, and a retry of this call is safe"
                )
            await asyncio.sleep(min(self.sync.poll_seconds / 2, 0.05))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._readers.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ helpers

    async def _store(self, stored: list[StoredItem], field_name: str) -> None:
        """Write ``stored`` to the item log durably, serve by it, and wait until every other
        live replica does too."""
        async with self._log_lock:
            try:
                version = await self.item_log.put(stored)
            except StoreUnavailable as exc:
                raise Unavailable(
                    f"{field_name}: not stored, the item log is unavailable ({exc})"
                ) from exc
            for item in stored:
                self.items[item.item_id] = item
            # The model answering now may have been swapped in during the write.
            current = self.holder.current()
            current.add_items(self._usable(stored, current), self.items, changed=stored)
            for follower in self.followers():
                follower.add_items(self._usable(stored, follower), self.items, changed=stored)
        await self._await_replicas(version, field_name)

    def _known(self, item_id: str, recommender: Recommender) -> bool:
        logged = self.items.get(item_id)
        if logged is not None:
            return not logged.deleted
        return item_id in recommender.model.items or item_id in recommender.added.rows

    def _previous(self, item_id: str) -> StoredItem | None:
        previous = self.items.get(item_id)
        return previous if previous is not None and not previous.deleted else None

    def _category(self, item: RawItem) -> str:
        """The request's category; empty: unchanged."""
        previous = self._previous(item.item_id)
        return item.category or (previous.category if previous is not None else "")

    def _attributes(self, item: RawItem, position: int) -> dict[str, str]:
        """The item's attributes with the request's merged in (an empty value removes one), so
        that hiding an item or changing its price does not need every attribute resent."""
        previous = self._previous(item.item_id)
        merged = dict(previous.attributes) if previous is not None else {}
        merged.update(item.attributes)
        merged = {key: value for key, value in merged.items() if value != ""}
        if len(merged) > MAX_ATTRIBUTES:
            raise InvalidArgument(
                f"items[{position}].attributes",
                f"the item would have {len(merged)} attributes, at most {MAX_ATTRIBUTES}",
            )
        return merged

    def _availability(self, item: RawItem) -> bool:
        """The request's ``available``; unset: unchanged (a new or re-created item is)."""
        if item.available is not None:
            return item.available
        previous = self._previous(item.item_id)
        return previous.available if previous is not None else True

    def _usable(self, items: list[StoredItem], recommender: Recommender) -> list[NewItem]:
        visual = recommender.model.visual
        backbone = visual.backbone if visual is not None else None
        return [
            NewItem(
                item.item_id,
                item.category,
                item.attributes,
                item.embedding if item.backbone == backbone else None,
                deleted=item.deleted,
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

    def _validate(self, raw: list[RawItem], recommender: Recommender) -> None:
        """Check every item, naming the first bad field (image files are read later, off the
        event loop)."""
        check_batch_size(len(raw), recommender.limits, "items")
        seen: set[str] = set()
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
            elif item.image_path is not None:
                self._check_path_text(item.image_path, f"items[{i}].image_path")

    def _check_path_text(self, path_text: str, field_name: str) -> None:
        if self.limits.path_root is None:
            raise InvalidArgument(
                field_name,
                "reading images from server paths is disabled (set RECSVC_IMAGES__PATH_ROOT)",
            )
        if not path_text:
            raise InvalidArgument(field_name, "must not be empty")
        if "\x00" in path_text:
            raise InvalidArgument(field_name, "must not contain NUL characters")

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        """Count an image call in while it runs; beyond the limit, refuse it at once."""
        if self._pending >= self.limits.max_pending_calls:
            raise ResourceExhausted(
                f"images: {self._pending} image calls are being processed, the limit is "
                f"{self.limits.max_pending_calls}; retry later"
            )
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    async def _image_of(self, item: RawItem, position: int) -> bytes:
        """The item's image bytes: sent, or read from under the image root (off the event
        loop: a FIFO or a slow mount there must not stop the server)."""
        if item.image_path is None:
            return item.image_bytes or b""
        field_name = f"items[{position}].image_path"
        loop = asyncio.get_running_loop()
        read = loop.run_in_executor(self._readers, self._read_path, item.image_path, field_name)
        try:
            return await asyncio.wait_for(read, self.limits.read_timeout_seconds)
        except TimeoutError as exc:
            raise Unavailable(
                f"{field_name}: reading it took more than {self.limits.read_timeout_seconds} s"
            ) from exc

    def _read_path(self, path_text: str, field_name: str) -> bytes:
        """Read a regular file under the image root (in a reader thread)."""
        root = self.limits.path_root
        assert root is not None  # checked by _check_path_text
        try:
            path = (root / path_text).resolve()
            if not path.is_relative_to(root.resolve()):
                raise InvalidArgument(field_name, f"must be inside the image root {root}")
            with open_regular_file(path) as file:
                info = os.fstat(file.fileno())
                if info.st_size > self.limits.max_image_bytes:
                    raise InvalidArgument(
                        field_name,
                        f"{info.st_size} bytes is more than the limit of "
                        f"{self.limits.max_image_bytes}",
                    )
                data = file.read(self.limits.max_image_bytes + 1)
        except NotRegularFile:
            raise InvalidArgument(field_name, "must name a regular file") from None
        except OSError as exc:
            raise InvalidArgument(field_name, f"cannot read {path_text}: {exc.strerror}") from exc
        except ValueError as exc:  # e.g. a path the OS cannot represent
            raise InvalidArgument(field_name, "not a usable path") from exc
        if len(data) > self.limits.max_image_bytes:  # grew since fstat
            raise InvalidArgument(
                field_name, f"more than the limit of {self.limits.max_image_bytes} bytes"
            )
        return data

    async def _embed(
        self, images: list[bytes], backbone: str, fields: list[str]
    ) -> npt.NDArray[np.float32]:
        """Embed in slices of the encoder's batch size, each its own job in the image pool,
        so that other calls' images are taken up between them."""
        loop = asyncio.get_running_loop()
        step = self.encoder.batch_size
        parts = []
        for start in range(0, len(images), step):
            try:
                parts.append(
                    await loop.run_in_executor(
                        self._executor, self.encoder.embed, images[start : start + step], backbone
                    )
                )
            except BadImage as exc:
                raise InvalidArgument(
                    fields[start + exc.position], f"unusable image: {exc}"
                ) from exc
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _image_field(item: RawItem, position: int) -> str:
    name = "image_bytes" if item.image_bytes is not None else "image_path"
    return f"items[{position}].{name}"
