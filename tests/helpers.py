"""Test-only helpers: paths, one-shot CLI runs, synthetic interactions and event logs.

The helpers that benchmarks share with the tests (server and Redis processes, free ports,
synthetic product photos) live in `recsvc.testing`.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import numpy as np

from recsvc.core.state import EventType, Interaction
from recsvc.store.file_log import FileEventLog
from recsvc.testing import KINDS, ProductImages, recsvc_command, server_env

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_recsvc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m recsvc ARGS`` to completion, with a clean environment; output captured."""
    return subprocess.run(
        recsvc_command(*args), env=server_env(), capture_output=True, text=True, timeout=timeout
    )


def events(n: int, start: int = 0, users: int = 50, items: int = 80) -> list[Interaction]:
    """``n`` views with event ids ``e{start}`` onwards, of random users and items (seeded)."""
    rng = random.Random(start)
    return [
        Interaction(
            f"u{rng.randrange(users)}",
            f"i{rng.randrange(items)}",
            EventType.VIEW,
            1.0,
            1_767_225_600_000 + k,
            f"e{k}",
        )
        for k in range(start, start + n)
    ]


def write_log(path: Path, batch: list[Interaction]) -> None:
    """Append ``batch`` to the file event log at ``path``, as the server records it."""
    asyncio.run(FileEventLog(path).append(batch))


def kind_interactions(
    products: ProductImages, warm: list[str], users: int = 150, per_user: int = 8, seed: int = 7
) -> Path:
    """Interactions where each user sticks to one kind of product (only ``warm`` items)."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,weight"]
    for user in range(users):
        kind = KINDS[user % len(KINDS)]
        choices = [i for i in warm if products.kinds[i] == kind]
        for item_id in rng.choice(choices, size=min(per_user, len(choices)), replace=False):
            lines.append(f"u{user:03d},{item_id},1")
    path = products.directory / "interactions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
