"""Test-only helpers: paths, one-shot CLI runs, synthetic interactions and event logs.

The helpers that benchmarks share with the tests (server and Redis processes, free ports,
synthetic product photos) live in `recsvc.testing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np

from recsvc.core.state import EventType, Interaction
from recsvc.store.file_log import FileEventLog
from recsvc.testing import KINDS, ProductImages, recsvc_command, server_env

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_recsvc(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``recsvc ARGS`` run to completion in this process, as ``python -m recsvc`` would run it
    with no ``RECSVC_*`` variable in its environment but ``settings``: the exit status, stdout
    and stderr come back as from :func:`subprocess.run`.

    In this process because a new one starts torch and the rest again (seconds a command on a
    2-core machine, most of the suite's time before). Image loaders decode inline by default:
    a fork of this process, which holds gRPC channels and threads, is not safe. Commands whose
    process matters (signals, long-running servers, loader processes) run as processes."""
    from recsvc.cli import main  # the CLI's own imports stay out of the helpers' import time

    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    kept_handlers, kept_level = root.handlers[:], root.level
    kept_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    environment = server_env(RECSVC_IMAGES__LOADER_WORKERS="0", **settings)
    try:
        with (
            mock.patch.dict(os.environ, environment, clear=True),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                status = main(list(args))
            except SystemExit as exit_:  # argparse's errors and --help, and the commands'
                status = exit_status(exit_)
    finally:
        root.handlers[:] = kept_handlers
        root.setLevel(kept_level)
        for number, handler in kept_signals.items():
            signal.signal(number, handler)
    return subprocess.CompletedProcess(
        ["recsvc", *args], status, stdout.getvalue(), stderr.getvalue()
    )


def run_recsvc_process(
    *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m recsvc ARGS`` as a process of its own, to completion, with no ``RECSVC_*``
    variable in its environment but those of ``env``; output captured."""
    return subprocess.run(
        recsvc_command(*args),
        env=server_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def exit_status(exit_: SystemExit) -> int:
    """The status Python exits with on ``exit_``; a message goes to stderr, as Python does."""
    if exit_.code is None or isinstance(exit_.code, int):
        return exit_.code or 0
    print(exit_.code, file=sys.stderr)
    return 1


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


def write_log(path: Path, batch: list[Interaction], per_request: int | None = None) -> None:
    """Append ``batch`` to the file event log at ``path`` as the server records it: one line
    per request, of ``per_request`` events each (default: the whole batch in one)."""
    size = per_request or max(1, len(batch))

    async def append() -> None:
        log = FileEventLog(path)
        for start in range(0, len(batch), size):
            await log.append(batch[start : start + size])

    asyncio.run(append())


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


# Run by ForkServer's process: imports what the commands need once, then forks a child per
# request. Requests and answers are JSON lines on stdin and stdout.
_FORK_SERVER = """
import json, os, sys, traceback
for module in sys.argv[1:]:
    __import__(module)
from recsvc.cli import main
from tests.helpers import exit_status
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "wait":
        _, status = os.waitpid(request["pid"], 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        try:
            code = main(request["args"])
        except SystemExit as exc:
            code = exit_status(exc)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps(pid), flush=True)
"""


class ForkServer:
    """A process that imports the command line (and ``preload``, e.g. torch) once and forks
    a child per command: real processes, to be SIGKILLed at random moments, that spend their
    time in the command rather than in start-up (seconds of imports for the image commands).
    Each child's stdout and stderr go to ``output``."""

    def __init__(
        self,
        env: dict[str, str],
        output: Path,
        preload: tuple[str, ...] = (),
        timeout: float = 300.0,
    ):
        self.output = output
        self.timeout = timeout  # for each answer: a hung child fails the test, not the run
        self._children: set[int] = set()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER, *preload],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, request: dict[str, object]) -> int:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], self.timeout)
        assert ready, f"no answer to {request['op']} in {self.timeout:g} s"
        answer = self._process.stdout.readline()
        assert answer, f"the fork server exited ({self._process.wait()})"
        return int(json.loads(answer))

    def start(self, *args: str) -> int:
        """Start ``recsvc ARGS`` in a child; its pid."""
        pid = self._ask({"op": "start", "args": list(args), "output": str(self.output)})
        self._children.add(pid)
        return pid

    def wait(self, pid: int) -> int:
        """Wait for the child ``pid`` to end; its exit status (-9 when SIGKILLed)."""
        status = self._ask({"op": "wait", "pid": pid})
        self._children.discard(pid)
        return status

    def run(self, *args: str) -> int:
        """``recsvc ARGS`` in a child, to the end; its exit status."""
        return self.wait(self.start(*args))

    def close(self) -> None:
        """End the children still running (a test that failed half-way), then the server."""
        for pid in self._children:
            os.kill(pid, signal.SIGKILL)
        assert self._process.stdin is not None
        self._process.stdin.close()  # the server reaps its children as it exits
        self._process.wait(timeout=30)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
