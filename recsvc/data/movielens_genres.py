"""Genres of MovieLens items (ml-100k's ``u.item``), for the offline metrics by category."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsvc.errors import DataError

# u.item: id | title | release date | video release date | IMDb URL | then one 0/1 flag per genre.
_FLAGS_FROM = 5


def read_movielens_genres(
    path: Path, item_ids: list[str]
) -> tuple[list[str], npt.NDArray[np.bool_]]:
    """The genre names and a bool matrix, shape (len(item_ids), genres): which genres each of
    ``item_ids`` has (an item missing from the file has none). Names come from ``u.genre``
    beside the file (``name|index`` lines); without it they are ``genre0``, ``genre1``, ...
    The files are Latin-1, as GroupLens ships them."""
    flags: dict[str, list[bool]] = {}
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as error:
        raise DataError(f"genres: cannot read {path}: {error}") from error
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) <= _FLAGS_FROM or any(f not in ("0", "1") for f in fields[_FLAGS_FROM:]):
            raise DataError(f"genres: {path} line {number} is not a MovieLens u.item line")
        flags[fields[0]] = [f == "1" for f in fields[_FLAGS_FROM:]]
    if not flags:
        raise DataError(f"genres: {path} holds no item")
    width = max(map(len, flags.values()))
    names = _genre_names(path.parent / "u.genre", width)
    matrix = np.zeros((len(item_ids), width), dtype=bool)
    for row, item_id in enumerate(item_ids):
        if (item_flags := flags.get(item_id)) is not None:
            matrix[row, : len(item_flags)] = item_flags
    return names, matrix


def _genre_names(path: Path, width: int) -> list[str]:
    names = [f"genre{n}" for n in range(width)]
    if path.is_file():
        for line in path.read_text(encoding="latin-1").splitlines():
            name, _, index = line.partition("|")
            if index.strip().isdigit() and int(index) < width:
                names[int(index)] = name
    return names
