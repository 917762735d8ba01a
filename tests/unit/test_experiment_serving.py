"""Experiment serving's parts: attribution through the event log and the interaction store,
validation of the new fields, the impression queue, arm routing, the experiments document's
checks and the report's reading of the store."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from recsvc.artifacts.experiments_file import ArmHost, ExperimentsFile
from recsvc.core.arms import NO_ROUTE, ArmModels, ArmRouter
from recsvc.core.experiments import ExperimentsHolder, InvalidExperiments, parse_experiments
from recsvc.core.impressions import ImpressionLog
from recsvc.core.interactions import RawInteraction, validate_interactions
from recsvc.core.model import Model
from recsvc.core.queries import Limits, Recommendation, RecommendQuery, ScoredItem, Strategy
from recsvc.core.recommender import Recommender
from recsvc.core.response_ids import RecommendationIds
from recsvc.core.state import EventType, Interaction
from recsvc.data.interaction_store import BASE_SCHEMA, InteractionStore
from recsvc.errors import ArtifactError, InvalidArgument
from recsvc.evaluation.online import attribute, report, split_stored_events
from recsvc.store.codec import (
    columns_from_json,
    interaction_from_json,
    interaction_to_json,
    interactions_to_columns_json,
)
from recsvc.store.file_log import FileEventLog, read_columns_from
from recsvc.store.redis_backend import RedisEventLog

LIMITS = Limits(max_k=100, max_batch=100, max_id_list=100)
WEIGHTS = {kind: 1.0 for kind in EventType if kind is not EventType.FORGET}
NOW = 1_780_000_000_000

PLAIN = Interaction("u1", "i1", EventType.CLICK, 2.0, NOW, "e1")
CLICKED = PLAIN._replace(event_id="e2", recommendation_id="r" * 32, position=3)
SHOWN = Interaction(
    "u1", "i1", EventType.IMPRESSION, 1.0, NOW, "imp:r:0", "r" * 32, 0, "ranker", "new"
)


# ----------------------------------------------------------------------------- the codec


def test_records_carry_attribution_only_when_set() -> None:
    assert "recommendation_id" not in interaction_to_json(PLAIN)
    for event in (PLAIN, CLICKED, SHOWN):
        assert interaction_from_json(interaction_to_json(event)) == event
    assert "position" not in interactions_to_columns_json([PLAIN])
    columns = columns_from_json(interactions_to_columns_json([PLAIN, SHOWN]))
    assert columns["recommendation_id"] == [None, "r" * 32] and columns["arm"] == [None, "new"]


def test_lines_written_before_attribution_read_as_null() -> None:
    old = (
        '{"event_id":"e","user_id":"u","item_id":"i","event_type":"view","weight":1,'
        '"timestamp_ms":5}'
    )
    columns = columns_from_json(old)
    assert columns["position"] == [None] and columns["event_id"] == ["e"]
    assert interaction_from_json(old).recommendation_id == ""


async def test_file_log_keeps_attribution(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    await FileEventLog(path).append([PLAIN, CLICKED, SHOWN])
    columns, _ = read_columns_from(path, 0, sys.maxsize)
    assert columns["position"] == [None, 3, 0]
    assert columns["experiment"] == [None, None, "ranker"]


@pytest.mark.redis
async def test_redis_log_keeps_attribution(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    log = RedisEventLog(client, "exptest", dedupe_ttl=60)
    try:
        await log.append([CLICKED, SHOWN])
        entries = await client.xrange(log.stream_key)
        assert [interaction_from_json(fields[b"event"]) for _, fields in entries] == [
            CLICKED,
            SHOWN,
        ]
    finally:
        await client.delete(log.stream_key)
        await log.close()


def test_store_reads_old_parts_and_new_columns(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "istore")
    old = pa.table(
        {
            "event_id": ["old"],
            "user_id": ["u"],
            "item_id": ["i"],
            "event_type": ["view"],
            "weight": pa.array([1.0], pa.float32()),
            "timestamp_ms": pa.array([NOW], pa.int64()),
        },
        schema=BASE_SCHEMA,
    )
    store.write_table(old, "part-old.parquet")
    store.write_part([CLICKED, SHOWN], "1", "2")
    table = store.read().sort_by("event_id")
    assert table.column("event_id").to_pylist() == ["e2", "imp:r:0", "old"]
    assert table.column("position").to_pylist() == [3, 0, None]
    assert table.column("arm").to_pylist() == [None, "new", None]
    assert "position" not in pq.read_schema(next(store.root.rglob("part-old.parquet"))).names


# ----------------------------------------------------------------------------- validation


def raw(**fields: object) -> RawInteraction:
    base: dict[str, object] = {
        "user_id": "u",
        "item_id": "i",
        "event_type": EventType.CLICK,
        "weight": None,
        "timestamp_ms": NOW,
        "event_id": "e",
    }
    return RawInteraction(**{**base, **fields})  # type: ignore[arg-type]


def test_recommendation_id_and_position_are_validated() -> None:
    (event,) = validate_interactions(
        [raw(recommendation_id="abc", position=0)], LIMITS, WEIGHTS, NOW
    )
    assert (event.recommendation_id, event.position) == ("abc", 0)
    for bad, field in [
        (raw(recommendation_id="x" * 129), "interactions[1].recommendation_id"),
        (raw(recommendation_id="a\x00b"), "interactions[1].recommendation_id"),
        (raw(position=-1), "interactions[1].position"),
    ]:
        with pytest.raises(InvalidArgument, match=f"^{re.escape(field)}"):
            validate_interactions([raw(), bad], LIMITS, WEIGHTS, NOW)


# ----------------------------------------------------------------------------- impressions


def tagged(items: int) -> Recommendation:
    result = Recommendation(
        [ScoredItem(f"i{n}", 1.0) for n in range(items)], "v1", Strategy.PERSONALISED
    )
    result.recommendation_id, result.experiment, result.arm = "r1", "ranker", "new"
    return result


async def test_impressions_are_batched_and_dropped_when_full(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    impressions = ImpressionLog(FileEventLog(path), max_pending=5, batch_events=2)
    impressions.offer("u1", tagged(3))
    impressions.offer("u2", tagged(3))  # 6 > 5: dropped whole
    assert impressions.pending == 3 and impressions.stats.dropped == 3
    await impressions.flush()
    assert impressions.stats.logged == 3 and impressions.pending == 0
    columns, _ = read_columns_from(path, 0, sys.maxsize)
    assert columns["event_type"] == ["impression"] * 3
    assert columns["position"] == [0, 1, 2] and columns["recommendation_id"] == ["r1"] * 3
    assert columns["event_id"] == ["imp:r1:0", "imp:r1:1", "imp:r1:2"]


# ----------------------------------------------------------------------------- routing


def experiments_text(version: str, arm_model: str, diversity: float | None = 0.5) -> str:
    new: dict[str, object] = {"name": "new", "weight": 50, "model_version": arm_model}
    if diversity is not None:
        new["diversity"] = diversity
    return json.dumps(
        {
            "version": version,
            "experiments": [{"name": "ranker", "arms": [{"name": "control", "weight": 50}, new]}],
        }
    )


@pytest.fixture(scope="module")
def recommender(model: Model) -> Recommender:
    return Recommender(model, LIMITS, exact_search_max_items=0)


def test_routing(recommender: Recommender) -> None:
    holder = ExperimentsHolder()
    router = ArmRouter("default", holder)
    query = RecommendQuery("u1", 5)
    assert router.route(query, recommender) == (query, NO_ROUTE)  # no experiments
    holder.swap(parse_experiments(experiments_text("v1", "missing"), "t", "default"))
    users = [f"u{n}" for n in range(40)]
    routes = {u: router.route(RecommendQuery(u, 5), recommender) for u in users}
    new = [u for u, (_, route) in routes.items() if route.assignment.arm == "new"]  # type: ignore[union-attr]
    assert 0 < len(new) < len(users)
    for user, (routed, route) in routes.items():
        assert route.recommender is None  # control: the current; new: its model is missing
        assert routed.diversity == (0.5 if user in new else 0.0)
    assert router.models.fallbacks == len(new)
    router.models.swap({"missing": recommender})
    assert router.route(RecommendQuery(new[0], 5), recommender)[1].recommender is recommender
    anonymous = RecommendQuery("", 5, recent_item_ids=("i1",))
    assert router.route(anonymous, recommender)[1].assignment is None


def test_experiments_file_checks_and_counts_load_failures(
    tmp_path: Path, recommender: Recommender
) -> None:
    path = tmp_path / "experiments.json"
    holder = ExperimentsHolder()
    models = ArmModels()

    def load(version: str) -> Recommender:
        if version == "gone":
            raise ArtifactError("no such version")
        return recommender

    host = ArmHost(models, lambda: "current", load)
    document = ExperimentsFile(path, holder, {"shop": host}, "shop", max_arm_models=1)
    path.write_text(experiments_text("v1", "gone"))
    document.load()
    assert holder.version == "v1" and document.load_failures == 1 and not models.versions
    path.write_text(experiments_text("v2", "good"))
    document.load()
    assert models.versions == {"good": recommender} and models.memory()[0] == 1
    text = json.loads(experiments_text("v3", "x"))
    text["experiments"][0]["namespace"] = "other"
    path.write_text(json.dumps(text))
    with pytest.raises(InvalidExperiments, match="namespace 'other' is not served here"):
        document.check()
    text["experiments"][0]["namespace"] = ""
    text["experiments"][0]["arms"][0]["model_version"] = "y"
    path.write_text(json.dumps(text))
    with pytest.raises(InvalidExperiments, match=r"experiments\.max_arm_models is 1"):
        document.load()
    assert holder.version == "v2"


# ----------------------------------------------------------------------------- the report


def test_report_reads_the_store(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "istore")
    shown = [
        SHOWN._replace(event_id=f"imp:{rid}:{n}", recommendation_id=rid, item_id=f"i{n}",
                       position=n, arm=arm)
        for rid, arm in (("r1", "control"), ("r2", "new"))
        for n in range(2)
    ]  # fmt: skip
    click = CLICKED._replace(recommendation_id="r2", item_id="i1", position=1)
    store.write_part([*shown, click, PLAIN], "1", "2")
    impressions, events = split_stored_events(store.read())
    assert impressions.num_rows == 4 and events.num_rows == 1
    attributed, unattributed = attribute(impressions, events)
    result = report(attributed, "ranker")
    arms = {arm.arm: arm for arm in result.arms}
    assert arms["new"].clicks.count == 1 and arms["control"].clicks.count == 0
    assert arms["new"].impressions == 2 and unattributed == 0


# ----------------------------------------------------------------------------- response ids


def test_recommendation_ids_are_unique_and_renewed_in_a_forked_child() -> None:
    ids = RecommendationIds()
    made = [ids() for _ in range(1000)]
    assert len(set(made)) == 1000 and all(re.fullmatch("[0-9a-f]{32}", i) for i in made)
    assert RecommendationIds()()[:16] != made[0][:16]  # another service: another prefix
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert len(in_child) == 32 and in_child[:16] != made[0][:16]
