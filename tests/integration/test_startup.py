"""Start-up without surprises (issue 15): a server started before the first model waits for it
instead of exiting, and a configuration mistake ends every command with one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.config import load_settings
from recsvc.core.model import Model
from recsvc.server import startup_line
from recsvc.testing import recsvc_command, redis_server, running_server, server_env

READINESS = "recsvc.v1.Recommender"


def health(target: str, service: str) -> str:
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        answer = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def recommend(target: str, user: str) -> pb.RecommendResponse:
    # A new connection each time: with several workers the kernel spreads them over all.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        return pb_grpc.RecommenderStub(ch).Recommend(
            pb.RecommendRequest(user_id=user, k=5), timeout=10
        )


def publish(source: Path, store: Path) -> str:
    """Copy the source store's latest version into ``store``, LATEST switched last."""
    version = (source / "LATEST").read_text().strip()
    shutil.copytree(source / "versions" / version, store / "versions" / version)
    staged = store / "LATEST.tmp"
    staged.write_text(f"{version}\n")
    os.replace(staged, store / "LATEST")
    return version


def wait_until_ready(target: str, timeout: float = 90.0) -> str:
    status = "UNKNOWN"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = health(target, READINESS)
        if status == "SERVING":
            break
        time.sleep(0.2)
    return status


def assert_waiting(target: str, store: Path, user: str) -> None:
    assert health(target, READINESS) == "NOT_SERVING"
    assert health(target, "") == "SERVING"  # alive: no liveness probe restarts it
    with pytest.raises(grpc.RpcError) as caught:
        recommend(target, user)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert f"no model loaded yet: waiting for the first version in {store}" in details


@pytest.mark.slow
@pytest.mark.parametrize("poll", ["0", "2"], ids=["polling-off", "polling-on"])
def test_serve_on_an_empty_store_waits_for_the_first_model(
    model_store: Path, model: Model, tmp_path: Path, poll: str
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_SERVING__MODEL_POLL_SECONDS=poll,
        RECSVC_SERVING__FIRST_MODEL_POLL_SECONDS="0.2",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    user = model.users.ids[3]
    args = ["serve", "--model-store", str(store), "--port", "0"]
    with running_server(args, env) as proc:
        assert_waiting(proc.target, store, user)
        time.sleep(1.0)  # several polls of an empty store: still up, still waiting
        assert proc.process.poll() is None
        assert_waiting(proc.target, store, user)
        publish(model_store, store)
        assert wait_until_ready(proc.target) == "SERVING"
        assert len(recommend(proc.target, user).items) == 5
        assert proc.process.poll() is None
    assert proc.process.returncode == 0
    output = "".join(proc.output)
    assert "listening on" in output and "not serving: no model loaded yet" in output
    assert "user store in-process" in output and f"model store {store}" in output


@pytest.mark.slow
@pytest.mark.redis
def test_two_workers_on_an_empty_store_wait_for_the_first_model(
    model_store: Path, model: Model, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    user = model.users.ids[4]
    with redis_server() as url:
        env = server_env(
            RECSVC_REDIS_URL=url,
            RECSVC_SERVING__FIRST_MODEL_POLL_SECONDS="0.2",
            RECSVC_SERVER__DRAIN_SECONDS="0",
        )
        args = ["serve", "--model-store", str(store), "--port", "0", "--workers", "2"]
        with running_server(args, env) as proc:
            for _ in range(4):  # new connections reach both workers
                assert_waiting(proc.target, store, user)
            publish(model_store, store)
            assert wait_until_ready(proc.target) == "SERVING"
            # Every worker loaded it: each of a dozen new connections is answered.
            deadline = time.monotonic() + 60
            answered = 0
            while answered < 12 and time.monotonic() < deadline:
                try:
                    answered += len(recommend(proc.target, user).items) == 5
                except grpc.RpcError as exc:  # the other worker's poll may be a moment behind
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    time.sleep(0.2)
            assert answered == 12
        assert proc.process.returncode == 0


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        recsvc_command(*args), env=server_env(**env), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["config", "show"]])
def test_an_unknown_environment_variable_is_refused_with_the_closest_name(
    command: list[str], tmp_path: Path
) -> None:
    done = run_cli(*command, RECSVC_MODEL_STORE=str(tmp_path), RECSVC_METRICS_PORT="9999")
    assert done.returncode == 2
    assert done.stderr == (
        "recsvc: error: unknown setting RECSVC_METRICS_PORT "
        "(did you mean RECSVC_SERVER__METRICS_PORT?)\n"
    )


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["config", "show"]])
def test_a_redis_url_without_a_scheme_is_one_line(command: list[str], tmp_path: Path) -> None:
    done = run_cli(*command, RECSVC_MODEL_STORE=str(tmp_path), RECSVC_REDIS_URL="127.0.0.1:6379")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert (
        "redis_url: '127.0.0.1:6379' must start with redis://, rediss://, unix:// or redis+cluster://"
        in (done.stderr)
    )


def test_test_variables_and_aliases_are_accepted(tmp_path: Path) -> None:
    done = run_cli(
        "config",
        "show",
        RECSVC_MODEL_STORE=str(tmp_path),
        RECSVC_TEST_ANYTHING="1",
        RECSVC_MODEL_STORE__SIGNING_KEY_FILE=str(tmp_path / "key"),
        RECSVC_CONFIG_FILE=str(_config_file(tmp_path)),
    )
    assert done.returncode == 0, done.stderr


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "recsvc.toml"
    path.write_text("[serving]\nmax_k = 50\n")
    return path


def test_the_startup_line_names_the_backends_without_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("RECSVC_"):
            monkeypatch.delenv(name)
    settings = load_settings(
        model_store=tmp_path, redis_url="rediss://app:s3cret@redis.example:6380/2"
    )
    line = startup_line(settings)
    assert "s3cret" not in line and "app@" not in line and "app:" not in line
    assert "user store redis redis.example:6380/2 (TLS)" in line
    assert "event log stream " in line and "item log hash " in line
    assert f"model store {tmp_path}" in line and "max_concurrent_rpcs" in line
    local = startup_line(load_settings(model_store=tmp_path))
    assert f"event log file {tmp_path / 'events.jsonl'}" in local
    assert "item log file " in local


def test_a_server_waiting_for_its_first_model_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    with running_server(["serve", "--model-store", str(store), "--port", "0"], env) as proc:
        assert health(proc.target, READINESS) == "NOT_SERVING"
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=30) == 0
