"""Domain requests and results, and the validation of requests against the serving limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from recsvc.core.filters import parse_filter
from recsvc.errors import InvalidArgument

if TYPE_CHECKING:
    from recsvc.config import ServingSettings

MAX_ID_BYTES = 256
# RecommendRequest.context: entries, and bytes of each key and value (the proto's limit).
MAX_CONTEXT_ENTRIES = 64
# RecommendRequest.interests: the most interest vectors a user is split into (each one is a
# search; recsvc.core.interests). RECSVC_SERVING__INTERESTS has the same bound.
MAX_INTERESTS = 8


@dataclass(frozen=True)
class Limits:
    """What a single request may ask for."""

    max_k: int
    max_batch: int
    max_id_list: int

    @classmethod
    def from_settings(cls, serving: ServingSettings) -> Limits:
        return cls(serving.max_k, serving.max_batch, serving.max_id_list)


class Strategy(StrEnum):
    PERSONALISED = "personalised"
    SESSION = "session"
    POPULAR = "popular"


class SimilarityMode(StrEnum):
    COLLABORATIVE = "collaborative"
    VISUAL = "visual"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class CategoryFilter:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    k: int
    exclude_seen: bool = True
    exclude_item_ids: tuple[str, ...] = ()
    recent_item_ids: tuple[str, ...] = ()
    categories: CategoryFilter = CategoryFilter()
    diversity: float = 0.0
    filter: str = ""  # a filter expression on item attributes (recsvc.core.filters)
    context: Mapping[str, str] = field(default_factory=dict)  # what rules match pins on
    explain: bool = False  # give each item its reasons (ScoredItem.reasons)
    popularity_discount: float | None = None  # 0..1; None: the server's default
    interests: int = 0  # interest vectors per user; 0: the server's default

    def validate(self, limits: Limits, prefix: str = "") -> None:
        """Raise InvalidArgument naming the first bad field (``prefix`` locates it in a batch)."""
        check_k(self.k, limits, f"{prefix}k")
        if not 0.0 <= self.diversity <= 1.0:  # also rejects NaN
            raise InvalidArgument(f"{prefix}diversity", f"must be in [0, 1], got {self.diversity}")
        discount = self.popularity_discount
        if discount is not None and not 0.0 <= discount <= 1.0:  # also rejects NaN
            raise InvalidArgument(
                f"{prefix}popularity_discount", f"must be in [0, 1], got {discount}"
            )
        if self.user_id:
            check_id(self.user_id, f"{prefix}user_id")
        elif not self.recent_item_ids:
            raise InvalidArgument(
                f"{prefix}user_id", "must not be empty unless recent_item_ids is given"
            )
        check_id_list(self.exclude_item_ids, limits, f"{prefix}exclude_item_ids")
        check_id_list(self.recent_item_ids, limits, f"{prefix}recent_item_ids")
        check_categories(self.categories, limits, f"{prefix}categories")
        check_context(self.context, f"{prefix}context")
        parse_filter(self.filter, f"{prefix}filter")  # syntax only: types need the catalogue
        if not 0 <= self.interests <= MAX_INTERESTS:
            raise InvalidArgument(
                f"{prefix}interests",
                f"must be in [0, {MAX_INTERESTS}] (0: the server's default), got {self.interests}",
            )


@dataclass(frozen=True)
class SimilarQuery:
    item_id: str
    k: int
    mode: SimilarityMode = SimilarityMode.COLLABORATIVE
    categories: CategoryFilter = CategoryFilter()
    filter: str = ""

    def validate(self, limits: Limits) -> None:
        check_k(self.k, limits, "k")
        check_id(self.item_id, "item_id")
        check_categories(self.categories, limits, "categories")
        parse_filter(self.filter, "filter")


@dataclass(frozen=True)
class ImageQuery:
    """SearchByImage without the image (the service embeds it)."""

    k: int
    categories: CategoryFilter = CategoryFilter()
    filter: str = ""

    def validate(self, limits: Limits) -> None:
        check_k(self.k, limits, "k")
        check_categories(self.categories, limits, "categories")
        parse_filter(self.filter, "filter")


@dataclass(slots=True)  # not frozen: every Recommend makes k of them (0.35 against 0.96 us)
class ScoredItem:
    item_id: str
    score: float
    rule: str = ""  # the business rule that boosted or pinned it
    reasons: tuple[Reason, ...] = ()  # why it was recommended (only when asked)


class ReasonKind(StrEnum):
    HISTORY_ITEM = "history_item"
    VISUAL_NEIGHBOUR = "visual_neighbour"
    RULE = "rule"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason an item was recommended (recsvc.v1.Reason says what each kind means)."""

    kind: ReasonKind
    item_id: str = ""
    contribution: float = 0.0
    rule: str = ""


@dataclass(slots=True)  # not frozen: the service tags each one (id, experiment, arm) in place
class Recommendation:
    items: list[ScoredItem]
    model_version: str
    strategy: Strategy
    recommendation_id: str = ""  # unique per response: feedback names it (attribution)
    experiment: str = ""  # the user's experiment; empty: none
    arm: str = ""  # the user's arm in it


@dataclass(frozen=True)
class SimilarItems:
    items: list[ScoredItem]
    model_version: str


def check_k(k: int, limits: Limits, field: str = "k") -> None:
    if k <= 0:
        raise InvalidArgument(field, f"must be at least 1, got {k}")
    if k > limits.max_k:
        raise InvalidArgument(field, f"must be at most {limits.max_k}, got {k}")


def check_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(field, f"must be at most {MAX_ID_BYTES} bytes")
    if "\x00" in value:  # a C string would end there: in logs, files and tools, ids could merge
        raise InvalidArgument(field, "must not contain NUL characters")


def check_id_list(values: tuple[str, ...], limits: Limits, field: str) -> None:
    if len(values) > limits.max_id_list:
        raise InvalidArgument(
            field, f"holds {len(values)} ids, at most {limits.max_id_list} allowed"
        )
    for position, value in enumerate(values):
        check_id(value, f"{field}[{position}]")


def check_categories(categories: CategoryFilter, limits: Limits, field: str) -> None:
    check_id_list(categories.include, limits, f"{field}.include")
    check_id_list(categories.exclude, limits, f"{field}.exclude")


def check_context(context: Mapping[str, str], field: str) -> None:
    """At most MAX_CONTEXT_ENTRIES entries, keys and values of at most MAX_ID_BYTES."""
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidArgument(
            field, f"holds {len(context)} entries, at most {MAX_CONTEXT_ENTRIES} allowed"
        )
    for key, value in context.items():
        check_id(key, f"{field} key")
        if len(value.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(f"{field}[{key}]", f"must be at most {MAX_ID_BYTES} bytes")


def check_batch_size(size: int, limits: Limits, field: str) -> None:
    if size == 0:
        raise InvalidArgument(field, "must hold at least one entry")
    if size > limits.max_batch:
        raise InvalidArgument(field, f"holds {size} entries, at most {limits.max_batch} allowed")


def validate_batch(queries: list[RecommendQuery], limits: Limits) -> None:
    """Check a batch and every query in it first, so a bad one fails the whole batch with a
    message naming it (``requests[i].field``) before any work is done."""
    check_batch_size(len(queries), limits, "requests")
    for position, query in enumerate(queries):
        query.validate(limits, prefix=f"requests[{position}].")
