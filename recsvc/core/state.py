"""What the domain needs from storage, as interfaces; implementations live in recsvc.store.

The domain never imports Redis: the service gets a UserStateStore and an EventLog in its
constructor (Redis-backed in production, in-process in embedded mode and where tests want it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"
    RATING = "rating"
    # Negative feedback: the item is never recommended to the user again, and the pair counts
    # with zero confidence in fold-in and training (dropped from the positives).
    DISLIKE = "dislike"
    # Shown but not clicked: logged and stored for evaluation, never a positive.
    IMPRESSION = "impression"
    # A ForgetUser tombstone (item_id ""): never accepted from callers, written by the
    # service so that ingest and training forget the user's earlier events.
    FORGET = "forget"


# Event types that count as positives (history, fold-in, training, "seen").
NOT_POSITIVE = frozenset({EventType.DISLIKE, EventType.IMPRESSION, EventType.FORGET})
# Event types a caller may record (RecordInteractions, `recsvc call record`).
RECORDABLE = tuple(kind for kind in EventType if kind is not EventType.FORGET)

# A user's history keeps dislikes beside the positive items, under this prefix: ids never hold
# NUL (recsvc.core.queries.check_id), so no item id can collide with it.
DISLIKE_FIELD_PREFIX = "\x00d:"
# The history field that marks a forgotten user (its value: when, in Unix ms).
FORGOTTEN_FIELD = "\x00forgotten"


def history_field(event: Interaction) -> str:
    """The history field an event adds to: its item, or the item's dislike marker."""
    if event.event_type is EventType.DISLIKE:
        return DISLIKE_FIELD_PREFIX + event.item_id
    return event.item_id


def split_history(fields: Iterable[tuple[str, float]]) -> tuple[dict[str, float], frozenset[str]]:
    """A stored history's fields as (positive items -> weight, disliked items); a disliked
    item is left out of the positives (zero confidence)."""
    items: dict[str, float] = {}
    dislikes: set[str] = set()
    for name, weight in fields:
        if name.startswith(DISLIKE_FIELD_PREFIX):
            dislikes.add(name[len(DISLIKE_FIELD_PREFIX) :])
        elif name != FORGOTTEN_FIELD:
            items[name] = weight
    for item in dislikes:
        items.pop(item, None)
    return items, frozenset(dislikes)


class Interaction(NamedTuple):
    """One recorded interaction, validated; ``weight`` is resolved (never None). A named
    tuple, not a dataclass: RecordInteractions makes one per event, and a frozen dataclass
    costs five times as much to construct (~1 us against ~0.2 us)."""

    user_id: str
    item_id: str
    event_type: EventType
    weight: float
    timestamp_ms: int
    event_id: str
    # Attribution (issue 20): the response that led to the event and the item's place in it;
    # an impression the server logs also names the experiment and arm. Empty/None: not set.
    recommendation_id: str = ""
    position: int | None = None
    experiment: str = ""
    arm: str = ""


@dataclass(frozen=True)
class AppendResult:
    """Which of the appended interactions were new (the rest had a known event_id).

    ``pending``: those of the known ones that an earlier call logged but whose users' state
    was never confirmed as updated (that call timed out or was cancelled after the append):
    the caller applies them as it applies ``accepted``, then confirms both. They count as
    duplicates (the log holds them once)."""

    accepted: list[Interaction]
    duplicates: int
    pending: list[Interaction] = field(default_factory=list)


@dataclass(frozen=True)
class UserState:
    """What the store knows about a user beyond the model.

    history : item_id -> summed weight of interactions recorded since serving started
        (bounded, with a TTL); vector : the user's folded-in vector for the current model
        version, or None when it must be (re)computed; history_seq : the history's sequence
        number (see :class:`UserHistory`); dislikes : items the user disliked since (never
        recommended to them); forgotten : ForgetUser was called for the user, so the loaded
        model's factors and training history of the user must not be used.
    """

    history: dict[str, float] = field(default_factory=dict)
    vector: npt.NDArray[np.float32] | None = None
    history_seq: int = 0
    dislikes: frozenset[str] = frozenset()
    forgotten: bool = False


