"""RecommendFromExamples in the domain: the arithmetic (unit vectors, weights, signs) on a
synthetic space with known label directions, and the Recommender on the demo ALS model."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from recsvc.config import ServingSettings
from recsvc.core.added import NewItem
from recsvc.core.examples import MAX_EXAMPLES, Example, ExamplesQuery, combine
from recsvc.core.model import Model
from recsvc.core.queries import CategoryFilter, Limits, SimilarityMode, SimilarQuery
from recsvc.core.recommender import Recommender
from recsvc.errors import FailedPrecondition, InvalidArgument, NotFound, RecsvcError
from recsvc.server import build_recommender
from recsvc.testing import ProductImages, product_picture
from recsvc.vision.embedder import ImageEmbedder
from tests.conftest import TEST_SETTINGS

SETTINGS = TEST_SETTINGS.model_copy(
    update={"serving": ServingSettings(max_k=1000, max_id_list=20, exact_search_max_items=0)}
)
LIMITS = Limits.from_settings(SETTINGS.serving)


# ------------------------------------------------------------------ the arithmetic


def test_each_example_counts_by_its_weight_not_its_length() -> None:
    long, short = np.array([[50.0, 0.0]]), np.array([[0.0, 0.5]])
    query = combine(np.vstack([long, short]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(query, [1.0, 1.0], rtol=1e-6)
    query = combine(np.vstack([long, short]), np.array([1.0, -2.0]))
    np.testing.assert_allclose(query, [1.0, -2.0], rtol=1e-6)
    assert query.dtype == np.float32


def labelled_space(
    seed: int = 5,
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Items whose vectors are the sum of one random direction per label value (3 attributes
    of 4 values: every combination, 3 items each) plus a little noise, each scaled to a random
    length as ALS factors are: the space where "a - b + c" has a known right answer."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(3, 4, 32))
    labels = [combo for combo in itertools.product(range(4), repeat=3) for _ in range(3)]
    vectors = np.stack([sum(directions[a, v] for a, v in enumerate(combo)) for combo in labels])
    vectors += 0.3 * rng.normal(size=vectors.shape)
    vectors *= rng.uniform(0.3, 3.0, size=(len(vectors), 1))
    return vectors, labels


def analogy_hits(weights: tuple[float, float, float], queries: int = 200) -> float:
    """Share of analogies a - b + c (b, c differing in one attribute, a sharing b's value of
    it) whose nearest item (cosine, a, b, c left out) has a's other labels and c's value;
    ``weights`` are those of a, b, c in the combination."""
    vectors, labels = labelled_space()
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(queries):
        attribute = int(rng.integers(3))
        b = int(rng.integers(len(labels)))
        c = rng.choice(
            [i for i, lab in enumerate(labels) if _differs_in(lab, labels[b], attribute)]
        )
        a = rng.choice(
            [
                i
                for i, lab in enumerate(labels)
                if lab[attribute] == labels[b][attribute] and lab != labels[b]
            ]
        )
        target = list(labels[a])
        target[attribute] = labels[c][attribute]
        query = combine(vectors[[a, b, c]], np.array(weights))
        scores = units @ query
        scores[[a, b, c]] = -np.inf
        hits += labels[int(np.argmax(scores))] == tuple(target)
    return hits / queries


def _differs_in(x: tuple[int, ...], y: tuple[int, ...], attribute: int) -> bool:
    return [i for i in range(3) if x[i] != y[i]] == [attribute]


def test_analogies_find_the_item_with_the_changed_label() -> None:
    assert analogy_hits((1.0, -1.0, 1.0)) >= 0.9


@pytest.mark.parametrize("broken", [(1.0, 1.0, 1.0), (1.0, 1.0, -1.0), (-1.0, 1.0, 1.0)])
def test_a_sign_error_breaks_the_analogies(broken: tuple[float, float, float]) -> None:
    assert analogy_hits(broken) <= 0.3


# ------------------------------------------------------------------ the Recommender


@pytest.fixture(scope="module")
def recommender(model: Model) -> Recommender:
    return build_recommender(SETTINGS, model)


def ids(recommender: Recommender, query: ExamplesQuery) -> list[str]:
    return [item.item_id for item in recommender.recommend_from_examples(query, {}).items]


def category_of(model: Model, item_id: str) -> str:
    row = model.items.row(item_id)
    assert row is not None
    return model.category_names[model.item_categories[row]]


def of_category(model: Model, name: str) -> list[str]:
    return [i for i in model.items.ids if category_of(model, i) == name]


def test_one_positive_is_similar_items(recommender: Recommender, model: Model) -> None:
    item = model.items.ids[3]
    similar = recommender.similar_items(SimilarQuery(item, 10))
    found = recommender.recommend_from_examples(ExamplesQuery((Example(item),), k=10), {})
    assert [i.item_id for i in found.items] == [i.item_id for i in similar.items]
    assert found.model_version == model.version


def test_items_like_a_negative_rank_lower(recommender: Recommender, model: Model) -> None:
    categories = sorted({category_of(model, i) for i in model.items.ids})
    liked, disliked = of_category(model, categories[0]), of_category(model, categories[1])
    positive, negative = Example(liked[0]), Example(disliked[0])
    everything = model.info.num_items - 2  # every item but the two examples: all are ranked

    def positions_of_disliked(query: ExamplesQuery) -> npt.NDArray[np.int64]:
        found = ids(recommender, query)
        assert len(found) == everything
        return np.asarray([n for n, item in enumerate(found) if item in set(disliked[1:])])

    alone = positions_of_disliked(ExamplesQuery((positive,), k=everything))
    away = positions_of_disliked(ExamplesQuery((positive,), (negative,), k=everything))
    assert away.mean() > alone.mean() + 0.1 * everything
    assert np.median(away) > np.median(alone)


def test_examples_and_exclusions_are_never_returned(recommender: Recommender, model: Model) -> None:
    examples = model.items.ids[:3]
    first = ids(recommender, ExamplesQuery((Example(examples[0]), Example(examples[1])), k=20))
    query = ExamplesQuery(
        (Example(examples[0]), Example(examples[1])),
        (Example(examples[2]),),
        k=20,
        exclude_item_ids=tuple(first[:5]),
    )
    found = ids(recommender, query)
    assert len(found) == 20
    assert not set(found) & {*examples, *first[:5]}


def test_categories_and_filter_apply(recommender: Recommender, model: Model) -> None:
    item = model.items.ids[0]
    wanted = category_of(model, model.items.ids[1])
    by_category = ExamplesQuery((Example(item),), k=10, categories=CategoryFilter((wanted,)))
    assert {category_of(model, i) for i in ids(recommender, by_category)} == {wanted}
    by_filter = ExamplesQuery((Example(item),), k=10, filter=f'category == "{wanted}"')
    assert {category_of(model, i) for i in ids(recommender, by_filter)} == {wanted}


def test_weights_scale_the_examples(recommender: Recommender, model: Model) -> None:
    a, b = model.items.ids[0], model.items.ids[500]
    unset = ids(recommender, ExamplesQuery((Example(a), Example(b)), k=10))
    ones = ids(recommender, ExamplesQuery((Example(a, weight=1), Example(b, weight=1)), k=10))
    assert unset == ones
    towards_a = ids(recommender, ExamplesQuery((Example(a, weight=50), Example(b)), k=10))
    like_a = ids(recommender, ExamplesQuery((Example(a),), k=10))
    assert len(set(towards_a) & set(like_a)) >= 7


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (ExamplesQuery(()), "positives"),
        (ExamplesQuery((Example("x"),) * (MAX_EXAMPLES + 1)), "positives"),
        (ExamplesQuery((Example("x"),), (Example("y"),) * (MAX_EXAMPLES + 1)), "negatives"),
        (ExamplesQuery((Example("x"), Example("x", weight=-1.0))), "positives[1].weight"),
        (ExamplesQuery((Example("x"),), (Example("x", weight=math.nan),)), "negatives[0].weight"),
        (ExamplesQuery((Example("x", weight=math.inf),)), "positives[0].weight"),
        (ExamplesQuery((Example("x"), Example(""))), "positives[1]"),
        (ExamplesQuery((Example("x"), Example(image=b""))), "positives[1].image"),
        (ExamplesQuery((Example("x\x00"),)), "positives[0].item_id"),
        (ExamplesQuery((Example("x"),), k=0), "k"),
        (ExamplesQuery((Example("x"),), filter="price <"), "filter"),
        (ExamplesQuery((Example("x"),), exclude_item_ids=("",)), "exclude_item_ids[0]"),
    ],
)
def test_bad_queries_name_the_field(query: ExamplesQuery, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        query.validate(LIMITS)
    assert str(caught.value).startswith(f"{field}: ")


def test_unknown_items_are_not_found_by_position(recommender: Recommender, model: Model) -> None:
    known = model.items.ids[0]
    query = ExamplesQuery((Example(known),), (Example(known), Example("nope")))
    with pytest.raises(NotFound) as caught:
        recommender.check_examples(query)
    assert str(caught.value).startswith("negatives[1].item_id: unknown item 'nope'")


def failure(recommender: Recommender, query: ExamplesQuery) -> RecsvcError:
    with pytest.raises(RecsvcError) as caught:
        recommender.check_examples(query)
        recommender.recommend_from_examples(query, {})
    return caught.value


def test_spaces_the_model_lacks_fail_naming_the_field(
    recommender: Recommender, model: Model
) -> None:
    known = model.items.ids[0]
    photo = failure(recommender, ExamplesQuery((Example(known), Example(image=b"jpeg"))))
    assert isinstance(photo, FailedPrecondition)
    assert str(photo).startswith("positives[1].image: ")
    visual = failure(recommender, ExamplesQuery((Example(known),), mode=SimilarityMode.VISUAL))
    assert isinstance(visual, FailedPrecondition) and str(visual).startswith("mode: ")


def test_examples_that_cancel_out_are_refused(recommender: Recommender, model: Model) -> None:
    known = model.items.ids[0]
    cancelled = failure(recommender, ExamplesQuery((Example(known),), (Example(known),)))
    assert isinstance(cancelled, InvalidArgument)
    assert str(cancelled).startswith("negatives: the examples cancel out")


# ------------------------------------------------------------------ photos and added items


def test_added_items_and_photos_are_examples(
    image_model: Model, products: ProductImages, embedder: ImageEmbedder
) -> None:
    recommender = build_recommender(SETTINGS, image_model)
    rng = random.Random(41)
    new_bag = embedder.embed_images([product_picture("bags", rng)])[0]
    recommender.add_items([NewItem("new-bag", "bags", {}, new_bag)])
    shoe_photo = embedder.embed_images([product_picture("shoes", rng)])[0]
    photo = {"positives[1].image": shoe_photo}
    for mode in SimilarityMode:
        query = ExamplesQuery(
            (Example("new-bag"), Example(image=b"shoe")), (Example(products.ids[0]),), 10, mode
        )
        recommender.check_examples(query)
        found = [i.item_id for i in recommender.recommend_from_examples(query, photo).items]
        assert "new-bag" not in found and products.ids[0] not in found
        kinds = {products.kinds.get(i, "new") for i in found}
        assert kinds <= {"bags", "shoes"}, (mode, kinds)


def test_a_model_without_a_projection_takes_photos_in_the_visual_space(
    image_model: Model, products: ProductImages, embedder: ImageEmbedder
) -> None:
    assert image_model.visual is not None
    unprojected = replace(image_model, visual=replace(image_model.visual, projection=None))
    recommender = build_recommender(SETTINGS, unprojected)
    shoe = embedder.embed_images([product_picture("shoes", random.Random(43))])[0]
    query = ExamplesQuery((Example(image=b"shoe"),), k=5)
    with pytest.raises(FailedPrecondition, match=r"^positives\[0\]\.image: .*projection"):
        recommender.check_examples(query)
    for mode in (SimilarityMode.VISUAL, SimilarityMode.HYBRID):
        found = recommender.recommend_from_examples(
            replace(query, mode=mode), {"positives[0].image": shoe}
        )
        assert [products.kinds[i.item_id] for i in found.items] == ["shoes"] * 5, mode


def test_an_item_kept_only_for_training_is_not_an_example(
    image_model: Model, products: ProductImages
) -> None:
    recommender = build_recommender(SETTINGS, image_model)
    recommender.add_items([NewItem("no-photo", "bags")])  # no vector: kept, not ranked
    query = ExamplesQuery((Example(products.ids[0]),), (Example("no-photo"),), 5)
    for mode in SimilarityMode:
        with pytest.raises(NotFound, match=r"^negatives\[0\]\.item_id: unknown item"):
            recommender.check_examples(replace(query, mode=mode))
