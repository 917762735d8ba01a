"""Deployment, checked offline: every kustomize overlay renders and validates against the
Kubernetes schemas, the Dockerfiles pass hadolint, the manifests keep our safety rules, and the
exact command of each container runs here as a process and answers its probe."""

from __future__ import annotations

import base64
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import kubernetes_validate
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.client import RecsvcClient
from recsvc.core.state import EventType, Interaction
from recsvc.data.interaction_store import InteractionStore
from recsvc.testing import ProductImages, free_port, redis_server
from tests.helpers import ROOT
from tests.integration.test_security import make_pki

K8S = ROOT / "deploy" / "k8s"
RENDERED = [
    "overlays/dev",
    "overlays/prod",
    "jobs",
    "overlays/managed-redis",
    "jobs/embed-sharded",
]
MANAGED = K8S / "overlays" / "managed-redis"
# What the managed-redis overlay's deploy pipeline writes there (not in git).
MANAGED_URL = "rediss://default:{password}@{host}:{port}/0?ssl_ca_certs=/etc/recsvc/redis-ca/ca.crt"
KUBERNETES_VERSION = "1.31.0"
KUBECTL = shutil.which("kubectl")
BIN = Path(sys.executable).parent
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed"
)


def render(target: str, root: Path = K8S) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(root / target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def managed_copy(root: Path, url: str, ca: str) -> Path:
    """deploy/k8s copied to ``root`` with the managed-redis overlay's two files written, as
    its deploy pipeline would (they are not in git)."""
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("redis.env", "redis-ca.crt"))
    overlay = root / "overlays" / "managed-redis"
    (overlay / "redis.env").write_text(f"RECSVC_REDIS_URL={url}\n")
    (overlay / "redis-ca.crt").write_text(ca)
    return root


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    url = MANAGED_URL.format(password="pw", host="redis.example.internal", port=6380)
    managed = managed_copy(tmp_path_factory.mktemp("k8s") / "k8s", url, "a CA bundle\n")
    return {
        target: render(target, managed if target == "overlays/managed-redis" else K8S)
        for target in RENDERED
    }


def secret_data(doc: dict[str, Any]) -> dict[str, str]:
    """A Secret's values, decoded (a secretGenerator writes ``data``, base64)."""
    values = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    return {**values, **doc.get("stringData", {})}


def containers_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


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
        for container in containers_of(spec):
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
    # One server process per pod (scale with replicas); Prometheus scrapes its metrics port.
    assert env["RECSVC_SERVER__WORKERS"] == "1"
    annotations = serve["spec"]["template"]["metadata"]["annotations"]
    metrics_port = config["RECSVC_SERVER__METRICS_PORT"]
    assert annotations["prometheus.io/port"] == metrics_port
    assert {"name": "metrics", "containerPort": int(metrics_port)} in container["ports"]
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
def test_training_runs_on_a_gpu_only_when_due(manifests: dict[str, list[dict[str, Any]]]) -> None:
    prod = manifests["overlays/prod"]
    gpu = find(prod, "CronJob", "recsvc-train-gpu")
    assert gpu["spec"]["suspend"] is True  # a template, never scheduled by itself
    assert pod_spec(gpu)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(gpu)["containers"][0]["args"][:3] == ["worker", "train", "--once"]
    # The hourly CronJob decides on a CPU, without Redis, and only its launcher holds a token.
    cron = find(prod, "CronJob", "recsvc-train")
    assert "suspend" not in cron["spec"]
    spec = pod_spec(cron)
    check, launch = spec["initContainers"][0], spec["containers"][0]
    assert "worker train --check-due" in check["args"][0]
    assert check["image"].startswith("ghcr.io/recsvc/recsvc:")
    assert launch["image"].startswith("registry.k8s.io/kubectl:")
    for container in (check, launch):
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert not any("secretRef" in source for source in container.get("envFrom", []))
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert [m["name"] for m in launch["volumeMounts"] if m["mountPath"] == token_path] == [
        "kube-api-access"
    ]
    assert all(m["mountPath"] != token_path for m in check["volumeMounts"])
    assert spec["automountServiceAccountToken"] is False
    # RBAC: read the one Job template, list and create Jobs, in the namespace; nothing else.
    account = spec["serviceAccountName"]
    binding = find(prod, "RoleBinding", account)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "recsvc"}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": account,
    }
    assert find(prod, "Role", account)["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["cronjobs"],
            "resourceNames": ["recsvc-train-gpu"],
            "verbs": ["get"],
        },
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "create"]},
    ]
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in prod)
    for job in ("recsvc-train-now", "recsvc-embed"):
        spec = pod_spec(find(manifests["jobs"], "Job", job))
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec["containers"][0]["image"].startswith("ghcr.io/recsvc/recsvc-cuda:")


