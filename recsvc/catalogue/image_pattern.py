"""Image file patterns: an item id -> the relative path of its photo, without ``eval``.

A pattern is text with ``{item_id}`` fields, parsed once and checked before any file is read:

- ``{item_id}``: the whole id, e.g. ``{item_id}.jpg``;
- ``{item_id[START:STOP]}`` or ``{item_id[N]}``: a slice or one character of the id, Python's
  rules (negative numbers count from the end), e.g. ``{item_id[:3]}/{item_id}.jpg`` for files
  grouped in folders by the first three characters of the id (the H&M layout);
- ``{item_id:SPEC}``: a format spec applied to the id as text, e.g. ``{item_id:.3}`` (the first
  three characters) or ``{item_id:0>10}`` (padded to ten characters with zeros);
- ``{{`` and ``}}``: literal braces.

Anything else (another field name, attribute access, ``!r``, nested fields, a bad spec) is a
one-line error naming the pattern.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from recsvc.errors import DataError

FIELD = "item_id"
_FIELD_RE = re.compile(r"item_id(?:\[(?P<start>-?\d*)(?P<colon>:)?(?P<stop>-?\d*)\])?")
_EXAMPLES = "{item_id}, {item_id[START:STOP]}, {item_id[N]} or {item_id:SPEC}"
PATTERN_HELP = (
    "photo file name from the item id when there is no image column: {item_id} the id, "
    "{item_id[:3]} a slice of it (Python rules), {item_id:.3} a format spec, "
    "e.g. '{item_id}.jpg' or '{item_id[:3]}/{item_id}.jpg'"
)


@dataclass(frozen=True)
class _Field:
    start: int | None
    stop: int | None
    index: bool  # [N]: one character
    spec: str

    def render(self, item_id: str) -> str:
        if self.index:
            assert self.start is not None
            part = item_id[self.start : self.start + 1 or None] if item_id else ""
        else:
            part = item_id[self.start : self.stop]
        return format(part, self.spec)


class ImagePattern:
    """A parsed pattern; ``ImagePattern("{item_id[:3]}/{item_id}.jpg").path_for("0123")``
    is ``"012/0123.jpg"``. Raises DataError naming the pattern when it cannot be used."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._parts: list[str | _Field] = []
        try:
            parsed = list(string.Formatter().parse(pattern))
        except ValueError as exc:  # unbalanced braces or brackets
            raise self._error(f"{exc} (fields look like {_EXAMPLES})") from exc
        for literal, name, spec, conversion in parsed:
            if literal:
                self._parts.append(literal)
            if name is None:
                continue
            self._parts.append(self._field(name, spec or "", conversion))
        if not any(isinstance(part, _Field) for part in self._parts):
            raise self._error("no {item_id} field, so every item would get the same file")

    def _field(self, name: str, spec: str, conversion: str | None) -> _Field:
        match = _FIELD_RE.fullmatch(name)
        if match is None:
            raise self._error(f"unknown field {{{name}}} (fields look like {_EXAMPLES})")
        if conversion is not None:
            raise self._error(f"conversion !{conversion} is not supported")
        if "{" in spec or "}" in spec:
            raise self._error("nested fields are not supported")
        try:
            format("x", spec)
        except ValueError as exc:
            raise self._error(f"format spec {spec!r}: {exc}") from exc
        start, stop = match["start"], match["stop"]
        bracket = match["start"] is not None
        if bracket and not match["colon"]:
            if not start:
                raise self._error("empty index []")
            return _Field(int(start), None, True, spec)
        return _Field(int(start) if start else None, int(stop) if stop else None, False, spec)

    def _error(self, reason: str) -> DataError:
        return DataError(f"image pattern {self.pattern!r}: {reason}")

    def path_for(self, item_id: str) -> str:
        """The relative (or absolute) file name of ``item_id``'s photo."""
        return "".join(
            part if isinstance(part, str) else part.render(item_id) for part in self._parts
        )

    def __repr__(self) -> str:
        return f"ImagePattern({self.pattern!r})"
