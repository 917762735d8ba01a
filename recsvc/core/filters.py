"""Filter expressions on item attributes and category (docs/filters.md is the reference).

    price < 50 and brand in ("acme", "globex") and not category == "refurbished"
    `shoe size` >= 42 or in_stock != "false"

A filter is parsed once (``parse_filter``, cached by its text) into an immutable
:class:`FilterExpression`, which is then evaluated either on a catalogue's columns
(``item_mask``: numpy over the attribute codes and numbers, never item by item) or on one
record of text values (``matches``: a request's context, for business rules).

Semantics, in short:

- ``==`` / ``!=`` with a string literal compare text. With a number literal they compare
  numbers when the attribute is numeric in the catalogue (every value it has reads as a number:
  ``price == 50`` matches ``"50.0"``), and the literal's text as written otherwise.
- ``<``, ``<=``, ``>``, ``>=`` take a number literal and need a numeric attribute: on an
  attribute that exists but is not numeric they are an error (InvalidArgument).
- An item without the attribute (or an attribute no item has) fails every comparison and
  ``in``; ``!=`` and ``not in`` are their negations, so such items pass them.
- ``category`` is the item's category (the empty text for none), compared like an attribute.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from recsvc.core.catalogue import Catalogue
from recsvc.core.catalogue import _as_number as _as_number  # the catalogue's own rule
from recsvc.errors import InvalidArgument

MAX_FILTER_CHARS = 2000  # a longer filter text is refused before it is parsed
MAX_FILTER_DEPTH = 32  # nesting of and / or / not / parentheses
MAX_FILTER_TERMS = 512  # comparisons plus the entries of every in (...) list
_CACHED_FILTERS = 1024  # distinct filter texts whose parse is kept (errors included)

_GRAMMAR = r"""
start: expr
?expr: conj | expr OR conj -> either
?conj: neg | conj AND neg -> both
?neg: atom | NOT neg -> negation
?atom: comparison | membership | _LPAR expr _RPAR
comparison: name EQUALITY literal | name ORDER NUMBER
membership: name IN _LPAR literals _RPAR | name NOT IN _LPAR literals _RPAR
literals: literal (_COMMA literal)*
?literal: STRING | NUMBER
name: NAME | QUOTED_NAME

