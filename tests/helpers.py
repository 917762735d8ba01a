"""Shared test helpers: a real server process on a free port, and small trained models."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    target: str
    output: list[str]


def recsvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsvc", *args]


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    env.update({"OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@contextmanager
def running_server(
    args: list[str], env: dict[str, str], startup_timeout: float = 60.0
) -> Iterator[ServerProcess]:
    """Start ``python -m recsvc ARGS`` and wait for its 'listening on' line; SIGTERM on exit."""
    process = subprocess.Popen(
        recsvc_command(*args),
        env=env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output: list[str] = []
    deadline = time.monotonic() + startup_timeout
    assert process.stdout is not None
    target = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if match := LISTENING.search(line):
            target = f"{match.group(1)}:{match.group(2)}"
            break
    if target is None:
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(output))
    server = ServerProcess(process, target, output)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.stdout.close()
