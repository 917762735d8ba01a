"""Which stored events training may use: ForgetUser tombstones, dislikes and impressions.

The interaction store keeps every event with its type. Before training (and, for tombstones,
at compaction) three rules apply, column-wise on the Parquet table:

- **Tombstones** (``event_type == "forget"``, written by ForgetUser through the event log): a
  user's events stamped at or before the tombstone's time plus ``TOMBSTONE_SLACK_MS`` are
  forgotten. The slack is the future RecordInteractions accepts a timestamp in, so that every
  event logged before the ForgetUser is covered whatever its stamp; events recorded for the
  same user id within that window after it are forgotten too (the safe side).
- **Dislikes** count with zero confidence: the (user, item) pair leaves the positives, whatever
  else the user did with the item, and is kept aside (:attr:`TrainingEvents.dislikes`) so that
  the model never recommends the item to the user.
- **Impressions** (shown, not clicked) are never positives: stored for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.core.interactions import FUTURE_SLACK_MS
from recsvc.core.state import NOT_POSITIVE, EventType

TOMBSTONE_SLACK_MS = FUTURE_SLACK_MS
FORGET = EventType.FORGET.value
DISLIKE = EventType.DISLIKE.value


@dataclass(frozen=True)
class TrainingEvents:
    """What training uses of a table of stored events.

    positives : the rows that count as positive interactions (same columns as the input)
    dislikes : user id -> the item ids the user disliked (pairs not forgotten)
    """

    positives: pa.Table
    dislikes: dict[str, tuple[str, ...]]


def tombstones(table: pa.Table) -> pa.Table:
    """One row per forgotten user: ``user_id`` and ``forgotten_to_ms``, the latest stamp of
    the user's events that their latest tombstone covers."""
    marks = table.filter(pc.equal(table.column("event_type"), FORGET))
    latest = marks.group_by("user_id").aggregate([("timestamp_ms", "max")])
    return pa.table(
        {
            "user_id": latest.column("user_id"),
            "forgotten_to_ms": pc.add(latest.column("timestamp_ms_max"), TOMBSTONE_SLACK_MS),
        }
    )


def forgotten_rows(table: pa.Table, marks: pa.Table | None = None) -> npt.NDArray[np.bool_]:
    """Rows of ``table`` that a tombstone covers (the tombstones themselves excluded);
    ``marks``: :func:`tombstones`, of this table when not given."""
    marks = tombstones(table) if marks is None else marks
    if marks.num_rows == 0 or table.num_rows == 0:
        return np.zeros(table.num_rows, dtype=bool)
    at = pc.index_in(table.column("user_id"), value_set=marks.column("user_id"))
    cutoff = pc.take(marks.column("forgotten_to_ms"), at)
    covered = pc.fill_null(pc.less_equal(table.column("timestamp_ms"), cutoff), False)
    is_mark = pc.equal(table.column("event_type"), FORGET)
    return np.asarray(
        pc.and_(covered, pc.invert(is_mark)).to_numpy(zero_copy_only=False), dtype=bool
    )


def training_events(table: pa.Table) -> TrainingEvents:
    """The positives and dislikes of ``table`` (columns: user_id, item_id, event_type,
    timestamp_ms, ...), after the rules in the module's docstring."""
    kinds = table.column("event_type")
    forgotten = forgotten_rows(table)
    not_positive = pc.is_in(kinds, value_set=pa.array(sorted(NOT_POSITIVE)))
    keep = ~forgotten & ~np.asarray(not_positive.to_numpy(zero_copy_only=False), dtype=bool)
    is_dislike = pc.equal(kinds, DISLIKE).to_numpy(zero_copy_only=False)
    disliked_rows = np.asarray(is_dislike, dtype=bool) & ~forgotten
    dislikes: dict[str, tuple[str, ...]] = {}
    if disliked_rows.any():
        users = table.column("user_id").filter(pa.array(disliked_rows)).to_pylist()
        items = table.column("item_id").filter(pa.array(disliked_rows)).to_pylist()
        pairs: dict[str, dict[str, None]] = {}
        for user_id, item_id in zip(users, items, strict=True):
            pairs.setdefault(user_id, {})[item_id] = None
        dislikes = {user_id: tuple(found) for user_id, found in pairs.items()}
        # Zero confidence: every event of a disliked pair leaves the positives.
        keys = pc.binary_join_element_wise(table.column("user_id"), table.column("item_id"), "\0")
        disliked_keys = keys.filter(pa.array(disliked_rows))
        in_pair = pc.is_in(keys, value_set=disliked_keys).to_numpy(zero_copy_only=False)
        keep &= ~np.asarray(in_pair, dtype=bool)
    return TrainingEvents(table.filter(pa.array(keep)), dislikes)
