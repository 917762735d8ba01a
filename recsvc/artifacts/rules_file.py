"""RulesFile: the business rules file (``rules.path``), read at start-up and re-read on change.

At start-up a missing or bad file is an error (the server does not start: serving without the
promotions someone configured would go unnoticed). While serving, the file is checked every
``rules.reload_seconds`` (one stat: inode, mtime and size; a Kubernetes ConfigMap update swaps
a symlink, which changes the inode); a changed file is parsed off the event loop and swapped in
with one assignment. A new version that does not parse or validate is logged, counted and
skipped: the rules before stay in force until the file changes again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from recsvc.core.rules import InvalidRules, RuleSet, RulesHolder, parse_rules

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]


class RulesFile:
    """Keeps ``holder`` on the rules of the file at ``path``.

    Parameters
    ----------
    path : the JSON rules file
    holder : where the rules in force live (read by every Recommend)
    reload_seconds : how often to look for a change; 0: never
    max_rules, max_bytes : limits of one file (rules.max_rules, rules.max_file_bytes)
    """

    def __init__(
        self,
        path: Path,
        holder: RulesHolder,
        reload_seconds: float,
        max_rules: int = 1000,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self.path = path
        self.holder = holder
        self.reload_seconds = reload_seconds
        self.max_rules = max_rules
        self.max_bytes = max_bytes
        self.reloads = 0
        self.failures = 0
        self._stamp: Stamp | None = None

    def load(self) -> RuleSet:
        """Read the file and put its rules in force; InvalidRules when it cannot be used."""
        stamp = self._stat()
        rules = self._read()
        self.holder.swap(rules)
        self._stamp = stamp
        log.info(
            "rules %s: version %s, %d boost(s), %d pin(s)",
            self.path,
            rules.version,
            len(rules.boosts),
            len(rules.pins),
        )
        return rules

    async def check_once(self) -> bool:
        """Reload the file if it changed; True when new rules came into force."""
        try:
            stamp = self._stat()
        except InvalidRules as exc:
            if self._stamp is not None:  # say it once, not every interval
                log.error("%s; the rules version %s stays in force", exc, self.holder.version)
                self.failures += 1
            self._stamp = None
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        before = self.holder.version
        try:
            rules = await asyncio.to_thread(self._read)
        except InvalidRules as exc:
            self.failures += 1
            log.error("%s; the rules version %s stays in force", exc, before)
            return False
        self.holder.swap(rules)
        self.reloads += 1
        log.info(
            "rules %s: version %s -> %s, %d boost(s), %d pin(s)",
            self.path,
            before,
            rules.version,
            len(rules.boosts),
            len(rules.pins),
        )
        return True

    async def run(self) -> None:
        """Check forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.reload_seconds)
            try:
                await self.check_once()
            except Exception:  # a bug here must not end rule updates for good
                log.exception("rules file: check failed; retrying in %.1fs", self.reload_seconds)

    def _stat(self) -> Stamp:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise InvalidRules(f"rules.path: cannot read {self.path}: {exc.strerror}") from None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _read(self) -> RuleSet:
        source = f"rules.path {self.path}"
        try:
            with self.path.open("rb") as file:
                data = file.read(self.max_bytes + 1)
        except OSError as exc:
            raise InvalidRules(f"{source}: cannot read: {exc.strerror}") from None
        if len(data) > self.max_bytes:
            raise InvalidRules(
                f"{source}: larger than {self.max_bytes} bytes (rules.max_file_bytes)"
            )
        return parse_rules(data, source, self.max_rules)
