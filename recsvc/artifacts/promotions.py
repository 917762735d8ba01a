"""The model store's promotion history: who pointed LATEST at which version, when and why.

``HISTORY`` in the store's root is JSON lines, appended and fsynced before LATEST moves (a
record of a switch that then failed says so in the next line's ``previous``; a switch never goes
unrecorded). Reading skips lines that do not parse (a torn last line after a crash) and reads at
most the last ``MAX_HISTORY_BYTES``: the history is for people, not for serving.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from recsvc.durable import append_durably
from recsvc.errors import ArtifactError

log = logging.getLogger(__name__)

HISTORY_NAME = "HISTORY"
MAX_HISTORY_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 1000


@dataclass(frozen=True)
class Promotion:
    at: str  # ISO 8601, UTC
    version: str
    previous: str  # the version LATEST pointed to before ("" for none)
    by: str
    reason: str
    experiment: str = ""  # set when an experiment's arm was promoted
    arm: str = ""


def record_promotion(
    root: Path,
    version: str,
    previous: str | None,
    by: str,
    reason: str,
    experiment: str = "",
    arm: str = "",
) -> Promotion:
    """Append one promotion to the store's history (durably) and return it."""
    for field, text in (("by", by), ("reason", reason)):
        if len(text) > MAX_TEXT_CHARS:
            raise ArtifactError(f"--{field}: at most {MAX_TEXT_CHARS} characters")
    entry = Promotion(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        version=version,
        previous=previous or "",
        by=by,
        reason=reason,
        experiment=experiment,
        arm=arm,
    )
    line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
    try:
        if not _ends_a_line(root / HISTORY_NAME):
            line = "\n" + line  # after a torn line: the record starts a line of its own
        append_durably(root / HISTORY_NAME, line.encode())
    except OSError as exc:
        raise ArtifactError(
            f"{root / HISTORY_NAME}: cannot record the promotion: {exc.strerror}"
        ) from None
    return entry


def _ends_a_line(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return True
            handle.seek(size - 1)
            return handle.read(1) == b"\n"
    except FileNotFoundError:
        return True


def read_history(root: Path) -> list[Promotion]:
    """The recorded promotions, oldest first (the last MAX_HISTORY_BYTES of them)."""
    path = root / HISTORY_NAME
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - MAX_HISTORY_BYTES))
            data = handle.read(MAX_HISTORY_BYTES)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from None
    entries = []
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            raw = json.loads(line)
            entries.append(Promotion(**{k: str(raw.get(k, "")) for k in Promotion.__annotations__}))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
            log.warning("%s: line %d is not a promotion record; skipped", path, number)
    return entries
