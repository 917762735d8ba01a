"""Support for recsvc's tests and benchmarks: real processes on free ports, synthetic photos.

For tests (``tests/``) and benchmarks (``bench/``) only; the service never imports it (an
import-linter contract in pyproject.toml keeps it so). Everything here runs the real thing:
``python -m recsvc`` in a child process, a private ``redis-server``, JPEG files on disk.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from PIL import Image, ImageDraw

from recsvc.data.matrix import Interactions, ReadReport
from recsvc.fitting.factors import TrainedFactors

# The directory that holds the recsvc package: the child processes run from it, so that
# ``python -m recsvc`` imports this same copy of the code.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+)")


# -- processes ------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A running ``recsvc serve``: its process, its gRPC target and the output read so far."""

    process: subprocess.Popen[str]
    target: str
    output: list[str]


def recsvc_command(*args: str) -> list[str]:
    """The argv of ``python -m recsvc ARGS`` with this interpreter."""
    return [sys.executable, "-m", "recsvc", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``RECSVC_*`` setting, plus ``extra``."""
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
        cwd=PACKAGE_PARENT,
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


@dataclass
class RedisCluster:
    """A private Redis Cluster: its URL (``redis+cluster://``) and each node's process."""

    url: str
    nodes: dict[int, subprocess.Popen[bytes]]  # by port

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash: no failover handshake)."""
        self.nodes[port].kill()
        self.nodes[port].wait(timeout=10)


def _redis_cli(port: int, *args: str, timeout: float = 30) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


@contextmanager
def redis_cluster(directory: Path, masters: int = 3, replicas: int = 1) -> Iterator[RedisCluster]:
    """A real Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on free
    local ports (nothing persisted; node timeout 1 s, so that a replica takes over a killed
    master within a few seconds); waits until every node reports ``cluster_state:ok`` and
    every replica is in sync with its master. Each node logs to ``directory/<port>/redis.log``."""
    ports: list[int] = []
    while len(ports) < masters * (1 + replicas):
        port = _free_cluster_port()
        if port not in ports:
            ports.append(port)
    nodes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in ports:
            node_dir = directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            nodes[port] = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--dir",
                    str(node_dir),
                    "--logfile",
                    str(node_dir / "redis.log"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    # A replica syncs at once (default: after 5 s), so it can take over.
                    "--repl-diskless-sync-delay",
                    "0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        _wait_for(ports, _answers, "redis-server")
        _redis_cli(
            ports[0],
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in ports),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
            timeout=60,
        )
        _wait_for(ports, _cluster_ok, "cluster_state:ok")
        _wait_for(ports, _replica_in_sync, "replicas in sync")  # else it cannot take over
        yield RedisCluster("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports), nodes)
    finally:
        for process in nodes.values():
            process.terminate()
        for process in nodes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 55_000)
        try:
            with socket.socket() as first, socket.socket() as bus:
                first.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port


def _answers(port: int) -> bool:
    return _redis_cli(port, "ping").strip() == "PONG"


def _cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in _redis_cli(port, "cluster", "info")


def _replica_in_sync(port: int) -> bool:
    info = _redis_cli(port, "info", "replication")
    return "role:master" in info or "master_link_status:up" in info


def _wait_for(
    ports: list[int], condition: Callable[[int], bool], what: str, timeout: float = 30
) -> None:
    """Wait until ``condition`` holds on every port."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                if condition(port):
                    break
            except (subprocess.SubprocessError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached on port {port} in {timeout:.0f} s")
            time.sleep(0.1)


# -- synthetic product photos ---------------------------------------------------------------
# Three kinds of product that look different: each kind has its own shape and colour family,
# drawn at a random position, size and shade on a white background, so a CNN puts items of one
# kind near each other without any of our code having to be right about it.

KINDS = ("shirts", "shoes", "bags")


@dataclass(frozen=True)
class ProductImages:
    """Photos written by `make_product_images`: their directory, catalogue CSV, ids, kinds."""

    directory: Path
    catalogue: Path
    ids: list[str]
    kinds: dict[str, str]

    def path(self, item_id: str) -> Path:
        return self.directory / f"{item_id}.jpg"

    def copy_nested(self, root: Path, count: int) -> list[str]:
        """The first ``count`` photos copied to ``root/<first 3 characters of the id>/<id>.jpg``
        (the layout of large catalogues); their ids."""
        ids = self.ids[:count]
        for item_id in ids:
            folder = root / item_id[:3]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.path(item_id), folder / f"{item_id}.jpg")
        return ids


def product_picture(kind: str, rng: random.Random, size: int = 128) -> Image.Image:
    """One RGB photo of a product of ``kind`` (one of `KINDS`)."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    shade = rng.randint(0, 60)
    x, y = rng.randint(4, 24), rng.randint(4, 24)
    w, h = rng.randint(70, 96), rng.randint(70, 96)
    if kind == "shirts":  # red T-shapes
        colour = (200 + shade // 2, shade, shade)
        draw.rectangle([x + w // 4, y, x + 3 * w // 4, y + h], fill=colour)
        draw.rectangle([x, y, x + w, y + h // 4], fill=colour)
    elif kind == "shoes":  # blue wide ellipses
        colour = (shade, shade, 190 + shade)
        draw.ellipse([x, y + h // 3, x + w, y + h], fill=colour)
    else:  # green bags with a handle
        colour = (shade, 150 + shade, shade)
        draw.rectangle([x, y + h // 3, x + w, y + h], fill=colour)
        draw.arc([x + w // 4, y, x + 3 * w // 4, y + 2 * h // 3], 180, 360, fill=colour, width=6)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as a JPEG file (quality 90)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_product_images(directory: Path, per_kind: int = 20, seed: int = 7) -> ProductImages:
    """``per_kind`` JPEG photos of each kind and a catalogue CSV (item_id,image,category,colour)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    kinds: dict[str, str] = {}
    lines = ["item_id,image,category,colour"]
    for number in range(per_kind * len(KINDS)):
        kind = KINDS[number % len(KINDS)]
        item_id = f"p{number:03d}"
        (directory / f"{item_id}.jpg").write_bytes(jpeg_bytes(product_picture(kind, rng)))
        ids.append(item_id)
        kinds[item_id] = kind
        lines.append(f"{item_id},{item_id}.jpg,{kind},plain")
    catalogue = directory / "catalogue.csv"
    catalogue.write_text("\n".join(lines) + "\n")
    return ProductImages(directory, catalogue, ids, kinds)


def clustered_model_data(
    n_items: int, n_users: int, dim: int, user_prefix: str = "u"
) -> tuple[Interactions, TrainedFactors]:
    """Synthetic training data and factors: items and users around 50 cluster centres, item
    norms lognormal (as ALS factors' are, which is what makes inner-product graphs lose
    recall), 20 random history items per user; ids ``i<n>`` and ``<user_prefix><n>``."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, dim))
    items = centres[rng.integers(0, 50, n_items)] + 0.5 * rng.normal(size=(n_items, dim))
    items *= rng.lognormal(sigma=0.7, size=(n_items, 1)) * 0.05
    users = centres[rng.integers(0, 50, n_users)] + 0.5 * rng.normal(size=(n_users, dim))
    rows = np.repeat(np.arange(n_users), 20)
    cols = rng.integers(0, n_items, size=len(rows))
    history = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), (n_users, n_items))
    history.sum_duplicates()
    history.data[:] = 1.0
    data = Interactions(
        [f"{user_prefix}{u}" for u in range(n_users)],
        [f"i{i}" for i in range(n_items)],
        history,
        None,
        ReadReport("synthetic", rows_read=history.nnz),
    )
    factors = TrainedFactors(users.astype(np.float32), items.astype(np.float32), "cpu", 0.0)
    return data, factors
