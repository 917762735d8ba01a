"""The serving catalogue: which items may be returned, and every item's attributes as columns.

One immutable snapshot per Recommender, over its labels (the model's items, then the added
items). A change (UpsertItems, DeleteItems, another replica's write read back from the item
log) builds a new snapshot and swaps the reference in one assignment, so a query sees the old
catalogue or the new one, with the added-items table that belongs to it, never a mix.

- ``servable``: False for hidden (``available = false``) and deleted items; None when every
  item may be returned, so that the unfiltered path pays nothing for the feature.
- ``columns``: per attribute name (and ``category``), the text of every label as codes into
  a vocabulary, and its value as a number (NaN where absent or not a number). Filter
  expressions (``recsvc.core.filters``) are evaluated on these arrays, not item by item.
  An attribute is numeric when every value it has in the catalogue reads as a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from recsvc.core.added import AddedItems
from recsvc.core.model import Model

CATEGORY = "category"
MISSING = -1  # the code of a label that has no value for an attribute


class ItemRecord(Protocol):
    """What the item log says about one item beyond its vectors (``StoredItem`` is one)."""

    @property
    def item_id(self) -> str: ...

    @property
    def category(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, str]: ...

    @property
    def deleted(self) -> bool: ...

    @property
    def servable(self) -> bool: ...


_NAN = np.full(1, math.nan)


def _numbers_of(values: tuple[str, ...]) -> npt.NDArray[np.float64]:
    """Each value as a number (NaN: not one), then the NaN that MISSING picks."""
    return np.asarray([_as_number(v) for v in values] + [math.nan], dtype=np.float64)


def _as_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


@dataclass(frozen=True)
class AttributeColumn:
    """One attribute over every label.

    codes : int32, shape (n,): index into ``values``; ``MISSING`` where the item has none
    values : the distinct texts; lookup : text -> code
    numbers : float64, shape (n,): the value as a number, NaN where absent or not a number
    numeric : every present value is a number (numeric comparisons are allowed)
    """

    codes: npt.NDArray[np.int32]
    values: tuple[str, ...]
    lookup: Mapping[str, int]
    numbers: npt.NDArray[np.float64]
    numeric: bool
    # Per value, then a trailing NaN that MISSING (-1) picks: the value as a number.
    value_numbers: npt.NDArray[np.float64] = field(repr=False, default_factory=lambda: _NAN)
    blank_is_none: bool = False  # the empty text means no value (the category column)

    @classmethod
    def from_texts(cls, texts: list[str | None]) -> AttributeColumn:
        lookup: dict[str, int] = {}
        codes = np.fromiter(
            (MISSING if t is None else lookup.setdefault(t, len(lookup)) for t in texts),
            dtype=np.int32,
            count=len(texts),
        )
        return cls.from_codes(codes, tuple(lookup), lookup, _numbers_of(tuple(lookup)))

    @classmethod
    def from_codes(
        cls,
        codes: npt.NDArray[np.int32],
        values: tuple[str, ...],
        lookup: Mapping[str, int],
        value_numbers: npt.NDArray[np.float64],
        blank_is_none: bool = False,
    ) -> AttributeColumn:
        """The column of ``codes``; numeric when every value some label has (with
        ``blank_is_none``, the empty text aside) reads as a number."""
        numbers = value_numbers[codes]
        used = np.zeros(len(values) + 1, dtype=bool)
        used[codes] = True
        used[-1] = False  # MISSING
        empty = lookup.get("")
        if blank_is_none and empty is not None:
            used[empty] = False
        numeric = bool(used.any()) and not np.isnan(value_numbers[used]).any()
        return cls(codes, values, lookup, numbers, numeric, value_numbers, blank_is_none)

    def with_texts(self, labels: list[int], texts: list[str | None]) -> AttributeColumn:
        """A new column: ``labels`` set to ``texts`` (None: no value), the rest as they are."""
        lookup = self.lookup
        new = [t for t in dict.fromkeys(texts) if t is not None and t not in lookup]
        values, value_numbers = self.values, self.value_numbers
        if new:
            lookup = {**lookup, **{t: len(self.values) + j for j, t in enumerate(new)}}
            values = self.values + tuple(new)
            value_numbers = np.concatenate([value_numbers[:-1], _numbers_of(tuple(new))])
        codes = self.codes.copy()
        codes[labels] = [MISSING if t is None else lookup[t] for t in texts]
        return AttributeColumn.from_codes(codes, values, lookup, value_numbers, self.blank_is_none)

    def texts(self) -> list[str | None]:
        values = self.values
        return [values[c] if c >= 0 else None for c in self.codes.tolist()]

    def codes_of(self, texts: Iterable[str]) -> npt.NDArray[np.int32]:
        """Codes of those of ``texts`` that occur (others match no item)."""
        return np.asarray([self.lookup[t] for t in texts if t in self.lookup], dtype=np.int32)


@dataclass(frozen=True)
class Catalogue:
    """The added-items table and what may be served, over labels 0..size-1."""

    added: AddedItems
    size: int
    servable: npt.NDArray[np.bool_] | None
    columns: Mapping[str, AttributeColumn]
    deleted: frozenset[str] = frozenset()

    def column(self, name: str) -> AttributeColumn | None:
        return self.columns.get(name)


def build_catalogue(
    model: Model, added: AddedItems, records: Mapping[str, ItemRecord]
) -> Catalogue:
    """The catalogue of ``model`` plus ``added``, with what ``records`` (the item log, by id)
    says about hiding, deleting, categories and attributes of any of their items."""
    n = model.info.num_items
    size = n + len(added)
    by_label: list[tuple[int, ItemRecord]] = []
    for item_id, record in records.items():
        row = model.items.row(item_id)
        if row is None and (added_row := added.rows.get(item_id)) is not None:
            row = n + added_row
        if row is not None:
            by_label.append((row, record))
    deleted = frozenset(item_id for item_id, record in records.items() if record.deleted)
    servable: npt.NDArray[np.bool_] | None = None
    hidden = [label for label, record in by_label if not record.servable]
    if hidden:
        servable = np.ones(size, dtype=bool)
        servable[hidden] = False
        servable.flags.writeable = False
    columns = {CATEGORY: _category_column(model, added, by_label)}
    texts_by_name: dict[str, list[str | None]] = {}
    for label, record in by_label:
        for name, text in record.attributes.items():
            if name == CATEGORY:
                continue  # the category has its own field
            texts = texts_by_name.get(name)
            if texts is None:
                texts = texts_by_name[name] = [None] * size
            texts[label] = text
    for name, texts in texts_by_name.items():
        columns[name] = AttributeColumn.from_texts(texts)
    return Catalogue(added, size, servable, columns, deleted)


def _category_column(
    model: Model, added: AddedItems, by_label: list[tuple[int, ItemRecord]]
) -> AttributeColumn:
    """Model categories, then added items' ones, with the log's non-empty categories winning.
    Missing (no category) is the empty text, as the category filter has always treated it."""
    n = model.info.num_items
    names = model.category_names
    lookup = {name: code for code, name in enumerate(names)}
    values = list(names)
    overrides = [(label, record.category) for label, record in by_label if record.category]
    extra = list(added.categories)
    for text in extra + [category for _, category in overrides]:
        if text not in lookup:
            lookup[text] = len(values)
            values.append(text)
    codes = np.empty(n + len(added), dtype=np.int32)
    codes[:n] = model.item_categories
    if extra:
        codes[n:] = [lookup[t] for t in extra]
    if overrides:
        codes[[label for label, _ in overrides]] = [lookup[c] for _, c in overrides]
    return AttributeColumn.from_codes(
        codes, tuple(values), lookup, _numbers_of(tuple(values)), blank_is_none=True
    )


def update_catalogue(
    catalogue: Catalogue, model: Model, changed: Iterable[ItemRecord]
) -> Catalogue:
    """``catalogue`` with what ``changed`` (the latest records of some items) says, for the same
    model and added-items table: only those items' entries are rewritten, so a hide or a price
    change costs array copies, not a pass over every record of the log."""
    n = model.info.num_items
    added = catalogue.added
    by_label: list[tuple[int, ItemRecord]] = []
    deleted = set(catalogue.deleted)
    for record in changed:
        if record.deleted:
            deleted.add(record.item_id)
        else:
            deleted.discard(record.item_id)
        row = model.items.row(record.item_id)
        if row is None and (added_row := added.rows.get(record.item_id)) is not None:
            row = n + added_row
        if row is not None:
            by_label.append((row, record))
    if not by_label:
        return Catalogue(
            added, catalogue.size, catalogue.servable, catalogue.columns, frozenset(deleted)
        )
    labels = [label for label, _ in by_label]
    servable = (
        catalogue.servable.copy()
        if catalogue.servable is not None
        else np.ones(catalogue.size, dtype=bool)
    )
    servable[labels] = [record.servable for _, record in by_label]
    columns = dict(catalogue.columns)
    recategorised = [(label, record.category) for label, record in by_label if record.category]
    if recategorised:
        columns[CATEGORY] = columns[CATEGORY].with_texts(
            [label for label, _ in recategorised], [category for _, category in recategorised]
        )
    names = {name for _, record in by_label for name in record.attributes} - {CATEGORY}
    for name in names | (set(columns) - {CATEGORY}):
        texts = [record.attributes.get(name) for _, record in by_label]
        column = columns.get(name)
        if column is None:
            column = AttributeColumn.from_texts([None] * catalogue.size)
        elif all(t is None for t in texts) and (column.codes[labels] == MISSING).all():
            continue  # these items neither had nor have it
        columns[name] = column.with_texts(labels, texts)
    servable.flags.writeable = False
    return Catalogue(
        added,
        catalogue.size,
        None if servable.all() else servable,
        columns,
        frozenset(deleted),
    )
