"""RecommenderHolder: the one reference to the model version that answers requests."""

from __future__ import annotations

import gc
import weakref

from recsvc.core.recommender import Recommender
from recsvc.errors import Unavailable


class RecommenderHolder:
    """Holds the current Recommender. Swapping is one reference assignment (atomic in Python):
    a request that already took the old Recommender finishes on it, the next one sees the new."""

    def __init__(
        self,
        recommender: Recommender | None = None,
        waiting: str = "no model loaded yet; retry shortly",
        freeze_heap: bool = False,
    ) -> None:
        self._current = recommender
        # After each swap, take what is alive (the model above all) out of the cyclic GC.
        self.freeze_heap = freeze_heap
        # What calls are answered (UNAVAILABLE) until the first model is in.
        self.waiting = waiting
        # The Recommenders swapped out, weakly: one still alive at the next swap is kept by a
        # reference cycle in the frozen heap, which only a full collection frees.
        self._retired: list[weakref.ref[Recommender]] = []
        self.full_collections = 0

    def current(self) -> Recommender:
        recommender = self._current
        if recommender is None:
            raise Unavailable(self.waiting)
        return recommender

    def swap(self, recommender: Recommender) -> None:
        previous, self._current = self._current, recommender
        if self.freeze_heap:
            self._retired = [ref for ref in self._retired if ref() is not None]
            # Normally the old model dies by reference counting once its last call ends, and
            # the swap collects only what is not frozen (the new model: 0.5 ms on a 50k-item
            # model where the full collection took 376 ms on the event loop).
            full = bool(self._retired)
            if previous is not None:
                self._retired.append(weakref.ref(previous))
            del previous
            self.full_collections += full
            freeze_heap(full)

    @property
    def loaded(self) -> bool:
        return self._current is not None


def freeze_heap(full: bool = True) -> None:
    """Collect, then move every object alive into the permanent generation: a full collection
    no longer walks the model's millions of references (it held the event loop for hundreds of
    milliseconds when a large RecommendBatch set it off). ``full``: unfrozen first, so that
    the frozen objects' cycles, now garbage, are collected too (the whole heap is walked,
    every namespace's models and every module's objects included); else only what was
    created since the last freeze is collected."""
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
