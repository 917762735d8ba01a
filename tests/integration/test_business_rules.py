"""Boost and pin rules through a real `recsvc serve` with a rules file (RECSVC_RULES__PATH):
pins only for matching contexts and inside their window, boosts, rule names, the rules
version, hot reload, and a bad file kept out (at start-up and at reload)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.testing import ServerProcess, recsvc_command, running_server, server_env

USER_ROW = 12


@dataclass
class RulesServer:
    process: ServerProcess
    stub: pb_grpc.RecommenderStub
    rules_path: Path
    log: queue.Queue[str]  # the server's output lines after "listening on"


def write_rules(path: Path, version: str, rules: list[dict[str, Any]]) -> None:
    """Replace the file in one rename, as a ConfigMap update does (a new inode)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"version": version, "rules": rules}))
    os.replace(temporary, path)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


@pytest.fixture(scope="module")
def picks(model: Model) -> dict[str, str]:
    """Items the test user has not seen, from the far end of the catalogue (not in their top
    10), for pins; and a category for the boost."""
    seen = set(model.seen_items(USER_ROW).tolist())
    unseen = [model.items.ids[r] for r in range(model.info.num_items - 1, -1, -1) if r not in seen]
    return {"hero": unseen[0], "expired": unseen[1], "upcoming": unseen[2], "later": unseen[3]}


def first_rules(picks: dict[str, str], target: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    vip = 'segment == "vip"'
    return [
        {"name": "vip-hero", "pin": {"item_id": picks["hero"], "position": 1, "when": vip}},
        {
            "name": "expired",
            "end": iso(now - timedelta(days=1)),
            "pin": {"item_id": picks["expired"], "position": 2, "when": vip},
        },
        {
            "name": "upcoming",
            "start": iso(now + timedelta(days=1)),
            "pin": {"item_id": picks["upcoming"], "position": 3, "when": vip},
        },
        {
            "name": "lift",
            "boost": {"items": f'category == "{target}"', "factor": 50, "when": 'promo == "on"'},
        },
    ]


@pytest.fixture(scope="module")
def target(model: Model) -> str:
    """The category the boost lifts: one of the model's, not the most common."""
    counts = Counter(model.category_names[c] for c in model.item_categories.tolist())
    return sorted(counts, key=lambda name: counts[name])[len(counts) // 2]


@pytest.fixture(scope="module")
def rules_server(
    model_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
    picks: dict[str, str],
    target: str,
) -> Iterator[RulesServer]:
    root = tmp_path_factory.mktemp("rules")
    rules_path = root / "rules.json"
    write_rules(rules_path, "v1", first_rules(picks, target))
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(root / "events.jsonl"),
        RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS="0",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_RULES__PATH=str(rules_path),
        RECSVC_RULES__RELOAD_SECONDS="0.2",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as process, grpc.insecure_channel(process.target) as channel:
        lines: queue.Queue[str] = queue.Queue()
        stdout = process.process.stdout
        assert stdout is not None
        # Drained all along: a full pipe would block the server's logging.
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        yield RulesServer(process, pb_grpc.RecommenderStub(channel), rules_path, lines)


def recommend(
    server: RulesServer, model: Model, k: int = 10, **context: str
) -> list[pb.ScoredItem]:
    request = pb.RecommendRequest(user_id=model.users.ids[USER_ROW], k=k, context=context)
    return list(server.stub.Recommend(request, timeout=10).items)


def rules_version(server: RulesServer) -> str:
    return str(server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).rules_version)


def wait_for_version(server: RulesServer, version: str) -> None:
    deadline = time.monotonic() + 30
    while rules_version(server) != version:
        assert time.monotonic() < deadline, f"rules version {version} never came into force"
        time.sleep(0.1)


def wait_for_log(server: RulesServer, text: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            line = server.log.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the server never logged {text!r}") from None
        if text in line:
            return line


def test_a_pin_applies_only_for_its_context_and_inside_its_window(
    rules_server: RulesServer, model: Model, picks: dict[str, str]
) -> None:
    assert rules_version(rules_server) == "v1"
    plain = recommend(rules_server, model)
    assert [i.rule for i in plain] == [""] * 10
    assert picks["hero"] not in {i.item_id for i in plain}
    vip = recommend(rules_server, model, segment="vip")
    assert (vip[0].item_id, vip[0].rule) == (picks["hero"], "vip-hero")
    # Everything else as without rules, one place down: the expired and upcoming pins did not
    # apply although the context matches them.
    assert [i.item_id for i in vip[1:]] == [i.item_id for i in plain[:9]]
    assert {i.rule for i in vip[1:]} == {""}
    other = recommend(rules_server, model, segment="basic")
    assert [i.item_id for i in other] == [i.item_id for i in plain]


def test_a_batch_applies_each_requests_own_rules(
    rules_server: RulesServer, model: Model, picks: dict[str, str]
) -> None:
    user = model.users.ids[USER_ROW]
    request = pb.RecommendBatchRequest(
        requests=[
            pb.RecommendRequest(user_id=user, k=5, context={"segment": "vip"}),
            pb.RecommendRequest(user_id=user, k=5),
        ]
    )
    vip, plain = rules_server.stub.RecommendBatch(request, timeout=10).responses
    assert (vip.items[0].item_id, vip.items[0].rule) == (picks["hero"], "vip-hero")
    assert picks["hero"] not in {i.item_id for i in plain.items}


def test_a_boost_lifts_matching_items_and_names_itself(
    rules_server: RulesServer, model: Model, target: str
) -> None:
    plain = recommend(rules_server, model, k=20)
    boosted = recommend(rules_server, model, k=20, promo="on")
    before = sum(category_of(model, i.item_id) == target for i in plain)
    after = [i for i in boosted if category_of(model, i.item_id) == target]
    assert len(after) > before
    assert all(i.rule == "lift" for i in after)
    assert all(i.rule == "" for i in boosted if category_of(model, i.item_id) != target)
    assert boosted[0].rule == "lift"  # a factor of 50 puts the category first


def test_new_rules_are_picked_up_and_a_bad_file_keeps_them(
    rules_server: RulesServer, model: Model, picks: dict[str, str]
) -> None:
    vip = 'segment == "vip"'
    write_rules(
        rules_server.rules_path,
        "v2",
        [{"name": "later-hero", "pin": {"item_id": picks["later"], "position": 2, "when": vip}}],
    )
    wait_for_version(rules_server, "v2")
    items = recommend(rules_server, model, segment="vip")
    assert (items[1].item_id, items[1].rule) == (picks["later"], "later-hero")
    assert picks["hero"] not in {i.item_id for i in items}

    write_rules(
        rules_server.rules_path,
        "v3",
        [{"name": "broken", "boost": {"items": 'brand == "x" and', "factor": 2}}],
    )
    line = wait_for_log(rules_server, "stays in force")
    assert "rules[0] (broken).boost.items: position" in line and "v2 stays in force" in line
    assert rules_version(rules_server) == "v2"
    items = recommend(rules_server, model, segment="vip")
    assert (items[1].item_id, items[1].rule) == (picks["later"], "later-hero")


def test_a_bad_rules_file_stops_start_up(model_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    write_rules(path, "v1", [{"name": "a", "pin": {"item_id": "x", "position": 0}}])
    done = subprocess.run(
        recsvc_command("serve", "--model-store", str(model_store), "--port", "0"),
        env=server_env(RECSVC_RULES__PATH=str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        f"recsvc: error: rules.path {path}: rules[0] (a).pin.position: Input should be "
        "greater than or equal to 1" in done.stderr
    )
    assert "Traceback" not in done.stderr
