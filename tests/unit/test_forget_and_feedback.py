"""ForgetUser tombstones, dislikes and impressions below the API: which stored events training
uses, what compaction removes, what the planner blocks and what fold-in counts (a real small
ALS model, real Parquet store, real artefact files)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recsvc.artifacts import ModelStore
from recsvc.artifacts.layout import DISLIKES
from recsvc.config import IndexSettings, TrainSettings, WorkerSettings
from recsvc.core.holder import RecommenderHolder
from recsvc.core.interactions import RawInteraction, validate_interactions
from recsvc.core.model import Model
from recsvc.core.queries import Limits, RecommendQuery, Strategy
from recsvc.core.recommender import Recommender
from recsvc.core.service import RecommendationService
from recsvc.core.state import EventType, Interaction, UserState
from recsvc.data.event_filters import TOMBSTONE_SLACK_MS, training_events
from recsvc.data.interaction_store import FORGET_PENDING, InteractionStore
from recsvc.errors import InvalidArgument
from recsvc.server import build_recommender
from recsvc.store.file_log import FileEventLog, read_columns_from
from recsvc.store.memory import InMemoryUserStore
from tests.conftest import BUILD, SEARCH, TEST_SETTINGS
from workers.retrain import RetrainPolicy, TrainWorker

FORGOTTEN_AT = 1_800_000_000_000
LIMITS = Limits.from_settings(TEST_SETTINGS.serving)


def event(user: str, item: str, kind: EventType, ts: int, n: int) -> Interaction:
    return Interaction(user, item, kind, 1.0, ts, f"{user}-{n}")


def stored_events() -> list[Interaction]:
    """User "gone": three events, forgotten, then one event well after the tombstone's
    slack (a fresh start); user "b": a view and a dislike of i1, a view of i2, an impression
    of i3; user "c": one view (untouched)."""
    later = FORGOTTEN_AT + TOMBSTONE_SLACK_MS + 1
    return [
        event("gone", "i1", EventType.VIEW, FORGOTTEN_AT - 5_000, 1),
        event("gone", "i2", EventType.PURCHASE, FORGOTTEN_AT - 1_000, 2),
        event("gone", "i4", EventType.DISLIKE, FORGOTTEN_AT - 1_000, 3),
        event("gone", "", EventType.FORGET, FORGOTTEN_AT, 4),
        event("gone", "i3", EventType.VIEW, later, 5),
        event("b", "i1", EventType.VIEW, FORGOTTEN_AT, 6),
        event("b", "i1", EventType.DISLIKE, FORGOTTEN_AT + 1, 7),
        event("b", "i2", EventType.VIEW, FORGOTTEN_AT, 8),
        event("b", "i3", EventType.IMPRESSION, FORGOTTEN_AT, 9),
        event("c", "i1", EventType.VIEW, FORGOTTEN_AT, 10),
    ]


def pairs(table: pa.Table) -> set[tuple[str, str]]:
    return set(
        zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), strict=True)
    )


# ------------------------------------------------------------------ stored events


def test_training_drops_forgotten_events_impressions_and_disliked_pairs(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "store")
    store.write_part(stored_events(), "a", "b")
    usable = training_events(store.read())
    assert pairs(usable.positives) == {("gone", "i3"), ("b", "i2"), ("c", "i1")}
    assert usable.dislikes == {"b": ("i1",)}  # the forgotten user's dislike is forgotten too
    interactions = store.interactions()
    assert sorted(interactions.user_ids) == ["b", "c", "gone"]
    assert interactions.num_interactions == 3
    assert interactions.dislikes == {"b": ("i1",)}


def test_compaction_removes_the_forgotten_events_and_keeps_the_tombstone(tmp_path: Path) -> None:
    """One part per partition is below the merge threshold: a recorded tombstone makes the
    compaction rewrite it all the same, and once done its record is cleared."""
    store = InteractionStore(tmp_path / "store")
    events = stored_events()
    store.write_part(events[:3], "a", "b")  # before the tombstone
    store.write_part(events[3:], "c", "d")
    assert len(list((store.root / FORGET_PENDING).iterdir())) == 1
    assert store.compact(min_parts=100) == 2
    table = store.read()
    gone = table.filter(pc.equal(table.column("user_id"), "gone"))
    assert sorted(gone.column("event_type").to_pylist()) == ["forget", "view"]
    assert gone.column("timestamp_ms").to_pylist() == [FORGOTTEN_AT, events[4].timestamp_ms]
    assert table.num_rows == len(events) - 3
    assert not list((store.root / FORGET_PENDING).iterdir())
    assert store.compact(min_parts=100) == 0  # nothing pending: nothing rewritten


def test_a_caller_cannot_record_a_tombstone() -> None:
    raw = [RawInteraction("u", "i", EventType.FORGET, None, 0, "e1")]
    weights = {kind: 1.0 for kind in EventType if kind is not EventType.FORGET}
    with pytest.raises(InvalidArgument, match=r"interactions\[0\]\.event_type"):
        validate_interactions(raw, LIMITS, weights)


# ------------------------------------------------------------------ serving


@pytest.fixture(scope="module")
def recommender(model: Model) -> Recommender:
    return build_recommender(TEST_SETTINGS, model)


def top(recommender: Recommender, user: str, state: UserState, k: int = 10) -> list[str]:
    query = RecommendQuery(user, k, exclude_seen=False)
    return [item.item_id for item in recommender.recommend(query, state).items]


def test_a_disliked_item_is_blocked_even_when_seen_items_are_allowed(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[7]
    first = top(recommender, user, UserState())[0]
    assert first not in top(recommender, user, UserState(dislikes=frozenset({first})))
    # The model's own dislikes (from training) block it too.
    disliking = Recommender(replace(model, dislikes={user: (first,)}), LIMITS)
    assert first not in top(disliking, user, UserState())
    other = model.users.ids[8]
    assert top(disliking, other, UserState()) == top(recommender, other, UserState())


def test_a_forgotten_user_is_unknown_to_the_loaded_model(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[9]
    assert recommender.recommend(RecommendQuery(user, 5)).strategy is Strategy.PERSONALISED
    forgotten = recommender.recommend(RecommendQuery(user, 5), UserState(forgotten=True))
    assert forgotten.strategy is Strategy.POPULAR
    # Folded in from what came after ForgetUser only: not from the training history.
    row = model.users.row(user)
    assert row is not None
    seen = [model.items.ids[i] for i in model.seen_items(row)]
    fresh = recommender.fold_in_user(user, {seen[0]: 1.0}, forgotten=True)
    alone = recommender.fold_in_user("someone-new", {seen[0]: 1.0})
    assert fresh is not None and alone is not None
    np.testing.assert_allclose(fresh, alone, rtol=1e-5)


def test_fold_in_counts_a_dislike_with_zero_confidence(
    recommender: Recommender, model: Model
) -> None:
    """Disliking a training item = folding in the training history without it."""
    user = model.users.ids[11]
    row = model.users.row(user)
    assert row is not None
    history = model.user_items[row]
    items = [model.items.ids[i] for i in history.indices]
    weights = dict(zip(items, history.data.tolist(), strict=True))
    disliked = items[0]
    with_dislike = recommender.fold_in_user(user, {}, frozenset({disliked}))
    without_item = recommender.fold_in_user(
        user, {i: w for i, w in weights.items() if i != disliked}, forgotten=True
    )
    plain = recommender.fold_in_user(user, {})
    assert with_dislike is not None and without_item is not None and plain is not None
    np.testing.assert_allclose(with_dislike, without_item, rtol=1e-4, atol=1e-6)
    assert not np.allclose(with_dislike, plain, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ artefacts


def test_dislikes_round_trip_through_the_artefact(model: Model, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    store.publish(model, BUILD)
    assert DISLIKES not in store.read_manifest(model.version).files  # none: no file
    assert store.load_latest(SEARCH).dislikes == {}
    disliking = replace(
        model,
        info=replace(model.info, version=store.new_version()),
        dislikes={"u-1": ("i00001", "i00002"), "stranger": ("i00003",)},
    )
    store.publish(disliking, BUILD)
    assert DISLIKES in store.verify(disliking.version).files  # checksummed like the rest
    loaded = store.load_latest(SEARCH)
    assert loaded.dislikes == {"u-1": ("i00001", "i00002"), "stranger": ("i00003",)}


# ------------------------------------------------------------------ the service


def service_over(recommender: Recommender, tmp_path: Path) -> RecommendationService:
    weights = {EventType(name): w for name, w in TEST_SETTINGS.events.model_dump().items()}
    return RecommendationService(
        RecommenderHolder(recommender),
        InMemoryUserStore(100, 3600, 3600),
        FileEventLog(tmp_path / "events.jsonl"),
        weights,
        store_timeout=1.0,
    )


async def test_forget_user_logs_the_tombstone_before_it_answers(
    recommender: Recommender, model: Model, tmp_path: Path
) -> None:
    service = service_over(recommender, tmp_path)
    user = model.users.ids[3]
    assert await service.forget_user(user) is True  # the model has factors of the user
    columns, _ = read_columns_from(tmp_path / "events.jsonl", 0, 100)
    assert columns["user_id"] == [user] and columns["event_type"] == ["forget"]
    assert (await service.store.get_state(user, model.version)).forgotten
    assert await service.forget_user("never-seen") is False
    with pytest.raises(InvalidArgument, match="user_id"):
        await service.forget_user("")


async def test_replay_honours_tombstones_and_skips_impressions(
    recommender: Recommender, tmp_path: Path
) -> None:
    """Embedded mode's start-up: the log replayed in order, so a tombstone forgets what came
    before it and nothing after; impressions never reach the history."""
    service = service_over(recommender, tmp_path)
    events = [
        event("u", "i1", EventType.VIEW, FORGOTTEN_AT - 2, 1),
        event("u", "", EventType.FORGET, FORGOTTEN_AT - 1, 2),
        event("u", "i2", EventType.VIEW, FORGOTTEN_AT, 3),
        event("u", "i3", EventType.IMPRESSION, FORGOTTEN_AT, 4),
        event("u", "i4", EventType.DISLIKE, FORGOTTEN_AT, 5),
    ]
    assert await service.replay([events[:2], events[2:]]) == (5, 1)
    state = await service.store.get_state("u", "v")
    assert state.forgotten and state.history == {"i2": 1.0}
    assert state.dislikes == frozenset({"i4"})


def test_an_ingested_forget_user_makes_training_due(model_store: Path, tmp_path: Path) -> None:
    """The current model holds the forgotten user until a model without them replaces it:
    a tombstone makes the next round train, however few events came in."""
    store = InteractionStore(tmp_path / "store")
    store.write_part([event("b", "i1", EventType.VIEW, FORGOTTEN_AT, 1)], "a", "a")
    policy = RetrainPolicy.from_settings(
        WorkerSettings(retrain_min_new_events=1000, retrain_max_age_seconds=86400)
    )
    worker = TrainWorker(store, ModelStore(model_store), TrainSettings(), IndexSettings(), policy)
    worker._save_state(store.count())
    assert worker.decide()[0] is False
    store.write_part([event("b", "", EventType.FORGET, FORGOTTEN_AT, 2)], "b", "b")
    due, reason, _ = worker.decide()
    assert due and "ForgetUser" in reason
    worker._save_state(store.count())  # as a training round does
    assert worker.decide()[0] is False
