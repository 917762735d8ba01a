"""The README's two commands: CI runs the test command unchanged."""

from __future__ import annotations

from tests.helpers import ROOT


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# README test command:") + 1]
    assert command in (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("## ")]
    assert "bash deploy/bootstrap.sh && .venv/bin/recsvc demo" in head
    assert "bash deploy/bootstrap.sh --dev &&" in head
