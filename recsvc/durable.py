"""Safe file I/O: durable writes (what a crash or SIGKILL at any moment leaves readable) and
reads that never block on, or follow into, something that is not a regular file."""

from __future__ import annotations

import errno
import io
import os
import stat
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


class NotRegularFile(OSError):
    """The path names a FIFO, device, socket or directory, not a regular file."""


def open_regular_file(path: Path, follow_links: bool = True) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file (``follow_links`` False: a
    symbolic link is refused too, with ELOOP). O_NONBLOCK because opening a FIFO would
    otherwise wait for a writer, forever; the type is checked on the open descriptor, so a
    rename in between cannot swap in something else."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    descriptor = os.open(path, flags)
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path} is not a regular file")
        return io.BufferedReader(io.FileIO(descriptor, "rb"))
    except BaseException:
        os.close(descriptor)
        raise
