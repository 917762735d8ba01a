"""Business rules: boosts and pins, read from a versioned rules document (docs/rules.md).

A document is JSON::

    {"version": "2026-12-01.1",
     "rules": [
       {"name": "summer-sale", "start": "2026-06-01T00:00:00Z", "end": "2026-09-01",
        "boost": {"items": "tag == \\"summer\\"", "factor": 1.5}},
       {"name": "vip-hero",
        "pin": {"item_id": "sku-1", "position": 1, "when": "segment == \\"vip\\""}}]}

It is validated and its expressions parsed once (:func:`parse_rules`); a bad document raises
:class:`InvalidRules` naming the rule and the position of the error, and nothing of it is used.
Per request, :meth:`RuleSet.active` picks the rules inside their time window and
:meth:`ActiveRules.for_query` those whose ``when`` matches the request's context;
``recsvc.core.rule_effects`` applies them to the candidates.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsvc.core.catalogue import Catalogue
from recsvc.core.filters import FilterExpression, parse_filter
from recsvc.core.queries import check_id
from recsvc.errors import ConfigError, InvalidArgument

log = logging.getLogger(__name__)

# Rule names appear in every response a rule touches: short, and no characters that need
# quoting in logs or dashboards.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_NAME_CHARS = 64
MAX_VERSION_CHARS = 128
# Pins further down than any k a request may ask for never apply; this only bounds the number.
MAX_POSITION = 100_000
# The key of the request context that always holds the request's user_id (it wins over a
# context entry of the same name, so a client cannot claim to be another user).
USER_ID_KEY = "user_id"


class InvalidRules(ConfigError):
    """A rules document that cannot be used: unreadable, malformed, or a bad rule in it."""


# ----------------------------------------------------------------------------- the document


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoostSpec(_Strict):
    """Multiply the scores of the candidates that ``items`` matches by ``factor``."""

    items: str = Field(min_length=1)  # expressions: parse_filter's own limits
    factor: float = Field(gt=0, allow_inf_nan=False)
    when: str = ""


class PinSpec(_Strict):
    """Put ``item_id`` at ``position`` (1-based) for requests that ``when`` matches."""

    item_id: str
    position: int = Field(ge=1, le=MAX_POSITION)
    when: str = ""


class RuleSpec(_Strict):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)
    start: datetime | None = None
    end: datetime | None = None
    boost: BoostSpec | None = None
    pin: PinSpec | None = None

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """A time without an offset is UTC."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _one_action(self) -> RuleSpec:
        if (self.boost is None) == (self.pin is None):
            raise ValueError("a rule has exactly one of boost and pin")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"start ({self.start.isoformat()}) must be before end")
        return self


class RulesDocument(_Strict):
    version: str = Field(min_length=1, max_length=MAX_VERSION_CHARS)
    rules: list[RuleSpec]

    @model_validator(mode="after")
    def _unique_names(self) -> RulesDocument:
        seen: set[str] = set()
        for position, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{position}]: name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


# ----------------------------------------------------------------------------- compiled rules


