"""Serving from several processes: one ``recsvc serve`` worker per core on one port.

Python serves one request at a time per process, so a server uses every core by running
several worker processes that share the port through SO_REUSEPORT (the kernel spreads
connections across them). Each worker loads and verifies the model itself and runs its own
model watcher, so hot swaps happen in every worker. User state must be shared, so more than
one worker needs Redis.

The supervisor prints ``listening on HOST:PORT`` once every worker is ready, forwards SIGTERM
and SIGINT to the workers (each drains as a single server would), and exits non-zero if a
worker dies on its own (an orchestrator restarts the whole pod).

Metrics: the supervisor serves ``server.metrics_port`` itself. Each worker serves its own on a
free loopback port, and a scrape of the supervisor's endpoint scrapes them all and merges the
pages (recsvc.metrics.workers), so a pod has one endpoint and no worker's calls are missed.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from types import FrameType

from prometheus_client import CollectorRegistry

from recsvc.config import Settings
from recsvc.errors import ConfigError
from recsvc.metrics import serve as serve_metrics
from recsvc.metrics.workers import WorkersCollector

log = logging.getLogger(__name__)
LISTENING = re.compile(r"listening on \S+:(\d+)")
LOOPBACK = "127.0.0.1"


def pick_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_workers(settings: Settings, argv: list[str]) -> int:
    """Start ``settings.server.workers`` workers running ``recsvc serve argv``; return the exit
    code once they have all stopped."""
    workers = settings.server.workers
    if not settings.redis_url:
        raise ConfigError(
            "server.workers: more than one worker needs RECSVC_REDIS_URL (in-process user "
            "state and the file event log cannot be shared between processes)"
        )
    port = settings.server.port or pick_port(settings.server.host)
    metrics_ports = [pick_port(LOOPBACK) for _ in range(workers)]
    if settings.server.metrics_port:
        registry = CollectorRegistry()
        registry.register(WorkersCollector(metrics_ports))
        serve_metrics(
            registry,
            settings.server.metrics_port,
            settings.server.metrics_host or settings.server.host,
        )
    processes: list[subprocess.Popen[str]] = []
    for index in range(workers):
        env = {
            **os.environ,
            "RECSVC_SERVER__WORKERS": "1",
            "RECSVC_SERVER__REUSE_PORT": "true",
            "RECSVC_SERVER__PORT": str(port),
        }
        if settings.server.metrics_port:
            # Scraped by this process only (one endpoint per pod, see the module docstring).
            env["RECSVC_SERVER__METRICS_HOST"] = LOOPBACK
            env["RECSVC_SERVER__METRICS_PORT"] = str(metrics_ports[index])
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "recsvc", "serve", *argv],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not LISTENING.search(line):
            forward(signal.SIGTERM, None)
            for other in processes:
                other.wait()
            raise ConfigError(f"a worker failed to start (exit code {process.poll()})")
        # Keep draining the worker's stdout so that it never blocks on a full pipe.
        threading.Thread(target=_drain, args=(process,), daemon=True).start()
    print(f"listening on {settings.server.host}:{port}", flush=True)
    log.info("%d workers serving on port %d", workers, port)
    codes = [process.wait() for process in processes]
    return max(codes, key=abs) if any(codes) else 0


def _drain(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
