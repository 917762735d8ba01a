"""Filter expressions: parsing, error positions, and evaluation on catalogue columns against a
plain per-item Python reference."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsvc.core.added import AddedItems
from recsvc.core.catalogue import CATEGORY, AttributeColumn, Catalogue
from recsvc.core.filters import (
    MAX_FILTER_CHARS,
    MAX_FILTER_DEPTH,
    MAX_FILTER_TERMS,
    FilterExpression,
    FilterMasks,
    parse_filter,
)
from recsvc.errors import InvalidArgument

Record = dict[str, str]


def catalogue_of(records: list[Record]) -> Catalogue:
    """A catalogue over ``records`` (one per label; ``category`` "" when absent)."""
    names = {name for record in records for name in record if name != CATEGORY}
    columns = {
        name: AttributeColumn.from_texts([record.get(name) for record in records]) for name in names
    }
    category = AttributeColumn.from_texts([record.get(CATEGORY, "") for record in records])
    # As the real catalogue types it: "" (no category) does not make it text.
    present = [as_number(v) for v in category.values if v]
    numeric = bool(present) and not any(math.isnan(v) for v in present)
    columns[CATEGORY] = dataclasses.replace(category, numeric=numeric)
    return Catalogue(AddedItems.empty(4, 0), len(records), None, columns)


def parsed(text: str) -> FilterExpression:
    expression = parse_filter(text)
    assert expression is not None
    return expression


RECORDS: list[Record] = [
    {"price": "10", "brand": "acme", "category": "shoes", "shoe size": "42"},
    {"price": "50.0", "brand": "globex", "category": "shoes"},
    {"price": "120", "brand": "acme", "category": "hats", "colour": "red"},
    {"brand": "initech", "category": "hats"},
    {"price": "49.99", "category": ""},
]


def selected(text: str, records: list[Record] = RECORDS) -> list[int]:
    return np.flatnonzero(parsed(text).item_mask(catalogue_of(records))).tolist()


# --- parsing ----------------------------------------------------------------------------------


def test_blank_text_is_no_filter() -> None:
    assert parse_filter("") is None
    assert parse_filter("  \n\t") is None


def test_names_lists_every_attribute_mentioned_and_parses_are_shared() -> None:
    expression = parsed(
        'price < 50 and (brand in ("a") or not `shoe size` != 3) or category == "x"'
    )
    assert expression.names == frozenset({"price", "brand", "shoe size", "category"})
    assert parse_filter(expression.text) is expression  # cached by text


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("price < ", 9, "expected a number, found the end of the filter"),
        ('price < "50"', 9, "expected a number, found '\"50\"'"),
        ("price = 3", 7, "expected one of '!=', '<', '<=', '==', '>', '>=', 'in' or 'not'"),
        ('brand in ("a",', 15, "expected a number or a quoted string"),
        ("(a == 1", 8, "expected one of ')', 'and' or 'or', found the end of the filter"),
        ("a == 1)", 7, "expected one of 'and', 'or' or the end of the filter, found ')'"),
        ("a == 1 b == 2", 8, "found 'b'"),
        ('"x" == a', 1, "expected one of '(', 'not' or an attribute name"),
        ("a in 1", 6, "expected '(', found '1'"),
        ("a not == 1", 7, "expected 'in', found '=='"),
        ("a == 1 and", 11, "found the end of the filter"),
        ("a == 'x", 6, 'found the character "\'"'),
    ],
)
def test_syntax_errors_name_the_field_and_the_position(
    text: str, position: int, expected: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_filter(text, field="requests[2].filter")
    assert raised.value.field == "requests[2].filter"
    assert str(raised.value).startswith(f"requests[2].filter: position {position}: ")
    assert expected in str(raised.value)


def test_keywords_are_lower_case_words_and_names_may_start_with_them() -> None:
    assert parsed('notes == "x" and index == 1 and order_id != 2').names == {
        "notes",
        "index",
        "order_id",
    }
    assert parsed('`in` == "x"').names == {"in"}


def test_string_literals_take_either_quote_and_backslash_escapes() -> None:
    records = [{"q": 'say "hi"'}, {"q": "it's"}, {"q": "a\\b"}]
    assert selected(r'q == "say \"hi\""', records) == [0]
    assert selected(r"q == 'it\'s'", records) == [1]
    assert selected(r'q == "a\\b"', records) == [2]


def test_limits_are_enforced_with_a_position() -> None:
    with pytest.raises(InvalidArgument, match=f"at most {MAX_FILTER_CHARS} allowed"):
        parse_filter("a == 1 or " * 300 + "a == 1")
    deep = "not " * (MAX_FILTER_DEPTH + 1) + "a == 1"
    with pytest.raises(InvalidArgument, match=r"position \d+: nested deeper than"):
        parse_filter(deep)
    many = "a in (" + ",".join(["1"] * (MAX_FILTER_TERMS + 1)) + ")"
    with pytest.raises(InvalidArgument, match=f"position 1: more than {MAX_FILTER_TERMS}"):
        parse_filter(many)
    # Parentheses alone are not nesting, and a long chain of 'and' is one level.
    assert parse_filter("(" * 100 + "a == 1" + ")" * 100) is not None
    assert parse_filter(" and ".join(["a == 1"] * 100)) is not None


# --- evaluation on a catalogue -----------------------------------------------------------------


def test_equality_on_a_numeric_attribute_compares_numbers() -> None:
    assert selected("price == 50") == [1]  # "50.0"
    assert selected('price == "50"') == []  # a string literal compares text
    assert selected('price == "50.0"') == [1]
    assert selected("price != 50") == [0, 2, 3, 4]  # the item without a price too


def test_a_number_literal_on_a_text_attribute_compares_text_as_written() -> None:
    records = [{"size": "42"}, {"size": "42.0"}, {"size": "XL"}]
    assert selected("size == 42", records) == [0]
    assert selected("size in (42.0, 'XL')", records) == [1, 2]


def test_ordering_comparisons_skip_items_without_the_attribute() -> None:
    assert selected("price < 50") == [0, 4]
    assert selected("price >= 50") == [1, 2]
    assert selected("not price >= 50") == [0, 3, 4]
    assert selected("`shoe size` > 41.5") == [0]


def test_ordering_on_a_text_attribute_is_an_error_naming_the_position() -> None:
    expression = parsed("price < 50 and brand > 3")
    with pytest.raises(InvalidArgument) as raised:
        expression.item_mask(catalogue_of(RECORDS), field="requests[1].filter")
    message = str(raised.value)
    assert raised.value.field == "requests[1].filter"
    assert message.startswith("requests[1].filter: position 16: attribute 'brand' is not numeric")


def test_an_attribute_nobody_has_matches_nothing_and_its_negations_everything() -> None:
    everyone = list(range(len(RECORDS)))
    assert selected('nope == "x"') == []
    assert selected('nope in ("x", 1)') == []
    assert selected("nope < 3") == []
    assert selected('nope != "x"') == everyone
    assert selected('nope not in ("x")') == everyone


def test_category_and_boolean_structure() -> None:
    assert selected('category == "shoes"') == [0, 1]
    assert selected('category == ""') == [4]  # items without a category
    assert selected('category == "hats" and brand == "acme" or price < 20') == [0, 2]
    assert selected('category == "hats" and (brand == "acme" or price < 20)') == [2]
    assert selected('not category in ("shoes", "hats") or colour == "red"') == [2, 4]
    assert selected('brand not in ("acme", "nobody")') == [1, 3, 4]


def test_item_mask_has_the_catalogue_shape_and_boolean_dtype() -> None:
    mask = parsed("price < 50").item_mask(catalogue_of(RECORDS))
    assert mask.shape == (len(RECORDS),)
    assert mask.dtype == np.bool_


# --- evaluation on one record ------------------------------------------------------------------


def test_matches_compares_numbers_when_the_value_reads_as_one() -> None:
    expression = parsed('segment in ("gold", "silver") and age >= 18 and tier == 2')
    assert expression.matches({"segment": "gold", "age": "18", "tier": "2.0"})
    assert not expression.matches({"segment": "gold", "age": "17", "tier": "2"})
    assert not expression.matches({"segment": "gold", "age": "adult", "tier": "2"})
    assert not expression.matches({"segment": "bronze", "age": "30", "tier": "2"})
    assert parsed('user_id != "u1"').matches({})
    assert not parsed('user_id == "u1"').matches({})


# --- property: the numpy evaluation equals a per-item reference --------------------------------

NAMES = ["price", "brand", "size", "nobody", CATEGORY]
VALUES = ["1", "2", "2.0", "10", "-3.5", "a", "b", "x y", ""]
NUMBERS = [-3.5, 0.0, 1.0, 2.0, 10.0]
TEXTS = ["1", "2", "a", "b", "x y", ""]

Term = tuple[Any, ...]


def literal_text(literal: str | float) -> str:
    return repr(literal) if isinstance(literal, float) else '"' + literal + '"'


terms: st.SearchStrategy[Term] = st.one_of(
    st.tuples(
        st.just("cmp"),
        st.sampled_from(NAMES),
        st.sampled_from(["==", "!="]),
        st.one_of(st.sampled_from(NUMBERS), st.sampled_from(TEXTS)),
    ),
    st.tuples(
        st.just("cmp"),
        st.sampled_from(NAMES),
        st.sampled_from(["<", "<=", ">", ">="]),
        st.sampled_from(NUMBERS),
    ),
    st.tuples(
        st.just("in"),
        st.sampled_from(NAMES),
        st.booleans(),
        st.lists(st.one_of(st.sampled_from(NUMBERS), st.sampled_from(TEXTS)), min_size=1),
    ),
)
expressions = st.recursive(
    terms,
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner),
    ),
    max_leaves=8,
)


def render(term: Term) -> str:
    kind = term[0]
    if kind == "cmp":
        _, name, op, literal = term
        return f"{name} {op} {literal_text(literal)}"
    if kind == "in":
        _, name, negated, literals = term
        listed = ", ".join(literal_text(v) for v in literals)
        return f"{name} {'not in' if negated else 'in'} ({listed})"
    if kind == "not":
        return f"not ({render(term[1])})"
    return f"({render(term[1])}) {kind} ({render(term[2])})"


def as_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def reference(term: Term, record: Record, numeric: Callable[[str, str], bool]) -> bool:
    """The documented semantics, one item at a time (``numeric(name, value)``: whether a
    number literal compares with the value as a number: for the catalogue, when the attribute
    is typed numeric; for one record, when the value reads as a number)."""
    kind = term[0]
    if kind == "not":
        return not reference(term[1], record, numeric)
    if kind in ("and", "or"):
        left = reference(term[1], record, numeric)
        right = reference(term[2], record, numeric)
        return (left and right) if kind == "and" else (left or right)
    name = term[1]
    value = record.get(name)

    def equal(literal: str | float) -> bool:
        if value is None:
            return False
        if isinstance(literal, float) and numeric(name, value):
            return as_number(value) == literal
        return value == (repr(literal) if isinstance(literal, float) else literal)

    if kind == "in":
        return any(equal(v) for v in term[3]) != term[2]
    op, literal = term[2], term[3]
    if op in ("==", "!="):
        return equal(literal) != (op == "!=")
    return ordered(as_number(value) if value is not None else math.nan, op, literal)


def ordered(number: float, op: str, literal: float) -> bool:
    return {
        "<": number < literal,
        "<=": number <= literal,
        ">": number > literal,
        ">=": number >= literal,
    }[op]


def has_ordering_on_text(term: Term, numeric: dict[str, bool]) -> bool:
    kind = term[0]
    if kind == "not":
        return has_ordering_on_text(term[1], numeric)
    if kind in ("and", "or"):
        return has_ordering_on_text(term[1], numeric) or has_ordering_on_text(term[2], numeric)
    return kind == "cmp" and term[2] in ("<", "<=", ">", ">=") and not numeric.get(term[1], True)


def numeric_types(records: list[Record]) -> dict[str, bool]:
    """Which attributes the catalogue types as numeric: every value reads as a number (for
    the category, every non-empty one; the category exists even when no item has one)."""
    numeric: dict[str, bool] = {}
    for name in NAMES:
        values = [record[name] for record in records if name in record]
        if name == CATEGORY:
            values = [v for v in values if v]
        elif not values:
            continue
        numeric[name] = bool(values) and not any(math.isnan(as_number(v)) for v in values)
    return numeric


records_strategy = st.lists(
    st.fixed_dictionaries(
        {},
        optional={name: st.sampled_from(VALUES) for name in ["price", "brand", "size", CATEGORY]},
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy, term=expressions)
def test_item_mask_equals_the_per_item_reference(records: list[Record], term: Term) -> None:
    records = [{CATEGORY: "", **record} for record in records]  # every item has a category
    numeric = numeric_types(records)
    expression = parsed(render(term))
    catalogue = catalogue_of(records)
    if has_ordering_on_text(term, numeric):
        with pytest.raises(InvalidArgument, match="is not numeric"):
            expression.item_mask(catalogue)
        return
    expected = [reference(term, record, lambda name, _: numeric[name]) for record in records]
    assert expression.item_mask(catalogue).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(record=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES)), term=expressions)
def test_matches_equals_the_reference_with_values_typed_one_by_one(
    record: Record, term: Term
) -> None:
    by_value = lambda name, value: not math.isnan(as_number(value))  # noqa: E731
    assert parsed(render(term)).matches(record) == reference(term, record, by_value)


def test_masks_are_cached_per_catalogue_snapshot_and_read_only() -> None:
    masks = FilterMasks()
    first = catalogue_of(RECORDS)
    mask = masks.mask("price < 50", first)
    assert mask is not None and not mask.flags.writeable
    assert masks.mask("price < 50", first) is mask
    assert masks.mask("", first) is None
    second = catalogue_of([*RECORDS, {"price": "1"}])  # a change swaps in a new snapshot
    again = masks.mask("price < 50", second)
    assert again is not None and again.tolist() == [True, False, False, False, True, True]
    with pytest.raises(InvalidArgument, match=r"^requests\[4\]\.filter: position 1: "):
        masks.mask("brand < 1", second, "requests[4].filter")


def test_the_mask_cache_keeps_to_its_byte_budget() -> None:
    catalogue = catalogue_of(RECORDS)
    masks = FilterMasks(budget=2 * len(RECORDS))  # room for two masks
    kept = [masks.mask(f"price < {n}", catalogue) for n in range(3)]
    assert masks.mask("price < 2", catalogue) is kept[2]
    assert masks.mask("price < 0", catalogue) is not kept[0]  # the oldest was dropped
