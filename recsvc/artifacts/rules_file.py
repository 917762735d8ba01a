"""RulesFile: the business rules file (``rules.path``), read at start-up and re-read on change
(recsvc.artifacts.document_file says how: a bad new version is logged and skipped, the rules
before stay in force)."""

from __future__ import annotations

from pathlib import Path

from recsvc.artifacts.document_file import DocumentFile
from recsvc.core.rules import InvalidRules, RuleSet, RulesHolder, parse_rules


class RulesFile(DocumentFile[RuleSet]):
    """Keeps ``holder`` on the rules of the file at ``path``.

    Parameters
    ----------
    path : the JSON rules file
    holder : where the rules in force live (read by every Recommend)
    reload_seconds : how often to look for a change; 0: never
    max_rules, max_bytes : limits of one file (rules.max_rules, rules.max_file_bytes)
    """

    invalid = InvalidRules

    def __init__(
        self,
        path: Path,
        holder: RulesHolder,
        reload_seconds: float,
        max_rules: int = 1000,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        super().__init__(path, reload_seconds, max_bytes, "rules")
        self.holder = holder
        self.max_rules = max_rules

    def prepare(self, data: bytes, source: str) -> RuleSet:
        return parse_rules(data, source, self.max_rules)

    def apply(self, document: RuleSet) -> None:
        self.holder.swap(document)

    def version(self) -> str:
        return self.holder.version

    def describe(self, document: RuleSet) -> str:
        return f"{len(document.boosts)} boost(s), {len(document.pins)} pin(s)"
