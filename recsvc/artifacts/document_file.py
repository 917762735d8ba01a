"""DocumentFile: a JSON document the server reads at start-up and re-reads when it changes.

At start-up a missing or bad file is an error (the server does not start: serving without what
someone configured would go unnoticed). While serving, the file is checked every
``reload_seconds`` (one stat: inode, mtime and size; a Kubernetes ConfigMap update swaps a
symlink, which changes the inode); a changed file is read and prepared off the event loop and
put in force at once. A new version that cannot be used is logged, counted and skipped: the one
before stays in force until the file changes again.

Subclasses say how to turn the bytes into a document (:meth:`prepare`, on a worker thread: it
may load what the document names), how to put it in force (:meth:`apply`, one swap) and how to
describe it in a log line. The business rules (recsvc.artifacts.rules_file) and the experiments
(recsvc.artifacts.experiments_file) are two.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Generic, TypeVar

from recsvc.errors import ConfigError

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]
Document = TypeVar("Document")


class DocumentFile(ABC, Generic[Document]):
    """Keeps the document of the file at ``path`` in force.

    Parameters
    ----------
    path : the JSON file
    reload_seconds : how often to look for a change; 0: never
    max_bytes : the largest file read
    setting : the settings section, for messages (``rules`` -> ``rules.path``)
    """

    # Raised for a file that cannot be used (a ConfigError subclass).
    invalid: type[ConfigError] = ConfigError

    def __init__(self, path: Path, reload_seconds: float, max_bytes: int, setting: str) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self.max_bytes = max_bytes
        self.setting = setting
        self.reloads = 0
        self.failures = 0
        self._stamp: Stamp | None = None

    # ------------------------------------------------------------------ what subclasses say

    @abstractmethod
    def prepare(self, data: bytes, source: str) -> Document:
        """The document of ``data`` ready to apply (runs on a worker thread while serving);
        ``self.invalid`` naming ``source`` and the field when it cannot be used."""

    @abstractmethod
    def apply(self, document: Document) -> None:
        """Put ``document`` in force (on the event loop: a swap, nothing slow)."""

    @abstractmethod
    def version(self) -> str:
        """The version in force now (for log lines)."""

    @abstractmethod
    def describe(self, document: Document) -> str:
        """What the document holds, for the log line that reports it (e.g. "3 rule(s)")."""

    # ------------------------------------------------------------------ reading and reloading

    def load(self) -> Document:
        """Read the file and put its document in force; ``self.invalid`` when it cannot be
        used. Blocking: for start-up."""
        stamp = self._stat()
        document = self._read()
        self.apply(document)
        self._stamp = stamp
        log.info(
            "%s %s: version %s, %s",
            self.setting,
            self.path,
            self.version(),
            self.describe(document),
        )
        return document

    async def check_once(self) -> bool:
        """Reload the file if it changed; True when a new document came into force."""
        try:
            stamp = self._stat()
        except self.invalid as exc:
            if self._stamp is not None:  # say it once, not every interval
                log.error("%s; the %s version %s stays in force", exc, self.setting, self.version())
                self.failures += 1
            self._stamp = None
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        before = self.version()
        try:
            document = await asyncio.to_thread(self._read)
        except self.invalid as exc:
            self.failures += 1
            log.error("%s; the %s version %s stays in force", exc, self.setting, before)
            return False
        self.apply(document)
        self.reloads += 1
        log.info(
            "%s %s: version %s -> %s, %s",
            self.setting,
            self.path,
            before,
            self.version(),
            self.describe(document),
        )
        return True

    async def run(self) -> None:
        """Check forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.reload_seconds)
            try:
                await self.check_once()
            except Exception:  # a bug here must not end updates for good
                log.exception(
                    "%s file: check failed; retrying in %.1fs", self.setting, self.reload_seconds
                )

    def _stat(self) -> Stamp:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise self.invalid(
                f"{self.setting}.path: cannot read {self.path}: {exc.strerror}"
            ) from None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _read(self) -> Document:
        source = f"{self.setting}.path {self.path}"
        try:
            with self.path.open("rb") as file:
                data = file.read(self.max_bytes + 1)
        except OSError as exc:
            raise self.invalid(f"{source}: cannot read: {exc.strerror}") from None
        if len(data) > self.max_bytes:
            raise self.invalid(
                f"{source}: larger than {self.max_bytes} bytes ({self.setting}.max_file_bytes)"
            )
        return self.prepare(data, source)
