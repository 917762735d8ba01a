"""Fault tests under load: Redis killed, 20 hot swaps, SIGTERM, damaged artefacts.

Load comes from a few client threads calling Recommend back to back against a real server on
a free port (bounded in time; loopback only). Every failed call is recorded with its time and
status code.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.testing import free_port, redis_server, running_server, server_env

pytestmark = pytest.mark.fault


@dataclass
class Load:
    calls: int = 0
    failures: list[tuple[float, grpc.StatusCode]] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)


@contextmanager
def load_on(target: str, users: list[str], threads: int = 3, limit_s: float = 60) -> Iterator[Load]:
    load = Load()
    lock = threading.Lock()

    def worker(n: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            deadline = time.monotonic() + limit_s
            i = n
            while not load.stop.is_set() and time.monotonic() < deadline:
                request = pb.RecommendRequest(user_id=users[i % len(users)], k=5)
                i += threads
                try:
                    response = stub.Recommend(request, timeout=5)
                    with lock:
                        load.calls += 1
                        load.versions.add(response.model_version)
                except grpc.RpcError as exc:
                    with lock:
                        load.calls += 1
                        load.failures.append((time.monotonic(), exc.code()))
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        time.sleep(0.01)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    try:
        time.sleep(0.3)
        yield load
    finally:
        load.stop.set()
        for thread in workers:
            thread.join(timeout=30)


def store_health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="store")
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_under_load(model_store: Path, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(
        RECSVC_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    users = [f"u{n:05d}" for n in range(300)]
    with running_server(args, env) as proc, load_on(proc.target, users) as load:
        with redis_server(port):
            time.sleep(1.0)
            assert store_health(proc.target) == health_pb2.HealthCheckResponse.SERVING
        time.sleep(1.5)  # Redis is dead, load continues
        assert store_health(proc.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with redis_server(port):
            restarted = time.monotonic()
            while store_health(proc.target) != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() - restarted < 5, "not back to normal within 5 s"
                time.sleep(0.1)
            time.sleep(0.5)
    assert load.calls > 100
    assert load.failures == [], f"{len(load.failures)} failed calls: {load.failures[:3]}"


def clone_version(store: Path, source: str, name: str) -> None:
    """A new version directory with the same (verified) files and its own name."""
    target = store / "versions" / name
    shutil.copytree(store / "versions" / source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["model_version"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_twenty_hot_swaps_under_load_fail_no_call(model_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    original = (store / "LATEST").read_text().strip()
    env = server_env(RECSVC_SERVING__MODEL_POLL_SECONDS="0.05", RECSVC_SERVER__DRAIN_SECONDS="0")
    args = ["serve", "--model-store", str(store), "--port", "0"]
    users = [f"u{n:05d}" for n in range(300)]
    names = [f"v99990101-000000-{n:06d}" for n in range(20)]
    with (
        running_server(args, env) as proc,
        load_on(proc.target, users) as load,
        grpc.insecure_channel(proc.target) as channel,
    ):
        stub = pb_grpc.RecommenderStub(channel)
        for name in names:
            clone_version(store, original, name)
            (store / "LATEST.tmp").write_text(name + "\n")
            (store / "LATEST.tmp").replace(store / "LATEST")
            deadline = time.monotonic() + 10
            while stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version != name:
                assert time.monotonic() < deadline, f"{name} was not swapped in"
                time.sleep(0.02)
    assert load.failures == [], f"{len(load.failures)} failed calls: {load.failures[:3]}"
    assert set(names) <= load.versions | {names[-1]}
    assert len(load.versions) >= 10  # the load really ran across the swaps


@pytest.mark.slow
def test_damaged_versions_are_rejected_under_load(model_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    original = (store / "LATEST").read_text().strip()
    env = server_env(RECSVC_SERVING__MODEL_POLL_SECONDS="0.05", RECSVC_SERVER__DRAIN_SECONDS="0")
    args = ["serve", "--model-store", str(store), "--port", "0"]
    with running_server(args, env) as proc, load_on(proc.target, ["u00001", "x"]) as load:
        for name, damage in [
            ("v99990101-000000-000001", "truncate"),
            ("v99990101-000000-000002", "flip"),
        ]:
            clone_version(store, original, name)
            path = store / "versions" / name / "user_index.hnsw"
            data = bytearray(path.read_bytes())
            if damage == "truncate":
                data = data[: len(data) // 2]
            else:
                data[100] ^= 0xFF
            path.write_bytes(bytes(data))
            (store / "LATEST").write_text(name + "\n")
            time.sleep(0.5)
    assert load.failures == []
    assert load.versions == {original}


@pytest.mark.slow
def test_sigterm_under_load_fails_only_with_unavailable_after_readiness_flips(
    model_store: Path,
) -> None:
    env = server_env(
        RECSVC_SERVER__DRAIN_SECONDS="1.0",
        RECSVC_SERVER__GRACE_SECONDS="1",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    users = [f"u{n:05d}" for n in range(300)]
    with running_server(args, env) as proc:
        with load_on(proc.target, users, threads=8, limit_s=30) as load:
            time.sleep(0.5)
            sent = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            flipped = None
            with grpc.insecure_channel(proc.target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while flipped is None and time.monotonic() - sent < 5:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        flipped = time.monotonic()
                    time.sleep(0.01)
            assert proc.process.wait(timeout=20) == 0
            time.sleep(0.3)
        assert flipped is not None, "health never turned NOT_SERVING"
    assert load.calls > 50
    assert all(code == grpc.StatusCode.UNAVAILABLE for _, code in load.failures), [
        f for f in load.failures if f[1] != grpc.StatusCode.UNAVAILABLE
    ][:5]
    assert all(at >= flipped for at, _ in load.failures)