class UserHistory(NamedTuple):
    """A user's history as an update left it. ``seq`` grows by one with every update: a
    vector folded in from this history is stored only while the history is still at ``seq``,
    so that of two concurrent updates of one user, the later history's vector wins."""

    items: dict[str, float]
    seq: int
    dislikes: frozenset[str] = frozenset()
    forgotten: bool = False


class UserStateStore(Protocol):
    """Per-user vectors (keyed by model version) and bounded interaction histories.

    Every method raises ``recsvc.errors.StoreUnavailable`` when the backend fails; callers
    bound each call with ``asyncio.timeout`` (the request's deadline) and degrade instead of
    failing.
    """

    async def get_state(self, user_id: str, model_version: str) -> UserState: ...

    async def get_states(self, user_ids: list[str], model_version: str) -> list[UserState]:
        """:meth:`get_state` of many users, in order, in one round trip where it can."""
        ...

    async def put_vectors(
        self,
        model_version: str,
        vectors: Mapping[str, npt.NDArray[np.float32]],
        history_seqs: Mapping[str, int] | None = None,
    ) -> None:
        """Store each user's vector for this model version, in one round trip where it can.
        A user in ``history_seqs`` gets it only while their history is still at that
        sequence number (a vector folded in from an older history is dropped)."""
        ...

    async def add_histories(
        self, interactions_by_user: Mapping[str, list[Interaction]]
    ) -> dict[str, UserHistory]:
        """Add each user's interactions to their history, in one round trip where it can;
        return the updated histories."""
        ...

    async def forget(self, user_id: str) -> bool:
        """Delete the user's vector and history and mark the user forgotten (a tombstone with
        its own TTL, kept by later history updates), so that reads report ``forgotten``.
        Returns whether a vector or history was held."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class EventLog(Protocol):
    """The durable log of recorded interactions: the source of truth for retraining."""

    async def append(self, interactions: list[Interaction]) -> AppendResult:
        """Durably append the interactions whose event_id is new; when this returns, they
        survive a crash. Raises StoreUnavailable when that cannot be guaranteed (its subclass
        OutcomeUnknown when the append may have happened all the same)."""
        ...

    async def confirm(self, events: list[Interaction]) -> None:
        """Mark these logged events as applied to the users' state, so that a retry of them
        is a plain duplicate instead of coming back as ``pending``. Raises StoreUnavailable."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class StoredItem:
    """An upserted item as the item log keeps it: the raw image embedding and the backbone
    that made it (a later model with another backbone cannot use it)."""

    item_id: str
    category: str
    attributes: dict[str, str]
    backbone: str
    embedding: npt.NDArray[np.float32] | None
    available: bool = True  # False: hidden from every result, kept for training
    deleted: bool = False  # a tombstone: never served, dropped from the next training

    @property
    def servable(self) -> bool:
        return self.available and not self.deleted


class ItemChanges(NamedTuple):
    items: dict[str, StoredItem]
    version: str
    complete: bool


class ItemLog(Protocol):
    """Durable record of upserted items, shared by every serving process.

    Replicas acknowledge the version they serve by; a writer waits until every live replica
    has caught up with its write, so that an item hidden or deleted is out of every replica's
    answers when the call returns."""

    async def put(self, items: list[StoredItem]) -> str:
        """Store ``items`` durably (replacing earlier records of the same ids); return the
        log's version that includes them."""

    async def acknowledge(self, replica: str, version: str, ttl_seconds: float) -> None:
        """Record that ``replica`` serves by ``version`` (live for ``ttl_seconds``)."""

    async def lagging(self, version: str, replica: str) -> list[str]:
        """The live replicas other than ``replica`` that have not acknowledged ``version``."""

    async def read_all(self) -> dict[str, StoredItem]:
        """Every stored item, by id."""

    async def read_changes(self, since: str | None) -> ItemChanges:
        """The items stored after version ``since`` (None: every item), and the version that
        brings the reader to; ``complete`` when the answer is every item (not only changes)."""

    async def version(self) -> str:
        """A token that changes whenever an item is stored (to notice other replicas' writes)."""

    async def close(self) -> None: ...
