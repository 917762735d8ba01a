"""Durable file writes: what a crash (or SIGKILL) at any moment leaves readable."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, content: bytes) -> None:
    """Write ``content`` as the whole of ``path`` and fsync it."""
    _write_synced(path, content, "wb")


def append_durably(path: Path, content: bytes, end: int | None = None) -> int:
    """Append ``content`` to ``path`` and fsync it: on disk once this returns. Returns the
    file's new size.

    A failed write or fsync (ENOSPC, EIO, any OSError) cuts the file back to where it ended
    before and re-raises, so that the next append never joins a torn record (which would make
    that record, acknowledged, unreadable). ``end``: where the last complete record ends, as
    the caller knows it; anything beyond it (a cut that itself failed) is dropped first.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(descriptor).st_size
        if end is not None and start > end:
            os.ftruncate(descriptor, end)
            start = end
        try:
            _write_all(descriptor, content)
            os.fsync(descriptor)
        except BaseException:
            _cut_back(descriptor, start)
            raise
        return start + len(content)
    finally:
        os.close(descriptor)


def _write_all(descriptor: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(descriptor, view) :]


def _cut_back(descriptor: int, size: int) -> None:
    """Best effort: when this fails too, the caller's next append cuts back (its ``end``)."""
    try:
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    except OSError:
        pass


def _write_synced(path: Path, content: bytes, mode: str) -> None:
    with path.open(mode) as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Readers see the old file or the new one, never part of one, also after a crash:
    ``write`` fills a temporary file beside ``path``, which is fsynced, renamed over it, and
    the directory fsynced. The temporary file is hidden (a leading dot) so that a writer
    killed before the rename leaves nothing that looks like data."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    fsync_path(temporary)
    os.replace(temporary, path)
    fsync_path(path.parent)


def replace_bytes_atomically(path: Path, content: bytes) -> None:
    replace_atomically(path, lambda temporary: temporary.write_bytes(content))
