"""Experiment assignment: deterministic, sticky across processes, split as configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recsvc.core.experiments import (
    HOLDOUT_ARM,
    ExperimentsHolder,
    InvalidExperiments,
    describe,
    parse_experiments,
)


def _document(holdout: float = 0, weights: tuple[float, ...] = (50, 50), **extra: object) -> str:
    arms = [
        {"name": name, "weight": weight, "model_version": version}
        for name, weight, version in zip(
            ("control", "new", "third"), weights, ("", "v2", "v3"), strict=False
        )
    ]
    experiment = {"name": "ranker", "holdout_percent": holdout, "arms": arms, **extra}
    return json.dumps({"version": "1", "experiments": [experiment]})


USERS = [f"user-{number}" for number in range(10_000)]


def test_a_50_50_split_over_10000_users_is_within_2_points() -> None:
    experiments = parse_experiments(_document(), default_namespace="default")
    arms = [experiments.assign("default", user) for user in USERS]
    share = sum(1 for arm in arms if arm is not None and arm.arm == "new") / len(USERS)
    assert abs(share - 0.5) <= 0.02
    assert {arm.model_version for arm in arms if arm is not None} == {"", "v2"}


def test_weights_and_holdout_give_their_shares() -> None:
    experiments = parse_experiments(_document(holdout=10, weights=(80, 20)), default_namespace="")
    arms = [experiments.assign("", user) for user in USERS]
    names = [arm.arm for arm in arms if arm is not None]
    assert len(names) == len(USERS)
    assert abs(names.count(HOLDOUT_ARM) / len(USERS) - 0.10) <= 0.015
    assert abs(names.count("new") / len(USERS) - 0.9 * 0.2) <= 0.015


def test_changing_the_holdout_does_not_reshuffle_the_other_users() -> None:
    before = parse_experiments(_document(holdout=0), default_namespace="")
    after = parse_experiments(_document(holdout=20), default_namespace="")
    moved = 0
    for user in USERS:
        old, new = before.assign("", user), after.assign("", user)
        assert old is not None and new is not None
        if not new.held_out:
            moved += old.arm != new.arm
    assert moved == 0


def test_the_same_user_gets_the_same_arm_in_another_process() -> None:
    """Python's own hash is salted per process; the assignment must not depend on it."""
    here = [parse_experiments(_document()).assign("", user) for user in USERS[:500]]
    script = (
        "import json, sys\n"
        "from recsvc.core.experiments import parse_experiments\n"
        "experiments = parse_experiments(sys.argv[1])\n"
        "users = [f'user-{n}' for n in range(500)]\n"
        "print(json.dumps([experiments.assign('', u).arm for u in users]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", script, _document()],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert json.loads(done.stdout) == [arm.arm for arm in here if arm is not None]
    assert len(set(json.loads(done.stdout))) == 2


def test_a_namespace_without_an_experiment_gets_none() -> None:
    holder = ExperimentsHolder()
    assert holder.assign("default", "u1") is None and holder.version == ""
    holder.swap(parse_experiments(_document(namespace="shop-a")))
    assert holder.assign("shop-b", "u1") is None
    assigned = holder.assign("shop-a", "u1")
    assert assigned is not None and assigned.experiment == "ranker"
    assert holder.current() is not None and holder.current().model_versions == {"v2"}  # type: ignore[union-attr]


def test_describe_gives_each_arms_share() -> None:
    summary = describe(parse_experiments(_document(holdout=10, weights=(75, 25))))
    shares = {arm["arm"]: arm["share"] for arm in summary["experiments"][0]["arms"]}
    assert shares == pytest.approx({"control": 0.675, "new": 0.225})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not valid JSON"),
        (_document(weights=(100,)), "experiments[0].arms: List should have at least 2 items"),
        (_document(weights=(50, -1)), "experiments[0].arms[1].weight"),
        (_document(holdout=100), "experiments[0].holdout_percent"),
        (_document(colour="red"), "experiments[0].colour"),
        (
            json.dumps(
                {
                    "version": "1",
                    "experiments": [
                        {"name": "a", "arms": [{"name": "x", "weight": 1}] * 2},
                    ],
                }
            ),
            "arm name(s) used twice: x",
        ),
        (
            json.dumps(
                {
                    "version": "1",
                    "experiments": [
                        {
                            "name": "a",
                            "arms": [{"name": "holdout", "weight": 1}, {"name": "b", "weight": 1}],
                        },
                    ],
                }
            ),
            "reserved for the holdout",
        ),
        (
            json.dumps(
                {
                    "version": "1",
                    "experiments": [json.loads(_document())["experiments"][0]] * 2,
                }
            ),
            "already runs 'ranker'",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(document: str, message: str) -> None:
    with pytest.raises(InvalidExperiments, match=r"^experiments\.json: ") as caught:
        parse_experiments(document, "experiments.json")
    assert message in str(caught.value)
