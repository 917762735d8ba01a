"""Shared test helpers: a real server process on a free port, and small trained models."""

from __future__ import annotations

import os
import re
import signal
import socket
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


def run_recsvc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m recsvc ARGS`` to completion, with a clean environment; output captured."""
    return subprocess.run(
        recsvc_command(*args), env=server_env(), capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A private redis-server on a free port (nothing persisted); yields its URL."""
    port = port or free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError("redis-server did not start")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
