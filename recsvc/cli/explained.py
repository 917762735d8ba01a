"""`recsvc call recommend --explain`: an answer with its reasons, as text for people."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsvc.core.queries import Reason, ReasonKind

if TYPE_CHECKING:
    from recsvc.core.queries import Recommendation


def format_explained(result: Recommendation) -> str:
    """One line per item (rank, id, score, rule), then one indented line per reason."""
    lines = [f"model {result.model_version}, strategy {result.strategy}"]
    width = max((len(item.item_id) for item in result.items), default=0)
    for rank, item in enumerate(result.items, start=1):
        ruled = f"  (rule {item.rule})" if item.rule else ""
        lines.append(f"{rank:>3}. {item.item_id:<{width}}  score {item.score:.4f}{ruled}")
        lines += [f"       {describe(reason)}" for reason in item.reasons]
        if not item.reasons:
            lines.append("       (no reason: not personalised)")
    return "\n".join(lines)


def describe(reason: Reason) -> str:
    """A reason in words (docs/explanations.md says what each kind means)."""
    if reason.kind is ReasonKind.RULE:
        return f"rule {reason.rule} moved it"
    if reason.kind is ReasonKind.VISUAL_NEIGHBOUR:
        return f"looks like {reason.item_id} (image cosine {reason.contribution:.3f})"
    return f"history item {reason.item_id} ({reason.contribution:+.4f})"
