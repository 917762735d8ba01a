"""RecommenderHolder: the one reference to the model version that answers requests."""

from __future__ import annotations

from recsvc.core.recommender import Recommender
from recsvc.errors import Unavailable


class RecommenderHolder:
    """Holds the current Recommender. Swapping is one reference assignment (atomic in Python):
    a request that already took the old Recommender finishes on it, the next one sees the new."""

    def __init__(
        self,
        recommender: Recommender | None = None,
        waiting: str = "no model loaded yet; retry shortly",
    ) -> None:
        self._current = recommender
        # What calls are answered (UNAVAILABLE) until the first model is in.
        self.waiting = waiting

    def current(self) -> Recommender:
        recommender = self._current
        if recommender is None:
            raise Unavailable(self.waiting)
        return recommender

    def swap(self, recommender: Recommender) -> None:
        self._current = recommender

    @property
    def loaded(self) -> bool:
        return self._current is not None
