"""Where a tune keeps its trials: an optuna journal file next to ``--out``, so that a tune that
was interrupted, crashed or killed resumes from the trials it finished.

One tune at a time per journal (an exclusive lock on the file, held for the whole run); the
leftovers of a killed run are cleared on opening: optuna's own append lock (a symbolic link
``JOURNAL.lock``), a last line cut short, and trials still marked running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from recsvc.errors import ConfigError


def journal_path(out: Path) -> Path:
    """The trial journal of a tune that writes its parameters to ``out``."""
    return out.with_name(out.name + ".optuna.log")


@contextlib.contextmanager
def open_journal(path: Path) -> Iterator[JournalStorage]:
    """The optuna storage in ``path`` (created if missing), locked for this process."""
    if not path.parent.is_dir():
        raise ConfigError(f"--out: directory {path.parent} does not exist")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"--out: another recsvc tune is using {path}; wait for it or choose another --out"
            ) from None
        _clear_leftovers(path, descriptor)
        yield JournalStorage(JournalFileBackend(str(path)))
    finally:
        os.close(descriptor)


def _clear_leftovers(path: Path, descriptor: int) -> None:
    # Only a killed writer leaves optuna's append lock behind (it is removed after each
    # append); nobody else can hold it while we hold the file lock.
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(f"{path}.lock"):
            os.unlink(f"{path}.lock")
    # A write cut short by a kill leaves a last line without its newline: optuna would join
    # the next record to it and then fail to read the journal.
    size = os.fstat(descriptor).st_size
    if size == 0:
        return
    content = os.pread(descriptor, size, 0)
    if not content.endswith(b"\n"):
        os.ftruncate(descriptor, content.rfind(b"\n") + 1)
        os.fsync(descriptor)


def fail_interrupted_trials(study: optuna.Study) -> int:
    """Mark the trials a killed run left running as failed (they never finish); returns how
    many. Safe because the journal is locked to this process."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(running)