OR: "or"
AND: "and"
NOT: "not"
IN: "in"
EQUALITY: "==" | "!="
ORDER: /<=|>=|<|>/
NAME: /[A-Za-z_][A-Za-z0-9_.]*/
QUOTED_NAME: /`[^`]+`/
STRING: /"(?:[^"\\]|\\.)*"/ | /'(?:[^'\\]|\\.)*'/
NUMBER: /[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/
_LPAR: "("
_RPAR: ")"
_COMMA: ","
%ignore /[ \t\r\n]+/
"""

# How a parse error names what the parser expected instead.
_EXPECTED = {
    "OR": ("'or'",),
    "AND": ("'and'",),
    "NOT": ("'not'",),
    "IN": ("'in'",),
    "EQUALITY": ("'=='", "'!='"),
    "ORDER": ("'<'", "'<='", "'>'", "'>='"),
    "NAME": ("an attribute name",),
    "QUOTED_NAME": ("an attribute name",),
    "STRING": ("a quoted string",),
    "NUMBER": ("a number",),
    "_LPAR": ("'('",),
    "_RPAR": ("')'",),
    "_COMMA": ("','",),
    "$END": ("the end of the filter",),
}

_ORDERS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Literal:
    """A literal as written: its text (unquoted) and, for a number literal, its value."""

    text: str
    number: float | None  # None: a string literal


@dataclass(frozen=True)
class _Node:
    position: int  # 1-based character position where the node starts
    depth: int
    terms: int


@dataclass(frozen=True)
class Comparison(_Node):
    name: str
    op: str  # == != < <= > >=
    literal: Literal


@dataclass(frozen=True)
class Membership(_Node):
    name: str
    literals: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class Both(_Node):
    parts: tuple[_Node, ...]


@dataclass(frozen=True)
class Either(_Node):
    parts: tuple[_Node, ...]


@dataclass(frozen=True)
class Negation(_Node):
    part: _Node


Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FilterExpression:
    """A parsed filter. Immutable; shared by every request with the same text.

    text : the filter as written
    names : the attribute names it mentions (``category`` included when it does)
    """

    text: str
    names: frozenset[str]
    root: _Node = field(repr=False)

    def item_mask(self, catalogue: Catalogue, field: str = "filter") -> Mask:
        """Which of the catalogue's labels match.

        Returns
        -------
        bool array, shape (catalogue.size,). Evaluated with numpy on ``catalogue.columns``.

        Raises
        ------
        InvalidArgument (naming ``field`` and the position) for a numeric comparison on an
        attribute that exists but is not numeric.
        """
        return _mask(self.root, catalogue, field)

    def matches(self, values: Mapping[str, str]) -> bool:
        """Whether one record of text values (attribute -> text) matches. There is no
        catalogue to type the attributes: a number literal compares numerically with a value
        that reads as a number, and as text otherwise; ``<`` and the like are false on a value
        that is not a number."""
        return _matches(self.root, values)


def parse_filter(text: str, field: str = "filter") -> FilterExpression | None:
    """The expression ``text`` denotes; None when it is empty or blank.

    Raises InvalidArgument(field, "position N: ...") for a syntax error (N is the 1-based
    character position) or a filter over the limits (``MAX_FILTER_*``). Parses are cached by
    text, errors included.
    """
    if not text or text.isspace():
        return None
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            field, f"holds {len(text)} characters, at most {MAX_FILTER_CHARS} allowed"
        )
    parsed = _parse_cached(text)
    if isinstance(parsed, str):
        raise InvalidArgument(field, parsed)
    return parsed


@functools.lru_cache(maxsize=_CACHED_FILTERS)
def _parse_cached(text: str) -> FilterExpression | str:
    """The expression, or the message of what is wrong with it."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as error:
        return _syntax_message(text, error)
    except VisitError as error:  # a limit raised inside the tree builder
        if isinstance(error.orig_exc, _LimitExceeded):
            return str(error.orig_exc)
        raise
    except _LimitExceeded as error:
        return str(error)
    root = tree.children[0]
    assert isinstance(root, _Node)
    return FilterExpression(text, frozenset(_names(root)), root)


class _LimitExceeded(Exception):
    pass


@functools.cache
def _parser() -> Lark:
    # LALR with the tree built by the transformer as it parses: no recursion in the parser,
    # so nesting is bounded by MAX_FILTER_DEPTH, not by Python's stack.
    return Lark(_GRAMMAR, parser="lalr", transformer=_Build(), maybe_placeholders=False)


def _syntax_message(text: str, error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedCharacters):
        position = error.pos_in_stream or 0
        found = f"the character {text[position]!r}"
        expected = set(error.allowed or ())
    else:
        assert isinstance(error, UnexpectedToken)
        token = error.token
        if token.type == "$END":
            position, found = len(text), "the end of the filter"
        else:
            position, found = token.start_pos or 0, repr(str(token))
        expected = _acceptable(error)
    if "OR" in expected:
        # Where an expression may go on with 'or', it may with 'and' too; the parser only
        # lists what its state after the last reduction takes (an 'or' expression).
        expected.add("AND")
    options = sorted({option for name in expected for option in _EXPECTED.get(name, (name,))})
    return f"position {position + 1}: expected {_one_of(options)}, found {found}"


def _acceptable(error: UnexpectedToken) -> set[str]:
    """The terminals that could really come next. LALR merges states, so its own list can
    hold tokens that only fit elsewhere (',' after ``a == 1``); the interactive parser tries
    each on a copy of the parse."""
    try:
        accepted: set[str] = error.interactive_parser.accepts()  # type: ignore[no-untyped-call]
        return accepted
    except Exception:  # nothing but a better message is at stake: fall back to LALR's list
        return set(error.expected)


def _one_of(options: list[str]) -> str:
    if len(options) <= 2:
        return " or ".join(options)
    return "one of " + ", ".join(options[:-1]) + " or " + options[-1]


def _unquote(token: Token) -> str:
    """A string literal's text: quotes removed, a backslash escapes the next character."""
    body = str(token)[1:-1]
    out: list[str] = []
    escaped = False
    for char in body:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def _literal(token: Token) -> Literal:
    if token.type == "NUMBER":
        return Literal(str(token), float(token))
    return Literal(_unquote(token), None)


def _checked(node: _Node) -> _Node:
    if node.depth > MAX_FILTER_DEPTH:
        raise _LimitExceeded(
            f"position {node.position}: nested deeper than {MAX_FILTER_DEPTH} levels"
        )
    if node.terms > MAX_FILTER_TERMS:
        raise _LimitExceeded(
            f"position {node.position}: more than {MAX_FILTER_TERMS} comparisons and list entries"
        )
    return node


class _Build(Transformer[Token, Any]):
    """Lark's parse tree -> the immutable nodes, checking the limits on the way up."""

    def name(self, children: list[Token]) -> tuple[str, int]:
        token = children[0]
        text = str(token)
        if token.type == "QUOTED_NAME":
            text = text[1:-1]
        return text, (token.start_pos or 0) + 1

    def literals(self, children: list[Token]) -> tuple[Literal, ...]:
        return tuple(_literal(token) for token in children)

    def comparison(self, children: list[Any]) -> _Node:
        (name, position), op, literal = children
        return _checked(Comparison(position, 1, 1, name, str(op), _literal(literal)))

    def membership(self, children: list[Any]) -> _Node:
        (name, position), *_, literals = children
        negated = any(isinstance(c, Token) and c.type == "NOT" for c in children)
        return _checked(Membership(position, 1, len(literals), name, literals, negated))

    def both(self, children: list[Any]) -> _Node:
        left, _, right = children
        return _checked(_join(Both, left, right))

    def either(self, children: list[Any]) -> _Node:
        left, _, right = children
        return _checked(_join(Either, left, right))

    def negation(self, children: list[Any]) -> _Node:
        token, part = children
        return _checked(Negation((token.start_pos or 0) + 1, part.depth + 1, part.terms, part))


def _join(kind: type[Both] | type[Either], left: _Node, right: _Node) -> _Node:
    """``a and b and c`` as one node of three parts (a chain is not nesting)."""
    parts = (*left.parts, right) if isinstance(left, kind) else (left, right)
    return kind(
        left.position,
        max(part.depth for part in parts) + 1,
        sum(part.terms for part in parts),
        parts,
    )


def _names(node: _Node) -> set[str]:
    if isinstance(node, Comparison | Membership):
        return {node.name}
    if isinstance(node, Negation):
        return _names(node.part)
    assert isinstance(node, Both | Either)
    return set().union(*(_names(part) for part in node.parts))


# --- evaluation on a catalogue ----------------------------------------------------------------


def _mask(node: _Node, catalogue: Catalogue, field: str) -> Mask:
    if isinstance(node, Comparison):
        return _comparison_mask(node, catalogue, field)
    if isinstance(node, Membership):
        found = _any_equal(node.name, node.literals, catalogue)
        return ~found if node.negated else found
    if isinstance(node, Negation):
        return ~_mask(node.part, catalogue, field)
    assert isinstance(node, Both | Either)
    combine = np.logical_and if isinstance(node, Both) else np.logical_or
    masks = [_mask(part, catalogue, field) for part in node.parts]
    return functools.reduce(combine, masks[1:], masks[0])


def _comparison_mask(node: Comparison, catalogue: Catalogue, field: str) -> Mask:
    if node.op in ("==", "!="):
        found = _any_equal(node.name, (node.literal,), catalogue)
        return ~found if node.op == "!=" else found
    column = catalogue.column(node.name)
    if column is None:
        return np.zeros(catalogue.size, dtype=bool)
    if not column.numeric:
        example = next((v for v in column.values if math.isnan(_as_number(v))), "")
        raise InvalidArgument(
            field,
            f"position {node.position}: attribute {node.name!r} is not numeric "
            f"(it has values such as {example!r}); compare it with == or in",
        )
    assert node.literal.number is not None  # the grammar takes only numbers here
    mask: Mask = _ORDERS[node.op](column.numbers, node.literal.number)  # NaN (absent): False
    return mask


def _any_equal(name: str, literals: tuple[Literal, ...], catalogue: Catalogue) -> Mask:
    """Items whose value equals one of ``literals``: numbers on a numeric column, text else."""
    column = catalogue.column(name)
    if column is None:
        return np.zeros(catalogue.size, dtype=bool)
    numbers = [lit.number for lit in literals if lit.number is not None and column.numeric]
    texts = [lit.text for lit in literals if lit.number is None or not column.numeric]
    found = np.zeros(catalogue.size, dtype=bool)
    if numbers:
        found |= np.isin(column.numbers, np.asarray(numbers, dtype=np.float64))
    if texts:
        codes = column.codes_of(texts)
        if len(codes) == 1:
            found |= column.codes == codes[0]
        elif len(codes):
            found |= np.isin(column.codes, codes)
    return found


# --- evaluation on one record ------------------------------------------------------------------


def _equal(value: str | None, literal: Literal) -> bool:
    if value is None:
        return False
    if literal.number is not None:
        number = _as_number(value)
        if not math.isnan(number):
            return number == literal.number
    return value == literal.text


def _matches(node: _Node, values: Mapping[str, str]) -> bool:
    if isinstance(node, Comparison):
        value = values.get(node.name)
        if node.op in ("==", "!="):
            return _equal(value, node.literal) != (node.op == "!=")
        number = math.nan if value is None else _as_number(value)
        assert node.literal.number is not None
        return not math.isnan(number) and bool(_ORDERS[node.op](number, node.literal.number))
    if isinstance(node, Membership):
        value = values.get(node.name)
        found = any(_equal(value, literal) for literal in node.literals)
        return found != node.negated
    if isinstance(node, Negation):
        return not _matches(node.part, values)
    if isinstance(node, Both):
        return all(_matches(part, values) for part in node.parts)
    assert isinstance(node, Either)
    return any(_matches(part, values) for part in node.parts)


# --- masks per catalogue ----------------------------------------------------------------------

MASK_CACHE_BYTES = 32 << 20  # masks kept per Recommender (one byte per catalogue label each)


class FilterMasks:
    """The masks of recent filter texts on the current catalogue, so that repeated filters
    (the usual case: a few site-wide ones) are evaluated once per catalogue snapshot.

    A catalogue is immutable and a change swaps in a new one: the cache holds the catalogue
    it belongs to (compared by identity) and starts afresh when another one comes. The masks
    are read-only; at most ``budget`` bytes of them are kept, least recently used dropped.
    """

    def __init__(self, budget: int = MASK_CACHE_BYTES) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._catalogue: Catalogue | None = None
        self._masks: OrderedDict[str, Mask] = OrderedDict()

    def mask(self, text: str, catalogue: Catalogue, field: str = "filter") -> Mask | None:
        """The mask of filter ``text`` on ``catalogue``; None when ``text`` is blank.
        InvalidArgument (naming ``field``) as :func:`parse_filter` and
        :meth:`FilterExpression.item_mask` raise it."""
        expression = parse_filter(text, field)
        if expression is None:
            return None
        with self._lock:
            if self._catalogue is catalogue and (found := self._masks.get(text)) is not None:
                self._masks.move_to_end(text)
                return found
        mask = expression.item_mask(catalogue, field)
        mask.flags.writeable = False  # shared by every query with this filter
        if mask.nbytes > self.budget:
            return mask
        with self._lock:
            if self._catalogue is not catalogue:
                self._catalogue = catalogue
                self._masks.clear()
            self._masks[text] = mask
            while len(self._masks) * mask.nbytes > self.budget:
                self._masks.popitem(last=False)
        return mask
