"""not_in: the exclusion mask of every candidate search, against numpy's isin."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from recsvc.core.candidates import not_in

rows = st.lists(st.integers(0, 300), max_size=400).map(lambda v: np.asarray(v, dtype=np.int64))


@given(labels=rows, blocked=rows)
def test_not_in_matches_numpy_isin_on_small_and_large_inputs(
    labels: np.ndarray, blocked: np.ndarray
) -> None:
    assert np.array_equal(not_in(labels, blocked), ~np.isin(labels, blocked))
