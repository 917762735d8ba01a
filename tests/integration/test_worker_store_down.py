"""A worker whose Redis is down: one line and exit 2 with --once; in loop mode it keeps
retrying instead of dying (a Redis restart must not need the worker restarted)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from recsvc.testing import free_port, recsvc_command, server_env


def _ingest(tmp_path: Path, *extra: str) -> list[str]:
    return recsvc_command(
        "worker", "ingest", "--interaction-store", str(tmp_path / "istore"), *extra
    )


def test_once_with_redis_down_is_one_line(tmp_path: Path) -> None:
    env = server_env(RECSVC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = subprocess.run(
        _ingest(tmp_path, "--once"), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("recsvc: error: redis:"), done.stderr


def test_loop_mode_waits_out_redis_down(tmp_path: Path) -> None:
    env = server_env(
        RECSVC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", RECSVC_LOG_LEVEL="WARNING"
    )
    process = subprocess.Popen(
        _ingest(tmp_path, "--interval", "0.2"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        assert process.stderr is not None
        retries = 0
        while retries < 2 and time.monotonic() < deadline:
            line = process.stderr.readline()
            retries += "round failed, retrying" in line
        assert retries >= 2 and process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
