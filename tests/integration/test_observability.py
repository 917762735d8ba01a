"""Metrics, access log and tracing of a real server, read as Prometheus and a log reader would."""

from __future__ import annotations

import importlib.util
import signal
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.testing import ServerProcess, free_port, running_server, server_env

SERVICE = "recsvc.v1.Recommender"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grpc_labels(method: str, **more: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method, **more}


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def rest_of_output(proc: ServerProcess) -> str:
    """Stop the server and return everything it wrote after 'listening on'."""
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.stdout is not None
    rest = proc.process.stdout.read()
    assert proc.process.wait(timeout=30) == 0, rest
    return rest


def call(target: str, method: str, request: object, request_id: str = "") -> grpc.StatusCode:
    # A fresh channel per call: with several workers the kernel spreads new connections.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        metadata = (("x-request-id", request_id),) if request_id else None
        try:
            getattr(pb_grpc.RecommenderStub(ch), method)(request, timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


def test_one_server_exports_grpc_process_and_recsvc_metrics_and_logs_each_call(
    model_store: Path,
) -> None:
    port = free_port()
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(model_store.parent / "observability-events.jsonl"),
        RECSVC_SERVER__METRICS_PORT=str(port),
        RECSVC_SERVER__ACCESS_LOG="true",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as proc:
        for n in range(3):
            request = pb.RecommendRequest(user_id="u00001", k=3)
            assert call(proc.target, "Recommend", request, f"obs-{n}") == grpc.StatusCode.OK
        too_many = pb.RecommendRequest(user_id="u00001", k=10**6)
        assert call(proc.target, "Recommend", too_many) == grpc.StatusCode.INVALID_ARGUMENT
        assert call(proc.target, "GetModelInfo", pb.GetModelInfoRequest()) == grpc.StatusCode.OK
        samples = scrape(port)
        output = rest_of_output(proc)

    handled = "grpc_server_handled_total"
    assert value(samples, handled, **grpc_labels("Recommend", grpc_code="OK")) == 3
    assert value(samples, handled, **grpc_labels("Recommend", grpc_code="INVALID_ARGUMENT")) == 1
    assert value(samples, handled, **grpc_labels("GetModelInfo", grpc_code="OK")) == 1
    assert value(samples, "grpc_server_started_total", **grpc_labels("Recommend")) == 4
    # Every method has a started series from the start, so rate() sees its first call.
    assert ("grpc_server_started_total", frozenset(grpc_labels("SimilarItems").items())) in samples
    count = "grpc_server_handling_seconds_count"
    assert value(samples, count, **grpc_labels("Recommend")) == 4
    inf = value(
        samples, "grpc_server_handling_seconds_bucket", **grpc_labels("Recommend", le="+Inf")
    )
    assert inf == 4
    assert value(samples, "grpc_server_handling_seconds_sum", **grpc_labels("Recommend")) > 0
    assert value(samples, "recsvc_rpcs_in_flight") == 0
    # The recsvc metrics are kept, next to process and Python GC metrics.
    assert value(samples, "recsvc_rpc_seconds_count", method="Recommend", code="OK") == 3
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert {"python_gc_objects_collected_total", "python_info"} <= names(samples)

    access = [line for line in output.splitlines() if "recsvc.access" in line]
    assert len(access) == 5, output
    assert sum("Recommend OK" in line for line in access) == 3
    assert any("request_id=obs-2" in line and "peer=ipv" in line for line in access), access
    assert any("Recommend INVALID_ARGUMENT" in line for line in access), access
    assert all(line.split()[-3].endswith("ms") for line in access), access


@pytest.mark.slow
@pytest.mark.redis
def test_two_workers_one_endpoint_counts_the_calls_of_both(
    model_store: Path, redis_url: str
) -> None:
    port = free_port()
    env = server_env(
        RECSVC_REDIS_URL=redis_url,
        RECSVC_SERVER__METRICS_PORT=str(port),
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0", "--workers", "2"]
    with running_server(args, env) as proc:
        children = [
            int(pid)
            for pid in Path(f"/proc/{proc.process.pid}/task/{proc.process.pid}/children")
            .read_text()
            .split()
        ]
        worker_ports = [worker_metrics_port(pid) for pid in children]
        assert len(worker_ports) == 2 and port not in worker_ports
        calls, per_worker = 0, [0.0, 0.0]
        # New connections are spread by the kernel: call until both workers answered some.
        while min(per_worker) == 0:
            assert calls < 200, per_worker
            request = pb.RecommendRequest(user_id=f"u{calls % 50:05d}", k=3)
            assert call(proc.target, "Recommend", request) == grpc.StatusCode.OK
            calls += 1
            if calls % 10 == 0:
                per_worker = [handled_ok(scrape(p)) for p in worker_ports]
        per_worker = [handled_ok(scrape(p)) for p in worker_ports]
        merged = scrape(port)
        output = rest_of_output(proc)

    assert sum(per_worker) == calls and min(per_worker) > 0
    assert handled_ok(merged) == calls
    assert value(merged, "grpc_server_started_total", **grpc_labels("Recommend")) == calls
    assert value(merged, "recsvc_rpc_seconds_count", method="Recommend", code="OK") == calls
    # Gauges stay per worker; every worker answered the scrape.
    for worker in ("0", "1"):
        assert value(merged, "process_resident_memory_bytes", worker=worker) > 0
        assert value(merged, "recsvc_worker_metrics_up", worker=worker) == 1
    assert "recsvc.access" not in output  # the access log is off by default


def worker_metrics_port(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = _env(environ)
    assert found.get("RECSVC_SERVER__METRICS_HOST") == "127.0.0.1"
    return int(found["RECSVC_SERVER__METRICS_PORT"])


def _env(entries: list[bytes]) -> Mapping[str, str]:
    pairs = (entry.decode().partition("=") for entry in entries if b"=" in entry)
    return {name: setting for name, _, setting in pairs}


def handled_ok(samples: Samples) -> float:
    return value(samples, "grpc_server_handled_total", **grpc_labels("Recommend", grpc_code="OK"))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.instrumentation.grpc") is None,
    reason="OpenTelemetry is not installed (pip install 'recsvc[otel]')",
)
def test_tracing_exports_a_span_for_a_call(model_store: Path) -> None:
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(model_store.parent / "tracing-events.jsonl"),
        RECSVC_SERVER__TRACING="true",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="recsvc-test",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as proc:
        request = pb.RecommendRequest(user_id="u00001", k=3)
        assert call(proc.target, "Recommend", request) == grpc.StatusCode.OK
        output = rest_of_output(proc)
    assert f'"name": "/{SERVICE}/Recommend"' in output, output
    assert '"service.name": "recsvc-test"' in output, output
