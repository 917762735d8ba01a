"""Deployment, checked offline: every kustomize overlay renders and validates against the
Kubernetes schemas, the Dockerfiles pass hadolint, the manifests keep our safety rules, and the
exact command of each container runs here as a process and answers its probe."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.artifacts import ModelStore
from recsvc.client import RecsvcClient
from recsvc.core.state import EventType, Interaction
from recsvc.data.interaction_store import InteractionStore
from recsvc.testing import ProductImages, free_port, redis_server
from tests.helpers import ROOT
from tests.integration.test_security import make_pki

K8S = ROOT / "deploy" / "k8s"
RENDERED = ["overlays/dev", "overlays/prod", "jobs"]
KUBERNETES_VERSION = "1.31.0"
KUBECTL = shutil.which("kubectl")
BIN = Path(sys.executable).parent
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed"
)


def render(target: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return {target: render(target) for target in RENDERED}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name}")


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@needs_kubectl
@pytest.mark.parametrize("target", RENDERED)
def test_manifests_validate_against_kubernetes_schemas(
    manifests: dict[str, list[dict[str, Any]]], target: str
) -> None:
    docs = manifests[target]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_every_pod_is_locked_down(manifests: dict[str, list[dict[str, Any]]]) -> None:
    workloads = [
        doc
        for docs in manifests.values()
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job")
    ]
    assert len(workloads) >= 5
    for doc in workloads:
        spec = pod_spec(doc)
        name = doc["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["limits"]["memory"], name
    for docs in manifests.values():
        for doc in docs:
            if doc["kind"] == "ServiceAccount":
                assert doc["automountServiceAccountToken"] is False


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_serving_is_highly_available_and_drains(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = manifests[overlay]
    serve = find(docs, "Deployment", "recsvc-serve")
    assert serve["spec"]["replicas"] >= 2
    spec = pod_spec(serve)
    assert spec["topologySpreadConstraints"]
    container = spec["containers"][0]
    # Behind TLS (prod), probes use the plaintext health-only port: kubelet cannot speak TLS.
    env = {e["name"]: e.get("value") for e in container["env"]}
    probe_port = int(env.get("RECSVC_SECURITY__HEALTH_PORT") or 50051)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == probe_port, probe
    assert container["readinessProbe"]["grpc"]["service"] == "recsvc.v1.Recommender"
    config = find(docs, "ConfigMap", "recsvc-config")["data"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    needed = pre_stop + float(config["RECSVC_SERVER__DRAIN_SECONDS"])
    needed += float(config["RECSVC_SERVER__GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > needed
    # Server processes follow the CPU limit.
    workers = next(e for e in container["env"] if e["name"] == "RECSVC_SERVER__WORKERS")
    assert workers["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    hpa = find(docs, "HorizontalPodAutoscaler", "recsvc-serve")
    assert hpa["spec"]["minReplicas"] >= 2
    assert find(docs, "PodDisruptionBudget", "recsvc-serve")["spec"]["minAvailable"] >= 1
    headless = find(docs, "Service", "recsvc-serve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    redis = find(docs, "ConfigMap", "recsvc-redis-config")["data"]["redis.conf"]
    assert "appendonly yes" in redis and "appendfsync everysec" in redis
    policy = find(docs, "NetworkPolicy", "recsvc-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "recsvc-redis"
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_serving_port_is_fenced_and_secured_in_prod(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = manifests[overlay]
    policy = find(docs, "NetworkPolicy", "recsvc-serve")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "recsvc-serve"}
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert by_port[50051] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"recsvc.io/client": "true"}}}
    ]
    assert by_port[9090] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    spec = pod_spec(find(docs, "Deployment", "recsvc-serve"))
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    if overlay == "overlays/dev":  # embedded-like: no TLS, no tokens, reflection on
        assert not any(name.startswith("RECSVC_SECURITY__") for name in env)
        assert not any("secret" in volume for volume in spec["volumes"])
        return
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert secrets["tls"]["secretName"] == "recsvc-serve-tls"
    assert secrets["tokens"]["secretName"] == "recsvc-serve-tokens"
    assert "optional" not in secrets["tls"] and "optional" not in secrets["tokens"]
    for setting, volume in [
        ("TLS_CERT_FILE", "tls"),
        ("TLS_KEY_FILE", "tls"),
        ("TOKEN_FILE", "tokens"),
    ]:
        assert mounts[volume]["readOnly"] is True
        assert env[f"RECSVC_SECURITY__{setting}"].startswith(mounts[volume]["mountPath"] + "/")
    assert env["RECSVC_SECURITY__REFLECTION"] == "off"


@needs_kubectl
def test_training_runs_on_a_gpu(manifests: dict[str, list[dict[str, Any]]]) -> None:
    prod = find(manifests["overlays/prod"], "CronJob", "recsvc-train")
    assert pod_spec(prod)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for job in ("recsvc-train-now", "recsvc-embed"):
        spec = pod_spec(find(manifests["jobs"], "Job", job))
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec["containers"][0]["image"].startswith("ghcr.io/recsvc/recsvc-cuda:")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "deploy" / "docker" / dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "deploy" / "docker" / dockerfile).read_text()
    assert "USER 10001" in text and text.count("FROM ") >= 2  # non-root, multi-stage


# ---------------------------------------------------------------- the containers' commands


class Cluster:
    """Stand-ins for the pod's world: /models, /data and a Redis, as local paths and a URL."""

    def __init__(self, root: Path, redis_url: str, manifests: list[dict[str, Any]]) -> None:
        self.mounts = {"/models": root / "models", "/data": root / "data"}
        for path in self.mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.manifests = manifests
        self.port = free_port()

    def local(self, value: str) -> str:
        for mount, path in self.mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(path) + value[len(mount) :]
        return value

    def process(self, doc: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """The container's exact command and environment, with paths mapped to this machine."""
        container = pod_spec(doc)["containers"][0]
        env = dict(os.environ)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(
                    find(self.manifests, "ConfigMap", source["configMapRef"]["name"])["data"]
                )
            if "secretRef" in source:
                secret = find(self.manifests, "Secret", source["secretRef"]["name"])
                env.update(secret["stringData"])
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            else:
                resource = entry["valueFrom"]["resourceFieldRef"]["resource"]
                kind, name = resource.split(".")
                env[entry["name"]] = str(container["resources"][kind][name])
        env = {key: self.local(value) for key, value in env.items()}
        env["RECSVC_REDIS_URL"] = self.redis_url  # the in-cluster Redis, here
        env["RECSVC_SERVER__PORT"] = str(self.port)
        env["RECSVC_SERVER__METRICS_PORT"] = str(free_port())
        env["RECSVC_SERVER__HOST"] = "127.0.0.1"
        command = [str(BIN / container["command"][0])] + [
            self.local(arg) for arg in container.get("args", [])
        ]
        return command, env


@pytest.fixture
def cluster(tmp_path: Path, manifests: dict[str, list[dict[str, Any]]]) -> Iterator[Cluster]:
    with redis_server() as url:
        yield Cluster(tmp_path, url, manifests["overlays/dev"] + manifests["jobs"])


def health(target: str, service: str) -> str:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@needs_kubectl
@pytest.mark.redis
@pytest.mark.slow
def test_serving_container_command_answers_its_probes(cluster: Cluster, model_store: Path) -> None:
    shutil.copytree(model_store, cluster.mounts["/models"], dirs_exist_ok=True)
    serve = find(cluster.manifests, "Deployment", "recsvc-serve")
    command, env = cluster.process(serve)
    container = pod_spec(serve)["containers"][0]
    process = subprocess.Popen(command, env=env, cwd=ROOT, text=True)
    target = f"127.0.0.1:{cluster.port}"
    try:
        status = "UNKNOWN"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = health(target, container["readinessProbe"]["grpc"]["service"])
            except grpc.RpcError:
                status = "UNREACHABLE"
            if status == "SERVING":
                break
            time.sleep(0.5)
        assert status == "SERVING"
        assert health(target, container["startupProbe"]["grpc"]["service"]) == "SERVING"
        assert health(target, container["livenessProbe"]["grpc"].get("service", "")) == "SERVING"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


@needs_kubectl
@pytest.mark.redis
@pytest.mark.slow
def test_prod_serving_command_serves_tls_and_tokens_and_answers_probes_in_plaintext(
    tmp_path: Path, manifests: dict[str, list[dict[str, Any]]], model_store: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    secrets = {"/etc/recsvc/tls": tmp_path / "tls", "/etc/recsvc/tokens": tmp_path / "tokens"}
    for path in secrets.values():
        path.mkdir()
    # As the kubernetes.io/tls Secret and the token Secret appear in the pod.
    shutil.copy(pki.server_cert, secrets["/etc/recsvc/tls"] / "tls.crt")
    shutil.copy(pki.server_key, secrets["/etc/recsvc/tls"] / "tls.key")
    token = "prod-read-token-0123456789"
    (secrets["/etc/recsvc/tokens"] / "tokens").write_text(f"read {token}\n")
    with redis_server() as url:
        cluster = Cluster(tmp_path / "pod", url, manifests["overlays/prod"])
        cluster.mounts.update(secrets)
        shutil.copytree(model_store, cluster.mounts["/models"], dirs_exist_ok=True)
        serve = find(cluster.manifests, "Deployment", "recsvc-serve")
        container = pod_spec(serve)["containers"][0]
        command, env = cluster.process(serve)
        env["RECSVC_SERVER__WORKERS"] = "2"  # not the 4 of the limit, on a 2-core machine
        probe_port = free_port()
        env["RECSVC_SECURITY__HEALTH_PORT"] = str(probe_port)
        process = subprocess.Popen(command, env=env, cwd=ROOT, text=True)
        try:
            probe = f"127.0.0.1:{probe_port}"
            # Two worker processes share the probe port: a new connection may reach either, so
            # both probes must pass several times in a row before every worker is taken as up.
            services = (
                container["readinessProbe"]["grpc"]["service"],
                container["livenessProbe"]["grpc"].get("service", ""),
            )
            statuses: list[str] = []
            passes = 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None and passes < 8:
                try:
                    statuses = [health(probe, service) for service in services]
                except grpc.RpcError:
                    statuses = ["UNREACHABLE"]
                passes = passes + 1 if statuses == ["SERVING", "SERVING"] else 0
                time.sleep(0.25)
            assert passes >= 8, statuses
            target = f"127.0.0.1:{cluster.port}"
            with pytest.raises(grpc.RpcError):
                health(target, "")  # the serving port speaks only TLS
            with RecsvcClient(target, tls_ca_file=pki.ca, token=token) as client:
                assert client.health() == "SERVING"
                assert client.model_info().num_items > 0
            with RecsvcClient(target, tls_ca_file=pki.ca) as client:
                with pytest.raises(grpc.RpcError) as caught:
                    client.model_info()
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0


def pairs_of(path: Path) -> list[tuple[str, str]]:
    with path.open() as handle:
        return [(row["user_id"], row["item_id"]) for row in csv.DictReader(handle)]


@needs_kubectl
@pytest.mark.redis
@pytest.mark.slow
def test_worker_and_job_commands_run(
    cluster: Cluster, products: ProductImages, cold_ids: list[str]
) -> None:
    # History as a file for the import Job; later events as the ingest worker leaves them.
    # Users of group g (user % 3) interact with the warm items of group g: a learnable pattern.
    warm = [i for i in products.ids if i not in cold_ids]
    rng = random.Random(7)

    def pairs(users: range) -> list[tuple[str, str]]:
        return [(f"u{u:03d}", rng.choice(warm[u % 3 :: 3])) for u in users for _ in range(8)]

    history = cluster.mounts["/data"] / "history"
    history.mkdir()
    lines = ["user_id,item_id,timestamp"]
    lines += [f"{u},{i},{1_700_000_000 + n}" for n, (u, i) in enumerate(pairs(range(60)))]
    (history / "history.csv").write_text("\n".join(lines) + "\n")
    shutil.copytree(products.directory, cluster.mounts["/data"] / "catalogue")

    command, env = cluster.process(find(cluster.manifests, "Job", "recsvc-import"))
    for _ in range(2):  # re-running the import Job adds nothing
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["skipped"] is True
    store = InteractionStore(cluster.mounts["/data"] / "interactions")
    assert store.count() == len(set(pairs_of(history / "history.csv")))

    embed = find(cluster.manifests, "Job", "recsvc-embed")
    command, env = cluster.process(embed)
    env["RECSVC_IMAGES__LOADER_WORKERS"] = "0"
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["result"]["embedded"] == len(products.ids)

    models = ModelStore(cluster.mounts["/models"])
    for job in ("recsvc-train-now",):
        command, env = cluster.process(find(cluster.manifests, "Job", job))
        done = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        first = json.loads(done.stdout.splitlines()[-1])["result"]  # a first model, from history
        assert first and models.read_manifest(first).num_users == 60
    cron = find(cluster.manifests, "CronJob", "recsvc-train")
    command, env = cluster.process(cron)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # nothing new: not due, exits cleanly
    assert json.loads(done.stdout.splitlines()[-1])["result"] is None

    new_events = [
        Interaction(user, item, EventType.VIEW, 1.0, 1_800_000_000_000, f"e{n}")
        for n, (user, item) in enumerate(pairs(range(40, 200)))
    ]
    store.write_part(new_events, "0", "1")
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout.splitlines()[-1])["result"]
    assert second, done.stderr  # due, and not refused by the holdout guard
    before, after = models.read_manifest(first), models.read_manifest(second)
    assert after.num_users == 200  # history + new events, not the new events alone
    assert after.metrics["ndcg@10"] >= before.metrics["ndcg@10"], (before.metrics, after.metrics)

    ingest = find(cluster.manifests, "Deployment", "recsvc-ingest")
    command, env = cluster.process(ingest)
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    first_round = json.loads(process.stdout.readline())
    assert first_round["worker"] == "ingest"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
