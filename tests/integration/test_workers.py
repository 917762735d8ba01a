"""Several server processes on one port (SO_REUSEPORT), with hot swap in each."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.testing import recsvc_command, redis_server, running_server, server_env


def model_version_via_new_connection(target: str) -> str:
    # A fresh channel per call: the kernel spreads new connections over the workers.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        response = pb_grpc.RecommenderStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        return str(response.model_version)


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.mark.redis
@pytest.mark.slow
def test_two_workers_share_the_port_and_each_swaps_models(
    model_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    original = (store / "LATEST").read_text().strip()
    with redis_server() as url:
        env = server_env(
            RECSVC_REDIS_URL=url,
            RECSVC_SERVING__MODEL_POLL_SECONDS="0.1",
            RECSVC_SERVER__DRAIN_SECONDS="0",
        )
        args = ["serve", "--model-store", str(store), "--port", "0", "--workers", "2"]
        with running_server(args, env) as proc:
            assert len(worker_pids(proc.process.pid)) == 2
            versions = {model_version_via_new_connection(proc.target) for _ in range(10)}
            assert versions == {original}
            # Publish a new version: every worker must pick it up.
            new = "v99990101-000000-000001"
            shutil.copytree(store / "versions" / original, store / "versions" / new)
            manifest = json.loads((store / "versions" / new / "manifest.json").read_text())
            manifest["model_version"] = new
            (store / "versions" / new / "manifest.json").write_text(json.dumps(manifest))
            (store / "LATEST").write_text(new + "\n")
            time.sleep(1.0)
            versions = {model_version_via_new_connection(proc.target) for _ in range(20)}
            assert versions == {new}
            proc.process.send_signal(signal.SIGTERM)
            assert proc.process.wait(timeout=30) == 0


def test_several_workers_need_redis(model_store: Path) -> None:
    result = subprocess.run(
        recsvc_command("serve", "--model-store", str(model_store), "--workers", "2"),
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "RECSVC_REDIS_URL" in result.stderr
