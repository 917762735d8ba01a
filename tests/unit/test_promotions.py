"""The promotion history survives a torn last line and refuses oversized text."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.artifacts.promotions import HISTORY_NAME, read_history, record_promotion
from recsvc.errors import ArtifactError


def test_history_is_read_back_in_order_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    assert read_history(tmp_path) == []
    record_promotion(tmp_path, "v2", "v1", "ana", "won the test", "ranker", "new")
    with (tmp_path / HISTORY_NAME).open("ab") as handle:
        handle.write(b'{"at": "2026-')  # a crash mid-append
    record_promotion(tmp_path, "v1", None, "bo", "rollback")
    entries = read_history(tmp_path)
    assert [(e.version, e.previous, e.by) for e in entries] == [
        ("v2", "v1", "ana"),
        ("v1", "", "bo"),
    ]
    assert entries[0].experiment == "ranker" and entries[1].reason == "rollback"


def test_oversized_reason_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="--reason: at most"):
        record_promotion(tmp_path, "v2", "v1", "ana", "x" * 5000)
    assert not (tmp_path / HISTORY_NAME).exists()
