"""RecommendFromExamples through a real `recsvc serve` on the product-photo model (three kinds
of product, users who stick to one kind): negatives push their kind down in every mode,
photos count as examples, and errors name the field and position."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.client import Example, RecsvcClient
from recsvc.core.queries import SimilarityMode
from recsvc.testing import (
    ProductImages,
    ServerProcess,
    jpeg_bytes,
    product_picture,
    running_server,
    server_env,
)
from tests.helpers import run_recsvc

# A server on the product-photo model and nine calls of it: ~35 s, for the full suite.
pytestmark = pytest.mark.slow

MODES = [pb.SIMILARITY_MODE_COLLABORATIVE, pb.SIMILARITY_MODE_VISUAL, pb.SIMILARITY_MODE_HYBRID]


@pytest.fixture(scope="module")
def examples_server(
    image_model_store: Path, products: ProductImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("examples") / "store"
    shutil.copytree(image_model_store, store)
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(store / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_IMAGES__MAX_IMAGE_BYTES="200000",
    )
    with running_server(["serve", "--model-store", str(store), "--port", "0"], env) as proc:
        yield proc


@pytest.fixture(scope="module")
def stub(examples_server: ServerProcess) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(examples_server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def of_kind(products: ProductImages, kind: str) -> list[str]:
    return [i for i in products.ids if products.kinds[i] == kind]


def photo(kind: str, seed: int) -> bytes:
    return jpeg_bytes(product_picture(kind, random.Random(seed)))


def mean_position(response: pb.RecommendFromExamplesResponse, items: set[str]) -> float:
    return float(np.mean([n for n, i in enumerate(response.items) if i.item_id in items]))


@pytest.mark.parametrize("mode", MODES)
def test_negatives_rank_lower(
    stub: pb_grpc.RecommenderStub, products: ProductImages, mode: int
) -> None:
    """More like this shoe and this bag, less like that other bag: the bags, among the first
    with the two positives alone, fall behind the shoes."""
    shoes, bags = of_kind(products, "shoes"), of_kind(products, "bags")
    positives = [pb.Example(item_id=shoes[0]), pb.Example(item_id=bags[0])]
    alone = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(positives=positives, k=57, mode=mode), timeout=30
    )
    away = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(
            positives=positives, negatives=[pb.Example(item_id=bags[1])], k=57, mode=mode
        ),
        timeout=30,
    )
    others = set(bags[2:])
    assert mean_position(away, others) > mean_position(alone, others) + 10, mode
    first = [products.kinds[i.item_id] for i in away.items[: len(shoes) - 1]]
    assert first.count("shoes") >= 0.8 * len(first), mode
    assert {shoes[0], *bags[:2]}.isdisjoint(i.item_id for i in away.items)


@pytest.mark.parametrize("mode", MODES)
def test_a_negative_photo_pushes_its_kind_down(
    stub: pb_grpc.RecommenderStub, products: ProductImages, mode: int
) -> None:
    shirts = set(of_kind(products, "shirts"))
    positive = pb.Example(image=photo("shoes", 21))
    alone = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(positives=[positive], k=60, mode=mode), timeout=30
    )
    assert {products.kinds[i.item_id] for i in alone.items[:10]} == {"shoes"}, mode
    both = [positive, pb.Example(image=photo("shirts", 23))]
    liked = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(positives=both, k=60, mode=mode), timeout=30
    )
    away = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(
            positives=both,
            negatives=[pb.Example(image=photo("shirts", 22), weight=2.0)],
            k=60,
            mode=mode,
        ),
        timeout=30,
    )
    assert mean_position(away, shirts) > mean_position(liked, shirts) + 10, mode


def error_of(
    stub: pb_grpc.RecommenderStub, request: pb.RecommendFromExamplesRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecommendFromExamples(request, timeout=30)
    return caught.value


def test_errors_name_the_field_and_position(
    stub: pb_grpc.RecommenderStub, products: ProductImages
) -> None:
    known = pb.Example(item_id=products.ids[0])
    cases = [
        (
            pb.RecommendFromExamplesRequest(
                positives=[known, known, pb.Example(image=b"\x00garbage")], k=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "positives[2].image: unusable image",
        ),
        (
            pb.RecommendFromExamplesRequest(
                positives=[known], negatives=[pb.Example(image=b"x" * 300_000)], k=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "negatives[0].image: 300000 bytes is more than the limit",
        ),
        (
            pb.RecommendFromExamplesRequest(
                positives=[known], negatives=[pb.Example(item_id="gone")], k=5
            ),
            grpc.StatusCode.NOT_FOUND,
            "negatives[0].item_id: unknown item 'gone'",
        ),
        (
            pb.RecommendFromExamplesRequest(
                positives=[known, pb.Example(item_id=products.ids[1], weight=-1)], k=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "positives[1].weight: ",
        ),
        (
            pb.RecommendFromExamplesRequest(positives=[known, pb.Example()], k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "positives[1]: give an item_id or an image",
        ),
        (
            pb.RecommendFromExamplesRequest(negatives=[known], k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "positives: must hold at least one example",
        ),
        (
            pb.RecommendFromExamplesRequest(positives=[known] * 33, k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "positives: holds 33 examples, at most 32",
        ),
        (
            pb.RecommendFromExamplesRequest(positives=[known], k=5, mode=9),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mode: ",
        ),
        (
            pb.RecommendFromExamplesRequest(positives=[known], k=5, filter="price <"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter: ",
        ),
    ]
    for request, code, start in cases:
        error = error_of(stub, request)
        assert (error.code(), error.details()[: len(start)]) == (code, start)


def test_filters_and_exclusions_apply(
    stub: pb_grpc.RecommenderStub, products: ProductImages
) -> None:
    shoes = of_kind(products, "shoes")
    found = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(
            positives=[pb.Example(item_id=shoes[0])],
            k=10,
            mode=pb.SIMILARITY_MODE_HYBRID,
            categories=pb.CategoryFilter(include=["bags"]),
            exclude_item_ids=of_kind(products, "bags")[:3],
        ),
        timeout=30,
    )
    assert len(found.items) == 10
    assert {products.kinds[i.item_id] for i in found.items} == {"bags"}
    assert not {i.item_id for i in found.items} & set(of_kind(products, "bags")[:3])
    filtered = stub.RecommendFromExamples(
        pb.RecommendFromExamplesRequest(
            positives=[pb.Example(item_id=shoes[0])], k=5, filter='category == "shirts"'
        ),
        timeout=30,
    )
    assert {products.kinds[i.item_id] for i in filtered.items} == {"shirts"}


@pytest.mark.slow
def test_client_and_command_line(
    examples_server: ServerProcess, products: ProductImages, tmp_path: Path
) -> None:
    shoes, bags = of_kind(products, "shoes"), of_kind(products, "bags")
    with RecsvcClient(examples_server.target, timeout=30) as client:
        found = client.recommend_from_examples(
            [shoes[0], Example(shoes[1], weight=2.0)],
            [bags[0]],
            k=5,
            mode=SimilarityMode.HYBRID,
        )
        assert [products.kinds[i.item_id] for i in found.items] == ["shoes"] * 5
        assert not {shoes[0], shoes[1]} & {i.item_id for i in found.items}
    picture = tmp_path / "shoe.jpg"
    picture.write_bytes(photo("shoes", 31))
    target = ["--target", examples_server.target, "--timeout", "30"]
    called = run_recsvc(
        "call", "examples", *target, "--positive", shoes[2], "--negative", bags[1],
        "--positive-image", str(picture), "--mode", "visual", "-k", "4",
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    items = [i["item_id"] for i in json.loads(called.stdout)["items"]]
    assert [products.kinds[i] for i in items] == ["shoes"] * 4
    unknown = run_recsvc("call", "examples", *target, "--positive", "nope")
    assert unknown.returncode == 1
    assert "NOT_FOUND: positives[0].item_id" in unknown.stderr
