"""Opening the files of a model version without trusting the names and file types in it.

A manifest comes from whoever can write the model store, so every name it lists must be a
plain name inside its version directory, and every file a regular file: a symbolic link is
never followed (O_NOFOLLOW) and a FIFO or device is never read from (O_NONBLOCK, then fstat).
Errors name only the manifest's entry, never what lies behind it, so that a crafted manifest
cannot probe which paths exist elsewhere on the machine.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

from recsvc.durable import open_regular_file
from recsvc.errors import ArtifactError

# A plain file name: no separator, no leading dot (so neither "." nor ".."), no NUL.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` names a file directly inside a directory (and nothing else)."""
    return _PLAIN_NAME.fullmatch(name) is not None


def open_regular(directory: Path, name: str, what: str) -> io.BufferedReader:
    """Open ``directory/name`` for reading if it is a regular file (not a link, FIFO, device
    or directory); ``what`` prefixes the error ("model v1")."""
    if not is_plain_name(name):
        raise ArtifactError(f"{what}: {name!r} is not a plain file name inside the version")
    try:
        return open_regular_file(directory / name, follow_links=False)
    except FileNotFoundError:
        raise ArtifactError(f"{what}: file {name} is missing") from None
    except OSError:
        # ELOOP (a symbolic link), EACCES, ENXIO (a socket), not a regular file: all the same
        # to the reader.
        raise ArtifactError(f"{what}: file {name} is not a readable regular file") from None


def check_directory(path: Path, what: str) -> None:
    """A version directory must be a real directory, not a link to one elsewhere."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise ArtifactError(f"{what} does not exist") from None
    if not stat.S_ISDIR(mode):
        raise ArtifactError(f"{what}: the version is not a directory (a symbolic link?)")
