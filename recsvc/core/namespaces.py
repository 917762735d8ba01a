"""Namespaces (tenants): several named catalogues served side by side by one deployment.

A namespace has its own model store, user state (Redis key prefix), event log, item log,
limits and rules; requests name it in their ``namespace`` field, empty meaning the default
one. Here: the names and their rules; the settings of each live in recsvc.config and the
serving units in recsvc.server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TypeVar

from recsvc.errors import InvalidArgument, NotFound

# The namespace of a deployment that configures none: today's settings, unchanged.
DEFAULT_NAMESPACE = "default"
# DNS-label-like, so that a name is safe in a path, a Redis key and a metric label.
NAME_PATTERN = re.compile(r"[a-z0-9-]{1,63}")
NAME_RULE = "1..63 characters of a-z, 0-9 and -"

T = TypeVar("T")


def check_name(name: str, field: str = "namespace") -> str:
    """``name`` when it is a valid namespace name, else InvalidArgument naming ``field``."""
    if NAME_PATTERN.fullmatch(name) is None:
        raise InvalidArgument(field, f"{name[:80]!r} is not a namespace name ({NAME_RULE})")
    return name


class NamespaceTable(Mapping[str, T]):
    """The serving units by namespace name, with the default one answering the empty name.

    ``pick`` is the per-call route: one dict lookup (the empty name is stored under "" too)."""

    def __init__(self, units: Mapping[str, T], default: str) -> None:
        if default not in units:
            raise ValueError(f"default namespace {default!r} is not among {sorted(units)}")
        self.default = default
        self._units = dict(units)
        self._routes = {**self._units, "": self._units[default]}

    def pick(self, name: str, field: str = "namespace") -> T:
        unit = self._routes.get(name)
        if unit is None:
            raise NotFound(field, f"no namespace {name[:80]!r} (served: {', '.join(self)})")
        return unit

    def __getitem__(self, name: str) -> T:
        return self._units[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._units))

    def __len__(self) -> int:
        return len(self._units)