@needs_kubectl
def test_sharded_embedding_runs_one_shard_per_gpu_and_merges_on_a_cpu(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    docs = manifests["jobs/embed-sharded"]
    shards = find(docs, "Job", "recsvc-embed-shards")
    merge = find(docs, "Job", "recsvc-embed-merge")
    assert shards["spec"]["completionMode"] == "Indexed"
    count = shards["spec"]["completions"]
    assert count > 1 and 1 <= shards["spec"]["parallelism"] <= count
    embed = pod_spec(shards)["containers"][0]
    assert embed["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert embed["image"].startswith("ghcr.io/recsvc/recsvc-cuda:")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(shards)["tolerations"])
    container = pod_spec(merge)["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["image"].startswith("ghcr.io/recsvc/recsvc:")
    # Both agree on N and on the table; neither needs Redis.
    for doc in (shards, merge):
        env = {e["name"]: e["value"] for e in pod_spec(doc)["containers"][0]["env"]}
        assert env["RECSVC_IMAGES__SHARD_COUNT"] == str(count)
        args = pod_spec(doc)["containers"][0]["args"]
        assert args[args.index("--out") + 1] == "/data/embeddings.parquet"
        assert not any("secretRef" in s for s in pod_spec(doc)["containers"][0]["envFrom"])
    assert container["args"][0] == "embed-merge" and "--wait" in container["args"]
    # The lead decides whether `kubectl apply -k deploy/k8s/jobs` starts them too.
    assert not {d["metadata"]["name"] for d in manifests["jobs"]} & {
        "recsvc-embed-shards",
        "recsvc-embed-merge",
    }


FAKE_KUBECTL = """#!/bin/sh
echo "$@" >> "$KUBECTL_CALLS"
case "$1" in
  get) printf '%b' "$KUBECTL_JOBS" ;;
  create) echo "job.batch/$4 created" ;;
esac
"""


@needs_kubectl
@pytest.mark.parametrize(
    ("code", "jobs", "status", "created"),
    [
        ("0", "", 0, True),  # due, nothing running: a GPU Job
        ("0", "recsvc-train-gpu-1 Complete\\nrecsvc-train-gpu-2 Failed\\n", 0, True),
        ("0", "recsvc-train-gpu-1 Complete\\nrecsvc-train-gpu-2 \\n", 0, False),  # one runs
        ("3", "", 0, False),  # not due: a successful run, no Job
        ("2", "", 1, False),  # the check failed: a failed run, no Job
    ],
)
def test_training_launcher_starts_the_gpu_job_only_when_due(
    manifests: dict[str, list[dict[str, Any]]],
    tmp_path: Path,
    code: str,
    jobs: str,
    status: int,
    created: bool,
) -> None:
    """The launcher container's exact script, with a stand-in kubectl that records its calls."""
    launch = pod_spec(find(manifests["overlays/prod"], "CronJob", "recsvc-train"))["containers"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    env = {e["name"]: e["value"] for e in launch["env"]}
    (tmp_path / "code").write_text(code + "\n")
    env.update(
        CHECK_CODE_FILE=str(tmp_path / "code"),
        HOME=str(tmp_path),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        KUBECTL_CALLS=str(tmp_path / "calls"),
        KUBECTL_JOBS=jobs,
    )
    done = subprocess.run(
        [*launch["command"], *launch["args"]], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == status, done.stdout + done.stderr
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    creates = [c for c in calls if c.startswith("create job --from=cronjob/recsvc-train-gpu ")]
    assert len(creates) == (1 if created else 0), calls
    if code == "0":
        assert calls[0].startswith("get jobs -l app.kubernetes.io/name=recsvc-train-gpu")


@needs_kubectl
def test_the_base_holds_no_secret_and_each_overlay_generates_the_redis_url(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    assert not [d for d in render("base") if d["kind"] == "Secret"]
    urls = {
        overlay: secret_data(find(manifests[overlay], "Secret", "recsvc-redis"))
        for overlay in ("overlays/dev", "overlays/prod", "overlays/managed-redis")
    }
    assert urls["overlays/dev"] == {"RECSVC_REDIS_URL": "redis://recsvc-redis:6379/0"}
    assert urls["overlays/prod"] == urls["overlays/dev"]
    assert urls["overlays/managed-redis"]["RECSVC_REDIS_URL"].startswith("rediss://default:pw@")
    # Every Secret a pod refers to is one the overlay generates (the jobs: by the same name).
    for overlay in ("overlays/dev", "overlays/prod", "overlays/managed-redis", "jobs"):
        docs = manifests[overlay]
        for doc in docs:
            if doc["kind"] not in ("Deployment", "StatefulSet", "CronJob", "Job"):
                continue
            for container in containers_of(pod_spec(doc)):
                for source in container.get("envFrom", []):
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] == "recsvc-redis"
                        if overlay != "jobs":
                            find(docs, "Secret", "recsvc-redis")
    # The managed overlay's input files stay out of git.
    ignored = (MANAGED / ".gitignore").read_text().split()
    assert "redis.env" in ignored and "redis-ca.crt" in ignored


@needs_kubectl
def test_managed_redis_overlay_drops_the_in_cluster_redis_and_mounts_the_ca(
    manifests: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = manifests["overlays/managed-redis"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for gone in [
        ("StatefulSet", "recsvc-redis"),
        ("Service", "recsvc-redis"),
        ("ConfigMap", "recsvc-redis-config"),
        ("NetworkPolicy", "recsvc-redis"),
    ]:
        assert gone not in names
    # Everything else of prod is still there (TLS and tokens on the serving port included).
    prod = {(d["kind"], d["metadata"]["name"]) for d in manifests["overlays/prod"]}
    assert prod - names == {
        ("StatefulSet", "recsvc-redis"),
        ("Service", "recsvc-redis"),
        ("ConfigMap", "recsvc-redis-config"),
        ("NetworkPolicy", "recsvc-redis"),
    }
    assert find(docs, "ConfigMap", "recsvc-redis-ca")["data"] == {"ca.crt": "a CA bundle\n"}
    url = secret_data(find(docs, "Secret", "recsvc-redis"))["RECSVC_REDIS_URL"]
    ca_file = url.split("ssl_ca_certs=")[1]
    jobs = render("overlays/managed-redis/jobs", managed_copy(tmp_path / "k8s", url, "ca"))
    for doc in [*docs, *jobs]:
        if doc["kind"] not in ("Deployment", "CronJob", "Job"):
            continue
        spec = pod_spec(doc)
        for container in containers_of(spec):
            if not any("secretRef" in s for s in container.get("envFrom", [])):
                continue  # no Redis, no CA needed
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = mounts[str(Path(ca_file).parent)]
            assert {"name": volume, "configMap": {"name": "recsvc-redis-ca"}} in spec["volumes"]


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
    """Stand-ins for the pod's world: /models, /store, /data, /run/check and a Redis, as local
    paths and a URL (None: the URL of the overlay's Secret, as it stands)."""

    def __init__(self, root: Path, redis_url: str | None, manifests: list[dict[str, Any]]) -> None:
        self.mounts = {
            name: root / name.strip("/").replace("/", "-")
            for name in ("/models", "/store", "/data", "/run/check")
        }
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

    def in_script(self, script: str) -> str:
        """A shell script's paths mapped to this machine."""
        for mount, path in self.mounts.items():
            script = script.replace(mount + "/", f"{path}/")
        return script

    def process(
        self, doc: dict[str, Any], name: str | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The exact command and environment of the container ``name`` (default: the first
        main container), with paths mapped to this machine."""
        containers = containers_of(pod_spec(doc))
        container = next(c for c in containers if c["name"] == name) if name else None
        container = container or pod_spec(doc)["containers"][0]
        env = dict(os.environ)
        env["PATH"] = f"{BIN}:{env['PATH']}"  # `recsvc` in a shell script: this one
        uses_redis = False
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(
                    find(self.manifests, "ConfigMap", source["configMapRef"]["name"])["data"]
                )
            if "secretRef" in source:
                env.update(secret_data(find(self.manifests, "Secret", source["secretRef"]["name"])))
                uses_redis = True
        for entry in container.get("env", []):
            env[entry["name"]] = entry["value"]
        env = {key: self.local(value) for key, value in env.items()}
        if uses_redis and self.redis_url is not None:
            env["RECSVC_REDIS_URL"] = self.redis_url  # the in-cluster Redis, here
        env["RECSVC_SERVER__PORT"] = str(self.port)
        env["RECSVC_SERVER__METRICS_PORT"] = str(free_port())
        env["RECSVC_SERVER__HOST"] = "127.0.0.1"
        program, *args = [*container["command"], *container.get("args", [])]
        if program in ("sh", "bash"):
            return [program, *(self.in_script(arg) for arg in args)], env
        return [str(BIN / program), *(self.local(arg) for arg in args)], env


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
    """The pod's two processes: the sync sidecar copies the shared store's model into the
    local /models, which the server (started first, on an empty store) then serves."""
    serve = find(cluster.manifests, "Deployment", "recsvc-serve")
    command, env = cluster.process(serve)
    container = pod_spec(serve)["containers"][0]
    process = subprocess.Popen(command, env=env, cwd=ROOT, text=True)
    sync_command, sync_env = cluster.process(serve, "models-sync")
    sidecar = subprocess.Popen(sync_command, env=sync_env, cwd=ROOT, text=True)
    target = f"127.0.0.1:{cluster.port}"
    try:
        # Training publishes to the shared store while both run.
        shutil.copytree(model_store, cluster.mounts["/store"], dirs_exist_ok=True)
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
        with RecsvcClient(target) as client:
            assert client.model_info().version == ModelStore(model_store).latest_version()
    finally:
        process.send_signal(signal.SIGTERM)
        sidecar.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert sidecar.wait(timeout=60) == 0


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
    # The hourly CronJob's check (CPU): not due, so its launcher starts no GPU Job.
    cron = find(cluster.manifests, "CronJob", "recsvc-train")
    check, check_env = cluster.process(cron, "check")
    code_file = cluster.mounts["/run/check"] / "code"

    def check_due() -> tuple[str, str]:
        done = subprocess.run(check, env=check_env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr  # the code goes to the launcher, not to k8s
        return code_file.read_text().strip(), done.stdout

    assert check_due() == ("3", "not due: no new interactions since the last training\n")
    # The GPU Job's own command agrees: nothing new, not due, exits cleanly.
    gpu = find(cluster.manifests, "CronJob", "recsvc-train-gpu")
    command, env = cluster.process(gpu)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["result"] is None

    new_events = [
        Interaction(user, item, EventType.VIEW, 1.0, 1_800_000_000_000, f"e{n}")
        for n, (user, item) in enumerate(pairs(range(40, 200)))
    ]
    store.write_part(new_events, "0", "1")
    assert check_due()[0] == "0"  # due: the launcher would create the GPU Job
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


@needs_kubectl
@pytest.mark.slow
def test_sharded_embed_jobs_commands_make_the_single_runs_table(
    tmp_path: Path,
    manifests: dict[str, list[dict[str, Any]]],
    products: ProductImages,
    embedding_table: Path,
) -> None:
    """The merge Job's exact command started first (it waits), then the Indexed Job's pods
    side by side (its parallelism), each with its JOB_COMPLETION_INDEX, as Kubernetes runs
    them."""
    cluster = Cluster(tmp_path, None, manifests["overlays/dev"] + manifests["jobs/embed-sharded"])
    shutil.copytree(products.directory, cluster.mounts["/data"] / "catalogue")
    shards = find(cluster.manifests, "Job", "recsvc-embed-shards")
    command, env = cluster.process(find(cluster.manifests, "Job", "recsvc-embed-merge"))
    merge = subprocess.Popen(
        command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pods: list[subprocess.Popen[str]] = []
    try:
        command, env = cluster.process(shards)
        env["RECSVC_IMAGES__LOADER_WORKERS"] = "0"
        assert shards["spec"]["parallelism"] == shards["spec"]["completions"]
        pods += [
            subprocess.Popen(
                command,
                env={**env, "JOB_COMPLETION_INDEX": str(index)},
                cwd=ROOT,
                text=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for index in range(shards["spec"]["completions"])
        ]
        for pod in pods:
            _, pod_errors = pod.communicate(timeout=300)
            assert pod.returncode == 0, pod_errors
        out, errors = merge.communicate(timeout=120)
    finally:
        for process in [merge, *pods]:
            process.kill()
    assert merge.returncode == 0, errors
    assert json.loads(out.splitlines()[-1])["items"] == len(products.ids)
    table = EmbeddingTable.load(cluster.mounts["/data"] / "embeddings.parquet")
    single = EmbeddingTable.load(embedding_table)
    assert table.item_ids == single.item_ids
    assert np.array_equal(table.vectors, single.vectors)


@contextmanager
def tls_redis(directory: Path, password: str) -> Iterator[tuple[int, Path]]:
    """A private redis-server that speaks only TLS and wants a password, as a managed Redis
    does; yields its port and the CA that signed its certificate."""
    pki = make_pki(directory)
    port = free_port()
    process = subprocess.Popen(
        [
            *["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"],
            *["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)],
            *["--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no"],
            *["--requirepass", password, "--save", "", "--appendonly", "no"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "redis-server (TLS) did not start"
                time.sleep(0.05)
        yield port, pki.ca
    finally:
        process.terminate()
        process.wait(timeout=10)


@needs_kubectl
@pytest.mark.slow
def test_managed_redis_overlay_commands_reach_a_tls_redis_with_a_password(
    tmp_path: Path,
) -> None:
    """The managed-redis overlay's URL and CA mount, as its pipeline writes them, taken by the
    ingest worker's exact command to a Redis that accepts only TLS and the password."""
    password = "s3cret/with:odd@chars"
    with tls_redis(tmp_path / "pki", password) as (port, ca):
        url = MANAGED_URL.format(password=quote(password, safe=""), host="127.0.0.1", port=port)
        root = managed_copy(tmp_path / "k8s", url, ca.read_text())
        cluster = Cluster(tmp_path / "pod", None, render("overlays/managed-redis", root))
        ca_dir = tmp_path / "redis-ca"
        ca_dir.mkdir()
        shutil.copy(ca, ca_dir / "ca.crt")  # as the recsvc-redis-ca ConfigMap is mounted
        cluster.mounts["/etc/recsvc/redis-ca"] = ca_dir
        command, env = cluster.process(find(cluster.manifests, "Deployment", "recsvc-ingest"))
        assert env["RECSVC_REDIS_URL"].startswith("rediss://default:")
        env["RECSVC_REDIS_URL"] = cluster.in_script(env["RECSVC_REDIS_URL"])  # the CA's path
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            assert json.loads(line)["worker"] == "ingest"
        finally:
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=60)
            errors = process.stderr.read()
            assert status == 0, errors
            assert password not in errors
        # The same command with another password is refused by that Redis.
        env["RECSVC_REDIS_URL"] = env["RECSVC_REDIS_URL"].replace(quote(password, safe=""), "x")
        refused = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode != 0
        assert "invalid username-password pair" in refused.stderr, refused.stderr[-2000:]
