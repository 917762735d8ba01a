"""RecommenderHolder: the one reference to the model version that answers requests."""

from __future__ import annotations

import gc

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

    def current(self) -> Recommender:
        recommender = self._current
        if recommender is None:
            raise Unavailable(self.waiting)
        return recommender

    def swap(self, recommender: Recommender) -> None:
        self._current = recommender
        if self.freeze_heap:
            freeze_heap()

    @property
    def loaded(self) -> bool:
        return self._current is not None


def freeze_heap() -> None:
    """Collect, then move every object alive into the permanent generation: a full collection
    no longer walks the model's millions of references (it held the event loop for hundreds of
    milliseconds when a large RecommendBatch set it off). Unfrozen first, so that the previous
    model's cycles, now garbage, are collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
