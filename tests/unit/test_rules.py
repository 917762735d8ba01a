"""Business rules: the document's validation, time windows, request context, and what boosts
and pins do to real recommendations (a small real ALS model with HNSW indexes)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsvc.artifacts.rules_file import RulesFile
from recsvc.config import RulesSettings
from recsvc.core.model import Model
from recsvc.core.queries import CategoryFilter, RecommendQuery, ScoredItem, Strategy
from recsvc.core.recommender import Recommender
from recsvc.core.rule_effects import PlacedPin, apply_boosts, place_pins
from recsvc.core.rules import ActiveRules, InvalidRules, RuleSet, RulesHolder, parse_rules
from recsvc.core.state import StoredItem, UserState
from recsvc.errors import InvalidArgument
from recsvc.server import build_recommender, load_rules_file
from tests.conftest import TEST_SETTINGS

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def document(*rules: dict[str, Any], version: str = "2026-12-01.1") -> str:
    return json.dumps({"version": version, "rules": list(rules)})


def boost(name: str, items: str, factor: float, **extra: Any) -> dict[str, Any]:
    when = {"when": extra.pop("when")} if "when" in extra else {}
    return {"name": name, "boost": {"items": items, "factor": factor, **when}, **extra}


def pin(name: str, item_id: str, position: int, **extra: Any) -> dict[str, Any]:
    when = {"when": extra.pop("when")} if "when" in extra else {}
    return {"name": name, "pin": {"item_id": item_id, "position": position, **when}, **extra}


def active(text: str, now: datetime = NOW) -> ActiveRules:
    rules = parse_rules(text).active(now)
    assert rules is not None
    return rules


# ----------------------------------------------------------------------------- the document


def test_a_valid_document_is_compiled_in_document_order() -> None:
    rules = parse_rules(
        document(
            boost("sale", 'category == "shoes"', 1.5),
            pin("hero", "sku-1", 1, when='segment == "vip"'),
            boost("demote", "price > 100", 0.5, start="2026-11-01T00:00:00+01:00"),
        )
    )
    assert rules.version == "2026-12-01.1"
    assert [b.name for b in rules.boosts] == ["sale", "demote"]
    assert [(p.name, p.item_id, p.position) for p in rules.pins] == [("hero", "sku-1", 1)]
    assert rules.boosts[1].window.start == datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    assert len(rules) == 3


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [boost("a", 'brand == "x"', 0)],
            "rules[0] (a).boost.factor: Input should be greater than 0",
        ),
        ([boost("a", 'brand == "x"', -2)], "rules[0] (a).boost.factor"),
        (
            [pin("a", "x", 1), pin("a", "y", 2)],
            "rules[1]: name 'a' is used twice",
        ),
        (
            [{"name": "a", "pin": {"item_id": "x", "position": 1}, "boost": {"items": "b == 1"}}],
            "rules[0] (a).boost.factor: Field required",
        ),
        ([{"name": "a"}], "rules[0] (a): a rule has exactly one of boost and pin"),
        ([pin("a", "x", 0)], "rules[0] (a).pin.position: Input should be greater than or equal"),
        ([pin("bad name", "x", 1)], "rules[0] (bad name).name: String should match pattern"),
        ([pin("a", "x", 1, colour="red")], "rules[0] (a).colour: Extra inputs are not permitted"),
        (
            [pin("a", "x", 1, start="2026-12-02", end="2026-12-01")],
            "rules[0] (a): start (2026-12-02T00:00:00+00:00) must be before end",
        ),
        ([pin("a", "x", 1, start="soon")], "rules[0] (a).start: Input should be a valid datetime"),
    ],
)
def test_a_bad_rule_is_refused_naming_it(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvalidRules, match=r"^rules: ") as caught:
        parse_rules(document(*rules))
    assert message in str(caught.value)


def test_a_bad_expression_is_refused_naming_the_rule_and_the_position() -> None:
    with pytest.raises(InvalidRules) as caught:
        parse_rules(document(pin("ok", "x", 1), boost("sale", 'brand == "x" and', 2.0)))
    assert str(caught.value).startswith("rules: rules[1] (sale).boost.items: position 17: ")
    with pytest.raises(InvalidRules) as caught:
        parse_rules(document(pin("vip", "x", 1, when='segment = "vip"')), source="file.json")
    assert str(caught.value).startswith("file.json: rules[0] (vip).pin.when: position 9: ")


def test_a_pin_needs_a_valid_item_id_and_a_boost_an_expression() -> None:
    with pytest.raises(InvalidRules, match=r"rules\[0\] \(a\)\.pin\.item_id: must not be empty"):
        parse_rules(document(pin("a", "", 1)))
    with pytest.raises(InvalidRules, match=r"rules\[0\] \(a\)\.boost\.items: must not be empty"):
        parse_rules(document(boost("a", "   ", 2.0)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "rules: not valid JSON"),
        ("[]", "rules: document: Input should be a valid dictionary"),
        ('{"rules": []}', "rules: version: Field required"),
        ('{"version": "1", "rules": [], "extra": 1}', "rules: extra: Extra inputs"),
    ],
)
def test_a_malformed_document_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRules) as caught:
        parse_rules(text)
    assert str(caught.value).startswith(message)


def test_the_number_of_rules_is_limited() -> None:
    text = document(*(pin(f"p{n}", "x", 1) for n in range(4)))
    assert len(parse_rules(text, max_rules=4)) == 4
    with pytest.raises(InvalidRules, match="holds 4 rules, at most 3 allowed"):
        parse_rules(text, max_rules=3)


# ----------------------------------------------------------------------------- time and context


def test_rules_apply_from_start_included_to_end_excluded_naive_times_utc() -> None:
    rules = parse_rules(
        document(
            pin("always", "a", 1),
            pin("past", "b", 1, end="2026-12-01T11:59:59Z"),
            pin("future", "c", 1, start="2026-12-01T12:00:01"),
            pin("now", "d", 1, start="2026-12-01T11:00:00", end="2026-12-01T13:00:00+01:00"),
            boost("from-now", "x == 1", 2, start="2026-12-01T12:00:00Z"),
            boost("until-now", "x == 1", 2, end="2026-12-01T12:00:00Z"),
        )
    )
    now = rules.active(NOW)
    assert now is not None
    assert [p.name for p in now.pins] == ["always"]  # "now" ends at 12:00 UTC (13:00+01:00)
    assert [b.name for b in now.boosts] == ["from-now"]
    later = rules.active(NOW + timedelta(seconds=1))
    assert later is not None and [p.name for p in later.pins] == ["always", "future"]
    earlier = rules.active(NOW - timedelta(hours=1))
    assert earlier is not None
    assert [p.name for p in earlier.pins] == ["always", "past", "now"]
    assert [b.name for b in earlier.boosts] == ["until-now"]


def test_no_rule_in_force_is_none() -> None:
    rules = parse_rules(document(pin("past", "b", 1, end="2026-01-01")))
    assert rules.active(NOW) is None
    assert parse_rules(document()).active(NOW) is None


def test_when_matches_the_context_and_the_user_id_which_a_context_cannot_override() -> None:
    rules = active(
        document(
            pin("vip", "a", 1, when='segment == "vip" and country in ("de", "at")'),
            pin("one-user", "b", 2, when='user_id == "u7"'),
            boost("all", 'brand == "x"', 2.0),
        )
    )
    vip = rules.for_query("u1", {"segment": "vip", "country": "de"})
    assert vip is not None and [p.name for p in vip.pins] == ["vip"]
    assert [b.name for b in vip.boosts] == ["all"]
    other = rules.for_query("u1", {"segment": "vip", "country": "fr", "user_id": "u7"})
    assert other is not None and other.pins == ()
    user = rules.for_query("u7", {})
    assert user is not None and [p.name for p in user.pins] == ["one-user"]
    only_pins = active(document(pin("vip", "a", 1, when='segment == "vip"')))
    assert only_pins.for_query("u1", {"segment": "basic"}) is None


# ----------------------------------------------------------------------------- effects


def test_boosts_multiply_non_negative_scores_divide_negative_ones_and_resort() -> None:
    labels = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    scores = np.array([4.0, 3.0, 2.0, -1.0, -2.0], dtype=np.float32)
    up = np.zeros(20, dtype=bool)
    up[[12, 14]] = True
    down = np.zeros(20, dtype=bool)
    down[[10, 14]] = True
    out_labels, out_scores, names = apply_boosts(
        labels, scores, (("up", 2.5, up), ("dn", 0.5, down))
    )
    # 10: 4*0.5=2; 11: 3; 12: 2*2.5=5; 13: -1; 14: -2/(2.5*0.5)=-1.6
    assert out_labels.tolist() == [12, 11, 10, 13, 14]
    assert out_scores.tolist() == pytest.approx([5.0, 3.0, 2.0, -1.0, -1.6])
    assert names == ["up", "", "dn", "", "up"]
    assert out_scores.dtype == np.float32
    # A boost with factor > 1 lifts a negative score too (divides it).
    _, lifted, _ = apply_boosts(labels[3:4], scores[3:4], (("up", 2.0, np.ones(20, dtype=bool)),))
    assert lifted[0] > scores[3]


def test_boosts_that_match_nothing_change_nothing() -> None:
    labels = np.array([1, 2], dtype=np.int64)
    scores = np.array([2.0, 1.0], dtype=np.float32)
    out_labels, out_scores, names = apply_boosts(
        labels, scores, (("none", 9.0, np.zeros(5, dtype=bool)),)
    )
    assert out_labels is labels and out_scores is scores and names == ["", ""]


def items_of(labels: list[int]) -> list[ScoredItem]:
    return [ScoredItem(f"i{label}", float(100 - n)) for n, label in enumerate(labels)]


def new(label: int) -> ScoredItem:
    return ScoredItem(f"i{label}", -1.0)


def test_pins_move_or_insert_items_at_their_positions_and_keep_k() -> None:
    labels = [1, 2, 3, 4, 5]
    placed = place_pins(
        items_of(labels), labels, (PlacedPin("move", 4, 1), PlacedPin("new", 9, 3)), 5, new
    )
    assert [i.item_id for i in placed] == ["i4", "i1", "i9", "i2", "i3"]
    assert [i.rule for i in placed] == ["move", "", "new", "", ""]
    assert placed[0].score == 97.0  # a moved item keeps its score; a new one has its own
    assert placed[2].score == -1.0


def test_pins_at_one_position_go_in_document_order_and_past_the_end_append() -> None:
    labels = [1, 2]
    pins = (PlacedPin("first", 7, 1), PlacedPin("second", 8, 1), PlacedPin("far", 9, 5))
    placed = place_pins(items_of(labels), labels, pins, 5, new)
    assert [i.item_id for i in placed] == ["i7", "i8", "i1", "i2", "i9"]
    short = place_pins(items_of(labels), labels, pins, 2, new)
    assert [i.item_id for i in short] == ["i7", "i8"]


# ----------------------------------------------------------------------------- on a real model


@pytest.fixture(scope="module")
def recommender(model: Model) -> Recommender:
    return build_recommender(TEST_SETTINGS, model)


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


def test_a_boost_lifts_matching_items_and_names_itself(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[3]
    ranked = recommender.recommend(RecommendQuery(user, 30)).items
    plain, below = ranked[:10], ranked[10:]
    counts = Counter(category_of(model, i.item_id) for i in plain)
    # Of the categories in the pool that boosted queries rank (3k), the rarest in the top 10.
    target = min((category_of(model, i.item_id) for i in below), key=lambda c: counts[c])
    rules = active(document(boost("lift", f'category == "{target}"', 50.0)))
    boosted = recommender.recommend(RecommendQuery(user, 10), rules=rules).items
    assert len(boosted) == 10 == len({i.item_id for i in boosted})
    lifted = [i for i in boosted if category_of(model, i.item_id) == target]
    assert len(lifted) > counts[target]
    assert all(i.rule == "lift" for i in lifted)
    assert all(i.rule == "" for i in boosted if category_of(model, i.item_id) != target)
    scores = [i.score for i in boosted]
    assert scores == sorted(scores, reverse=True)
    # A demotion (factor < 1) of the same category pushes it out.
    demoted = recommender.recommend(
        RecommendQuery(user, 10),
        rules=active(document(boost("drop", f'category == "{target}"', 1e-6))),
    ).items
    assert sum(category_of(model, i.item_id) == target for i in demoted) <= counts[target]


def test_a_boost_with_diversity_still_returns_k_distinct_items(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[4]
    # A category in the pool that boosted queries rank (3k), though not the user's first.
    target = category_of(model, recommender.recommend(RecommendQuery(user, 30)).items[-1].item_id)
    rules = active(document(boost("lift", f'category == "{target}"', 50.0)))
    items = recommender.recommend(RecommendQuery(user, 10, diversity=0.5), rules=rules).items
    assert len(items) == 10 == len({i.item_id for i in items})
    assert any(i.rule == "lift" for i in items)
    assert all((i.rule == "lift") == (category_of(model, i.item_id) == target) for i in items)


def unseen_outside(recommender: Recommender, model: Model, user_row: int, k: int) -> str:
    """An item the user has not seen and that is not in their plain top k."""
    user = model.users.ids[user_row]
    shown = {i.item_id for i in recommender.recommend(RecommendQuery(user, k)).items}
    seen = set(model.seen_items(user_row).tolist())
    for row in range(model.info.num_items - 1, -1, -1):
        item_id = model.items.ids[row]
        if row not in seen and item_id not in shown:
            return item_id
    raise AssertionError("no candidate item")


def test_a_pin_places_its_item_for_a_matching_context_only(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[5]
    item = unseen_outside(recommender, model, 5, 10)
    rules = active(document(pin("hero", item, 2, when='segment == "vip"')))
    plain = recommender.recommend(RecommendQuery(user, 10)).items
    vip = recommender.recommend(
        RecommendQuery(user, 10, context={"segment": "vip"}), rules=rules
    ).items
    assert [i.item_id for i in vip] == [plain[0].item_id, item] + [i.item_id for i in plain[1:9]]
    assert vip[1].rule == "hero" and all(i.rule == "" for n, i in enumerate(vip) if n != 1)
    basic = recommender.recommend(
        RecommendQuery(user, 10, context={"segment": "basic"}), rules=rules
    ).items
    assert [i.item_id for i in basic] == [i.item_id for i in plain]


def test_a_pinned_item_already_listed_moves_to_its_position(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[6]
    plain = recommender.recommend(RecommendQuery(user, 10)).items
    rules = active(document(pin("up", plain[7].item_id, 1)))
    pinned = recommender.recommend(RecommendQuery(user, 10), rules=rules).items
    assert pinned[0].item_id == plain[7].item_id and pinned[0].rule == "up"
    assert pinned[0].score == plain[7].score
    assert [i.item_id for i in pinned[1:]] == [i.item_id for i in plain if i is not plain[7]]


def test_a_pin_never_returns_what_the_query_may_not(recommender: Recommender, model: Model) -> None:
    user_row = 8
    user = model.users.ids[user_row]
    seen = model.items.ids[int(model.seen_items(user_row)[0])]
    excluded = unseen_outside(recommender, model, user_row, 10)
    category = category_of(model, excluded)
    rules = active(document(pin("seen", seen, 1), pin("excluded", excluded, 2)))
    items = recommender.recommend(
        RecommendQuery(user, 10, exclude_item_ids=(excluded,)), rules=rules
    ).items
    assert seen not in {i.item_id for i in items} and excluded not in {i.item_id for i in items}
    assert all(i.rule == "" for i in items)
    # Seen items may be pinned when the query lets seen items through.
    items = recommender.recommend(RecommendQuery(user, 10, exclude_seen=False), rules=rules).items
    assert items[0].item_id == seen and items[0].rule == "seen"
    # The categories filter and hidden items keep the pin out as well.
    other = CategoryFilter(exclude=(category,))
    items = recommender.recommend(RecommendQuery(user, 10, categories=other), rules=rules).items
    assert excluded not in {i.item_id for i in items}
    # Unknown items are never pinned.
    unknown = active(document(pin("ghost", "no-such-item", 1)))
    items = recommender.recommend(RecommendQuery(user, 5), rules=unknown).items
    assert len(items) == 5 and all(i.rule == "" for i in items)


def test_a_hidden_item_is_not_pinned(model: Model) -> None:
    recommender = build_recommender(TEST_SETTINGS, model)  # its own: the catalogue changes
    user = model.users.ids[9]
    item = unseen_outside(recommender, model, 9, 10)
    rules = active(document(pin("hero", item, 1)))
    assert recommender.recommend(RecommendQuery(user, 10), rules=rules).items[0].item_id == item
    hidden = StoredItem(item, "", {}, "", None, available=False)
    recommender.add_items([], {item: hidden})
    items = recommender.recommend(RecommendQuery(user, 10), rules=rules).items
    assert item not in {i.item_id for i in items}


def test_popular_answers_get_boosts_and_pins_too(recommender: Recommender, model: Model) -> None:
    query = RecommendQuery("", 10, recent_item_ids=("no-such-item",))
    plain = recommender.recommend(query)
    assert plain.strategy is Strategy.POPULAR
    last = model.items.ids[int(model.popular_order[-1])]
    target = category_of(model, plain.items[9].item_id)
    rules = active(document(pin("hero", last, 3), boost("lift", f'category == "{target}"', 1000.0)))
    result = recommender.recommend(query, rules=rules)
    assert result.strategy is Strategy.POPULAR and len(result.items) == 10
    assert result.items[2].item_id == last and result.items[2].rule == "hero"
    lifted = [i for i in result.items if i.rule == "lift"]
    assert lifted and all(category_of(model, i.item_id) == target for i in lifted)
    assert result.items[0].rule == "lift"


def test_a_batch_applies_each_querys_own_rules(recommender: Recommender, model: Model) -> None:
    users = [model.users.ids[n] for n in (10, 11)]
    item = unseen_outside(recommender, model, 10, 5)
    rules = active(document(pin("hero", item, 1, when='segment == "vip"')))
    queries = [
        RecommendQuery(users[0], 5, context={"segment": "vip"}),
        RecommendQuery(users[1], 5),
    ]
    vip, other = recommender.recommend_many(queries, [UserState(), UserState()], rules=rules)
    assert vip.items[0].item_id == item and vip.items[0].rule == "hero"
    assert all(i.rule == "" for i in other.items)


def test_the_request_context_is_limited() -> None:
    limits = build_limits()
    RecommendQuery("u", 5, context={f"k{n}": "v" for n in range(64)}).validate(limits)
    with pytest.raises(InvalidArgument, match="context: holds 65 entries, at most 64"):
        RecommendQuery("u", 5, context={f"k{n}": "v" for n in range(65)}).validate(limits)
    with pytest.raises(InvalidArgument, match=r"context\[k\]: must be at most 256 bytes"):
        RecommendQuery("u", 5, context={"k": "v" * 257}).validate(limits)


def build_limits() -> Any:
    from recsvc.core.queries import Limits

    return Limits.from_settings(TEST_SETTINGS.serving)


# ----------------------------------------------------------------------------- the file


def write(path: Path, text: str, tick: int) -> None:
    path.write_text(text)
    # Distinct modification times, whatever the file system's clock resolution.
    os.utime(path, ns=(tick * 1_000_000_000, tick * 1_000_000_000))


async def test_the_rules_file_reloads_on_change_and_keeps_the_rules_when_bad(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.json"
    write(path, document(pin("a", "x", 1), version="v1"), 1)
    holder = RulesHolder()
    rules_file = RulesFile(path, holder, reload_seconds=1)
    rules_file.load()
    assert holder.version == "v1"
    assert await rules_file.check_once() is False  # unchanged
    write(path, document(pin("b", "x", 1), version="v2"), 2)
    assert await rules_file.check_once() is True
    current = holder.current()
    assert isinstance(current, RuleSet) and current.version == "v2"
    write(path, document(boost("c", "oops ==", 2.0), version="v3"), 3)
    assert await rules_file.check_once() is False
    assert holder.current() is current and rules_file.failures == 1
    assert await rules_file.check_once() is False  # the bad file is not read again
    assert rules_file.failures == 1
    path.unlink()
    assert await rules_file.check_once() is False
    assert holder.current() is current
    write(path, document(version="v4"), 4)
    assert await rules_file.check_once() is True and holder.version == "v4"


def test_a_bad_or_missing_file_at_start_up_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    settings = TEST_SETTINGS.model_copy(update={"rules": RulesSettings(path=path)})
    with pytest.raises(InvalidRules, match=f"rules.path: cannot read {path}"):
        load_rules_file(settings, RulesHolder())
    path.write_text(document(pin("a", "x", 1, end="2020-01-01", start="2021-01-01")))
    with pytest.raises(InvalidRules, match=r"rules\[0\] \(a\): start .* must be before end"):
        load_rules_file(settings, RulesHolder())
    path.write_text(" " * 2048)
    small = TEST_SETTINGS.model_copy(
        update={"rules": RulesSettings(path=path, max_file_bytes=1024)}
    )
    with pytest.raises(InvalidRules, match="larger than 1024 bytes"):
        load_rules_file(small, RulesHolder())
    assert load_rules_file(TEST_SETTINGS, RulesHolder()) is None  # no path: no rules


def test_a_pin_kept_out_by_the_requests_filter_is_not_placed(
    recommender: Recommender, model: Model
) -> None:
    user = model.users.ids[13]
    item = unseen_outside(recommender, model, 13, 10)
    rules = active(document(pin("hero", item, 1)))
    kept_out = RecommendQuery(user, 10, filter=f'category != "{category_of(model, item)}"')
    items = recommender.recommend(kept_out, rules=rules).items
    assert item not in {i.item_id for i in items} and all(i.rule == "" for i in items)
    let_in = RecommendQuery(user, 10, filter=f'category == "{category_of(model, item)}"')
    assert recommender.recommend(let_in, rules=rules).items[0].item_id == item


def test_a_boost_on_item_attributes_follows_catalogue_changes(model: Model) -> None:
    recommender = build_recommender(TEST_SETTINGS, model)  # its own: the catalogue changes
    user = model.users.ids[14]
    ranked = [i.item_id for i in recommender.recommend(RecommendQuery(user, 30)).items]
    acme = ranked[20:25]
    records = {i: StoredItem(i, "", {"brand": "acme", "price": "10"}, "", None) for i in acme}
    recommender.add_items([], records)
    rules = active(document(boost("acme", 'brand == "acme" and price < 20', 100.0)))
    items = recommender.recommend(RecommendQuery(user, 10), rules=rules).items
    assert [i.item_id for i in items[:5]] == acme  # lifted in their own order
    assert [i.rule for i in items] == ["acme"] * 5 + [""] * 5
    # A new catalogue snapshot (the brand changed) is evaluated again.
    recommender.add_items([], {i: StoredItem(i, "", {"brand": "other"}, "", None) for i in acme})
    items = recommender.recommend(RecommendQuery(user, 10), rules=rules).items
    assert [i.item_id for i in items] == ranked[:10]


def test_the_examples_in_the_docs_are_valid() -> None:
    text = (Path(__file__).parents[2] / "docs" / "rules.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    full = parse_rules(blocks[0])
    assert (len(full.boosts), len(full.pins)) == (3, 2)
    for block in blocks[1:]:
        assert len(parse_rules(f'{{"version": "1", "rules": [{block}]}}')) == 1
