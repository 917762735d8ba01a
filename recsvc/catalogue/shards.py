"""Which share of a catalogue one embedding shard takes: ``I/N``, item ``x`` goes to shard
``blake2b(x) mod N``.

The hash is of the item id's UTF-8 bytes, so the assignment is the same on every machine, in
every process and on every run (Python's ``hash`` of a string is salted per process), and an
item keeps its shard when the catalogue grows or is reordered. Shards are numbered from 0, as
Kubernetes numbers the pods of an Indexed Job (``JOB_COMPLETION_INDEX``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from recsvc.errors import ConfigError

# Set by Kubernetes in every pod of an Indexed Job (completionMode: Indexed): 0 .. completions-1.
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
MAX_SHARDS = 10_000


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"shard count {self.count} is not between 1 and {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard index {self.index} is not between 0 and {self.count - 1} "
                f"(shards are numbered from 0)"
            )

    def owns(self, item_id: str) -> bool:
        return shard_of(item_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(item_id: str, count: int) -> int:
    """The shard (0 .. count-1) that embeds ``item_id``."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N); a ConfigError saying what is wrong otherwise."""
    index, slash, count = text.strip().partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigError(f"shard {text!r} is not I/N, e.g. 0/4 (the first of four shards)")
    return Shard(int(index), int(count))


def resolve_shard(count: int, index: int | None, environ: Mapping[str, str]) -> Shard | None:
    """The shard the settings ask for, or None (the whole catalogue) when ``count`` is 1.

    ``index`` unset: read from ``JOB_COMPLETION_INDEX``, which an Indexed Job's pods carry.
    """
    if count <= 1:
        if index not in (None, 0):
            raise ConfigError(f"images.shard_index is {index} but images.shard_count is 1")
        return None
    if index is None:
        raw = environ.get(JOB_INDEX_ENV, "").strip()
        if not raw:
            raise ConfigError(
                f"images.shard_count is {count} but no shard index is set: set "
                f"RECSVC_IMAGES__SHARD_INDEX or run as a Kubernetes Indexed Job ({JOB_INDEX_ENV})"
            )
        if not raw.isdigit():
            raise ConfigError(f"{JOB_INDEX_ENV}={raw!r} is not a shard index")
        index = int(raw)
    return Shard(index, count)
