"""Reading MovieLens 100k's item file (u.item): each movie's genres.

u.item is pipe-separated, Latin-1, without a header: movie id, title, release date, video
release date, IMDb URL, then one 0/1 flag per genre, in the order of u.genre (``name|index``
lines). Without a u.genre beside it, the 19 genres of the published data set are assumed.
"""

from __future__ import annotations

from pathlib import Path

from recsvc.errors import DataError

# The genres of ml-100k, in u.genre's order (used when no u.genre sits beside u.item).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_FIXED_COLUMNS = 5


def is_movielens_items(path: Path) -> bool:
    """Whether ``path`` is named as MovieLens 100k's item file."""
    return path.name == "u.item"


def read_genres(path: Path) -> dict[str, tuple[str, ...]]:
    """{movie id: its genres} from a u.item file (rows with a bad flag column are skipped)."""
    names = _genre_names(path.with_name("u.genre"))
    genres: dict[str, tuple[str, ...]] = {}
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    for line in lines:
        fields = line.split("|")
        flags = fields[_FIXED_COLUMNS:]
        if len(flags) != len(names) or any(flag not in ("0", "1") for flag in flags):
            continue
        genres[fields[0]] = tuple(
            name for name, flag in zip(names, flags, strict=True) if flag == "1"
        )
    if not genres:
        raise DataError(f"{path}: no row with an id and {len(names)} genre flags")
    return genres


def _genre_names(path: Path) -> tuple[str, ...]:
    """Genre names by index from u.genre; the published ones when it is not there."""
    if not path.is_file():
        return ML100K_GENRES
    pairs = [line.rsplit("|", 1) for line in path.read_text(encoding="latin-1").splitlines()]
    by_index = {int(p[1]): p[0] for p in pairs if len(p) == 2 and p[1].strip().isdigit()}
    return tuple(by_index[i] for i in sorted(by_index))