@dataclass(frozen=True)
class Window:
    """When a rule is in force: from ``start`` (included) to ``end`` (excluded); None: open."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, now: datetime) -> bool:
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)


class Boost:
    """A compiled boost rule. Its item mask is computed once per catalogue snapshot (a new
    snapshot, after UpsertItems or DeleteItems, computes it again)."""

    def __init__(
        self,
        name: str,
        items: FilterExpression,
        factor: float,
        when: FilterExpression | None,
        window: Window,
    ) -> None:
        self.name = name
        self.items = items
        self.factor = factor
        self.when = when
        self.window = window
        # (catalogue, mask) of the last catalogue asked for: one assignment, so a reader sees
        # a matching pair; two threads may both compute it, which is harmless.
        self._cached: tuple[Catalogue, npt.NDArray[np.bool_]] | None = None

    def mask(self, catalogue: Catalogue) -> npt.NDArray[np.bool_]:
        """bool, shape (catalogue.size,): the labels the rule boosts.

        An expression that this catalogue cannot evaluate (a numeric comparison on an
        attribute that is no longer numeric) boosts nothing, and says so in the log."""
        cached = self._cached
        if cached is not None and cached[0] is catalogue:
            return cached[1]
        try:
            mask = self.items.item_mask(catalogue, f"rule {self.name}: boost.items")
        except InvalidArgument as exc:
            log.warning("%s; the rule boosts nothing in this catalogue", exc)
            mask = np.zeros(catalogue.size, dtype=bool)
        self._cached = (catalogue, mask)
        return mask

    def __repr__(self) -> str:
        return f"Boost({self.name!r}, {self.items.text!r}, {self.factor})"


@dataclass(frozen=True)
class Pin:
    """A compiled pin rule: ``item_id`` at ``position`` (1-based)."""

    name: str
    item_id: str
    position: int
    when: FilterExpression | None
    window: Window


@dataclass(frozen=True)
class QueryRules:
    """The rules in force for one query: active now, and their ``when`` matched its context.
    Both in document order."""

    boosts: tuple[Boost, ...]
    pins: tuple[Pin, ...]


@dataclass(frozen=True)
class ActiveRules:
    """The rules inside their time window at one moment, in document order."""

    boosts: tuple[Boost, ...]
    pins: tuple[Pin, ...]

    def for_query(self, user_id: str, context: Mapping[str, str]) -> QueryRules | None:
        """The rules whose ``when`` matches the request context (``context`` plus
        ``user_id``); None when none does."""
        values = {**context, USER_ID_KEY: user_id}
        boosts = tuple(b for b in self.boosts if b.when is None or b.when.matches(values))
        pins = tuple(p for p in self.pins if p.when is None or p.when.matches(values))
        return QueryRules(boosts, pins) if boosts or pins else None


@dataclass(frozen=True)
class RuleSet:
    """A parsed and validated rules document."""

    version: str
    boosts: tuple[Boost, ...]
    pins: tuple[Pin, ...]

    def __len__(self) -> int:
        return len(self.boosts) + len(self.pins)

    def active(self, now: datetime) -> ActiveRules | None:
        """The rules in force at ``now`` (an aware datetime); None when none is."""
        boosts = tuple(b for b in self.boosts if b.window.contains(now))
        pins = tuple(p for p in self.pins if p.window.contains(now))
        return ActiveRules(boosts, pins) if boosts or pins else None


class RulesHolder:
    """The one reference to the rules in force (None: no rules). Swapping is one assignment:
    a request that took the old rules finishes with them."""

    def __init__(self, rules: RuleSet | None = None) -> None:
        self._current = rules

    def current(self) -> RuleSet | None:
        return self._current

    def swap(self, rules: RuleSet | None) -> None:
        self._current = rules

    @property
    def version(self) -> str:
        """The version of the rules in force; empty without rules."""
        rules = self._current
        return rules.version if rules is not None else ""


# ----------------------------------------------------------------------------- parsing


def parse_rules(text: str | bytes, source: str = "rules", max_rules: int = 1000) -> RuleSet:
    """The rules of a JSON rules document; InvalidRules (its message starting with
    ``source``) when it is not valid JSON, breaks the schema, holds more than ``max_rules``
    rules, or a rule's expression or item id is bad (the message names the rule and the
    position in the expression)."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRules(f"{source}: not valid JSON: {exc}") from None
    listed = raw.get("rules") if isinstance(raw, dict) else None
    if isinstance(listed, list) and len(listed) > max_rules:  # before validating them all
        raise InvalidRules(
            f"{source}: holds {len(listed)} rules, at most {max_rules} allowed (rules.max_rules)"
        )
    try:
        document = RulesDocument.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRules(f"{source}: {_describe(exc, raw)}") from None
    boosts: list[Boost] = []
    pins: list[Pin] = []
    for position, rule in enumerate(document.rules):
        where = f"rules[{position}] ({rule.name})"
        window = Window(rule.start, rule.end)
        try:
            if rule.boost is not None:
                boosts.append(_compile_boost(rule.name, rule.boost, window, where))
            elif rule.pin is not None:
                pins.append(_compile_pin(rule.name, rule.pin, window, where))
        except InvalidArgument as exc:
            raise InvalidRules(f"{source}: {exc}") from None
    return RuleSet(document.version, tuple(boosts), tuple(pins))


def _compile_boost(name: str, spec: BoostSpec, window: Window, where: str) -> Boost:
    items = parse_filter(spec.items, f"{where}.boost.items")
    if items is None:
        raise InvalidArgument(f"{where}.boost.items", "must not be empty")
    if not math.isfinite(spec.factor):  # pydantic refuses it already; the math below needs it
        raise InvalidArgument(f"{where}.boost.factor", "must be finite")
    when = parse_filter(spec.when, f"{where}.boost.when")
    return Boost(name, items, spec.factor, when, window)


def _compile_pin(name: str, spec: PinSpec, window: Window, where: str) -> Pin:
    check_id(spec.item_id, f"{where}.pin.item_id")
    when = parse_filter(spec.when, f"{where}.pin.when")
    return Pin(name, spec.item_id, spec.position, when, window)


def _describe(exc: ValidationError, raw: Any) -> str:
    """Every schema error on one line, as ``rules[2] (name).boost.factor: reason``."""
    parts = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            where = f"rules[{loc[1]}]"
            name = _raw_name(raw, loc[1])
            if name:
                where += f" ({name})"
            loc = loc[2:]
        rest = ".".join(str(part) for part in loc)
        where = ".".join(part for part in (where, rest) if part) or "document"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _raw_name(raw: Any, position: int) -> str:
    try:
        name = raw["rules"][position]["name"]
    except (KeyError, IndexError, TypeError):
        return ""
    return name if isinstance(name, str) and len(name) <= MAX_NAME_CHARS else ""
