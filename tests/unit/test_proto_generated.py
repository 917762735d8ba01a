"""The committed generated code must be exactly what protoc makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "recsvc" / "_proto"
    committed = ROOT / "recsvc" / "_proto"
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed_files = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh_files == committed_files
    stale = [
        str(p) for p in fresh_files if (fresh / p).read_bytes() != (committed / p).read_bytes()
    ]
    assert not stale, f"regenerate with `python protos/generate.py`: {stale} differ"


def test_every_message_field_is_documented() -> None:
    """Each field and rpc in the .proto has a comment line right above it (enum values may go
    without: their names say it all)."""
    lines = (ROOT / "protos" / "recsvc" / "v1" / "recommender.proto").read_text().splitlines()
    undocumented = []
    in_enum = False
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("enum "):
            in_enum = True
        elif stripped == "}":
            in_enum = False
        is_field = (
            "=" in stripped
            and stripped.endswith(";")
            and not stripped.startswith(("//", "syntax", "package"))
        )
        is_rpc = stripped.startswith("rpc ")
        documented = lines[number - 1].strip().startswith("//")
        if ((is_field and not in_enum) or is_rpc) and not documented:
            undocumented.append(f"{number + 1}: {stripped}")
    assert not undocumented, undocumented
