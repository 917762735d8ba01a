"""A model swap with freeze_heap collects only what is new, unless an old model outlived it."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from recsvc.core.holder import RecommenderHolder


class Version:
    """Stands in for a Recommender: the holder only keeps and hands out the reference."""

    def __init__(self, name: str) -> None:
        self.version = name
        self.parts = [[n] for n in range(100)]  # tracked containers, like a model's


def test_a_swap_frees_the_old_model_without_a_full_collection() -> None:
    holder = RecommenderHolder(freeze_heap=True)
    try:
        holder.swap(Version("v1"))  # type: ignore[arg-type]
        old = weakref.ref(holder.current())
        frozen = gc.get_freeze_count()
        holder.swap(Version("v2"))  # type: ignore[arg-type]
        holder.swap(Version("v3"))  # type: ignore[arg-type]
        assert old() is None  # freed by reference counting, though it had been frozen
        assert holder.full_collections == 0
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_an_old_model_kept_by_a_cycle_gets_a_full_collection() -> None:
    holder = RecommenderHolder(freeze_heap=True)
    try:
        first: Any = Version("v1")
        first.me = first  # a reference cycle: reference counting cannot free it
        holder.swap(first)
        old = weakref.ref(first)
        del first
        holder.swap(Version("v2"))  # type: ignore[arg-type]
        assert old() is not None  # frozen, in a cycle
        holder.swap(Version("v3"))  # type: ignore[arg-type]
        assert holder.full_collections == 1
        assert old() is None
    finally:
        gc.unfreeze()
