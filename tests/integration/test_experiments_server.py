"""Experiments in real servers: a 50/50 split between the current model and an older version,
served by two server processes over one model store and one experiments document.

Each user gets the same arm on every call and on both servers; every response carries its own
recommendation id; the arm naming the older version is answered by it; the document hot-reloads
(and a bad one keeps the one before); and a click sent back with a response's recommendation id
is attributed to that response's impression by ``recsvc report --store``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.artifacts import ModelStore
from recsvc.core.experiments import parse_experiments
from recsvc.data.demo import generate_demo_data
from recsvc.testing import ServerProcess, running_server, server_env
from recsvc.training.pipeline import train_from_files
from tests.conftest import SMALL_INDEX, SMALL_TRAIN
from tests.helpers import run_recsvc

pytestmark = pytest.mark.slow

USERS = [f"u{n}" for n in range(60)]
NAMESPACE = "default"


@dataclass(frozen=True)
class Versions:
    store: Path
    old: str
    current: str


@dataclass
class Server:
    process: ServerProcess
    stub: pb_grpc.RecommenderStub
    log: list[str]
    event_log: Path


def document(version: str, old_arm: str, control_weight: float, old_weight: float) -> str:
    return json.dumps(
        {
            "version": version,
            "experiments": [
                {
                    "name": "ranker",
                    "arms": [
                        {"name": "control", "weight": control_weight},
                        {"name": "old", "weight": old_weight, "model_version": old_arm},
                    ],
                }
            ],
        }
    )


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Two versions in one store, trained on different data: LATEST is the second."""
    root = tmp_path_factory.mktemp("exp")
    store = ModelStore(root / "models")
    trained = []
    for seed in (21, 22):
        data = generate_demo_data(root / f"data{seed}", num_users=200, num_items=300, seed=seed)
        trained.append(
            train_from_files(
                data.interactions,
                store,
                SMALL_TRAIN,
                SMALL_INDEX,
                items_path=data.items,
                progress=False,
            ).version
        )
    assert store.latest_version() == trained[1]
    return Versions(root / "models", trained[0], trained[1])


@pytest.fixture(scope="module")
def experiments_path(versions: Versions) -> Path:
    path = versions.store.parent / "experiments.json"
    write_atomically(path, document("v1", versions.old, 50, 50))
    return path


def _serve(versions: Versions, experiments: Path, name: str) -> Iterator[Server]:
    event_log = versions.store.parent / name / "events.jsonl"
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(event_log),
        RECSVC_EXPERIMENTS__PATH=str(experiments),
        RECSVC_EXPERIMENTS__RELOAD_SECONDS="0.2",
        RECSVC_EXPERIMENTS__IMPRESSION_FLUSH_SECONDS="0.1",
        RECSVC_SERVING__MAX_K="50",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    args = ["serve", "--model-store", str(versions.store), "--port", "0"]
    with running_server(args, env) as process:
        log = list(process.output)
        assert process.process.stdout is not None
        stdout = process.process.stdout
        threading.Thread(target=lambda: log.extend(iter(stdout.readline, "")), daemon=True).start()
        with grpc.insecure_channel(process.target) as channel:
            yield Server(process, pb_grpc.RecommenderStub(channel), log, event_log)


@pytest.fixture(scope="module")
def server_a(versions: Versions, experiments_path: Path) -> Iterator[Server]:
    yield from _serve(versions, experiments_path, "a")


@pytest.fixture(scope="module")
def server_b(versions: Versions, experiments_path: Path) -> Iterator[Server]:
    yield from _serve(versions, experiments_path, "b")


def recommend(server: Server, user_id: str, k: int = 5) -> pb.RecommendResponse:
    response: pb.RecommendResponse = server.stub.Recommend(
        pb.RecommendRequest(user_id=user_id, k=k), timeout=30
    )
    return response


def wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_each_user_keeps_one_arm_on_every_call_and_server(
    server_a: Server, server_b: Server, versions: Versions
) -> None:
    responses = [recommend(s, user) for s in (server_a, server_a, server_b) for user in USERS]
    by_user: dict[str, set[tuple[str, str]]] = {user: set() for user in USERS}
    for n, response in enumerate(responses):
        by_user[USERS[n % len(USERS)]].add((response.experiment, response.arm))
    assert all(len(arms) == 1 for arms in by_user.values()), by_user
    arms = {next(iter(arms))[1] for arms in by_user.values()}
    assert arms == {"control", "old"}
    # The arms are the pure function of the document, the same a test computes.
    expected = parse_experiments(document("v1", versions.old, 50, 50), "test", NAMESPACE)
    for user, seen in by_user.items():
        assignment = expected.assign(NAMESPACE, user)
        assert assignment is not None and seen == {("ranker", assignment.arm)}
    # Each arm is answered by its model; every response has its own id.
    for response in responses:
        wanted = versions.old if response.arm == "old" else versions.current
        assert response.model_version == wanted
    ids = [response.recommendation_id for response in responses]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)
    # An anonymous session is not assigned but still gets an id.
    anonymous = server_a.stub.Recommend(
        pb.RecommendRequest(recent_item_ids=["i1"], k=3), timeout=30
    )
    assert anonymous.arm == "" and len(anonymous.recommendation_id) == 32
    # Batch entries are routed and tagged the same way.
    batch = server_b.stub.RecommendBatch(
        pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id=u, k=3) for u in USERS]),
        timeout=30,
    )
    for user, response in zip(USERS, batch.responses, strict=True):
        assert {(response.experiment, response.arm)} == by_user[user]
        wanted = versions.old if response.arm == "old" else versions.current
        assert response.model_version == wanted
    info = server_a.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.arm_models == 1 and info.arm_memory_bytes > 0
    assert info.memory_bytes > 0


def test_attribution_end_to_end(server_a: Server, versions: Versions, tmp_path: Path) -> None:
    user = USERS[0]
    shown = recommend(server_a, user, k=4)
    assert shown.arm in {"control", "old"} and len(shown.items) == 4
    recorded = server_a.stub.RecordInteractions(
        pb.RecordInteractionsRequest(
            interactions=[
                pb.Interaction(
                    user_id=user,
                    item_id=shown.items[1].item_id,
                    event_type=pb.EVENT_TYPE_CLICK,
                    event_id=f"click-{shown.recommendation_id}",
                    recommendation_id=shown.recommendation_id,
                    position=1,
                )
            ]
        ),
        timeout=10,
    )
    assert recorded.accepted == 1
    with pytest.raises(grpc.RpcError) as bad:
        server_a.stub.RecordInteractions(
            pb.RecordInteractionsRequest(
                interactions=[
                    pb.Interaction(user_id=user, item_id="i1", event_id="bad-pos", position=-1)
                ]
            ),
            timeout=10,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interactions[0].position" in (bad.value.details() or "")
    istore = tmp_path / "istore"
    settings = {"RECSVC_STORE__EVENT_LOG_PATH": str(server_a.event_log)}

    def reported() -> dict[str, dict[str, object]] | None:
        ingested = run_recsvc(
            "worker", "ingest", "--once", "--event-log", str(server_a.event_log),
            "--model-store", str(versions.store), "--interaction-store", str(istore), **settings,
        )  # fmt: skip
        assert ingested.returncode == 0, ingested.stderr
        out = tmp_path / "report.json"
        result = run_recsvc("report", "--store", str(istore), "--out", str(out), **settings)
        if result.returncode != 0:
            return None
        (experiment,) = json.loads(out.read_text())["experiments"]
        return {arm["arm"]: arm for arm in experiment["arms"]}

    def clicked() -> bool:
        arms = reported()
        arm = (arms or {}).get(shown.arm)
        return arm is not None and arm["clicks"]["count"] == 1  # type: ignore[index]

    wait_for(clicked, "the click attributed in the report")
    arms = reported()
    assert arms is not None
    arm = arms[shown.arm]
    assert arm["impressions"] >= 4 and arm["responses"] >= 1  # type: ignore[operator]


def test_document_hot_reloads_and_a_bad_one_keeps_the_last(
    server_a: Server, experiments_path: Path, versions: Versions
) -> None:
    text = document("v2", versions.old, 1, 99)
    expected = parse_experiments(text, "test", NAMESPACE)
    write_atomically(experiments_path, text)

    def reloaded() -> bool:
        return all(
            recommend(server_a, user, 1).arm == expected.assign(NAMESPACE, user).arm  # type: ignore[union-attr]
            for user in USERS
        )

    wait_for(reloaded, "the new weights in force")
    moved = [user for user in USERS if expected.assign(NAMESPACE, user).arm == "old"]  # type: ignore[union-attr]
    assert len(moved) > len(USERS) * 0.8
    write_atomically(experiments_path, '{"version": "v3", "experiments": [{"name": "x"}]}')
    wait_for(lambda: any("stays in force" in line for line in server_a.log), "the bad document")
    line = next(line for line in server_a.log if "stays in force" in line)
    assert "experiments[0].arms" in line and "v2 stays in force" in line
    assert all(
        recommend(server_a, user, 1).arm == expected.assign(NAMESPACE, user).arm  # type: ignore[union-attr]
        for user in USERS
    )
