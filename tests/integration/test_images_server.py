"""The image RPCs through a real server: visual and hybrid SimilarItems, SearchByImage, and
UpsertItems making a new product recommendable at once, kept across restarts and model swaps."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.artifacts import ModelStore
from recsvc.client import RecsvcClient
from recsvc.config import TrainSettings
from recsvc.core.items import RawItem
from recsvc.core.queries import SimilarityMode
from recsvc.testing import (
    ProductImages,
    ServerProcess,
    jpeg_bytes,
    product_picture,
    running_server,
    server_env,
)
from recsvc.training.pipeline import train_from_files
from tests.conftest import SMALL_INDEX
from tests.helpers import kind_interactions, run_recsvc

# Each test starts a server over an image model: several seconds apiece.
pytestmark = pytest.mark.slow


@pytest.fixture
def store_copy(tmp_path: Path, image_model_store: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(image_model_store, copy)
    return copy


@contextmanager
def serve(store: Path, products: ProductImages) -> Iterator[ServerProcess]:
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(store / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0.2",
        RECSVC_IMAGES__PATH_ROOT=str(products.directory),
        RECSVC_IMAGES__MAX_IMAGE_BYTES="200000",
    )
    with running_server(["serve", "--model-store", str(store), "--port", "0"], env) as proc:
        yield proc


@pytest.fixture
def image_server(store_copy: Path, products: ProductImages) -> Iterator[ServerProcess]:
    with serve(store_copy, products) as proc:
        yield proc


@pytest.fixture
def stub(image_server: ServerProcess) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(image_server.target) as channel:
        yield pb_grpc.RecommenderStub(channel)


def error_of(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)  # type: ignore[operator]
    return caught.value


def kinds_of(response: object, products: ProductImages) -> list[str]:
    return [products.kinds.get(i.item_id, i.item_id) for i in response.items]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_visual_search_rpcs(stub: pb_grpc.RecommenderStub, products: ProductImages) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.image_embedding_dim > 0
    item = products.ids[1]  # a shoe
    for mode in (pb.SIMILARITY_MODE_VISUAL, pb.SIMILARITY_MODE_HYBRID):
        similar = stub.SimilarItems(
            pb.SimilarItemsRequest(item_id=item, k=8, mode=mode), timeout=10
        )
        assert kinds_of(similar, products).count("shoes") >= 7

    photo = jpeg_bytes(product_picture("bags", random.Random(5)))
    found = stub.SearchByImage(pb.SearchByImageRequest(image=photo, k=5), timeout=30)
    assert kinds_of(found, products).count("bags") >= 4
    assert found.model_version == info.model_version

    garbage = error_of(stub.SearchByImage, pb.SearchByImageRequest(image=b"\x00garbage", k=5))
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert garbage.details().startswith("image: unusable image")
    too_big = error_of(stub.SearchByImage, pb.SearchByImageRequest(image=b"x" * 300_000, k=5))
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in too_big.details()


@pytest.mark.slow
def test_client_and_command_line(
    image_server: ServerProcess, products: ProductImages, tmp_path: Path
) -> None:
    photo = tmp_path / "shirt.jpg"
    photo.write_bytes(jpeg_bytes(product_picture("shirts", random.Random(3))))
    with RecsvcClient(image_server.target, timeout=30) as client:
        found = client.search_by_image(photo.read_bytes(), k=3)
        assert [products.kinds[i.item_id] for i in found.items] == ["shirts"] * 3
        assert client.upsert_items(
            [RawItem("cli-shirt", "shirts", image_bytes=photo.read_bytes())]
        ) == (1, 0)
        similar = client.similar_items("cli-shirt", 3, SimilarityMode.HYBRID)
        assert len(similar.items) == 3
    target = ["--target", image_server.target, "--timeout", "30"]
    searched = run_recsvc("call", "search-image", *target, "--image", str(photo), "-k", "2")
    assert searched.returncode == 0, searched.stderr
    assert len(json.loads(searched.stdout)["items"]) == 2
    upserted = run_recsvc("call", "upsert", *target, "--item", "cli-shirt", "--image", str(photo))
    assert json.loads(upserted.stdout) == {"created": 0, "updated": 1}
    visual = run_recsvc("call", "similar", *target, "--item", "cli-shirt", "--mode", "visual")
    assert visual.returncode == 0, visual.stderr


@pytest.mark.slow
def test_upserted_item_is_recommendable_at_once_and_kept(
    store_copy: Path, products: ProductImages, cold_ids: list[str]
) -> None:
    new_shoe = jpeg_bytes(product_picture("shoes", random.Random(11)))
    with serve(store_copy, products) as proc, grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        # One bad item rejects the whole call, naming it; nothing is added.
        bad = error_of(
            stub.UpsertItems,
            pb.UpsertItemsRequest(
                items=[
                    pb.Item(item_id="new-shoe", category="shoes", image_bytes=new_shoe),
                    pb.Item(item_id="broken", image_bytes=b"not an image"),
                ]
            ),
        )
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.details().startswith("items[1].image_bytes: unusable image")
        missing = error_of(stub.SimilarItems, pb.SimilarItemsRequest(item_id="new-shoe", k=3))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        outside = error_of(
            stub.UpsertItems,
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", image_path="../../etc/passwd")]),
        )
        assert outside.details().startswith("items[0].image_path: must be inside")

        added = stub.UpsertItems(
            pb.UpsertItemsRequest(
                items=[
                    pb.Item(item_id="new-shoe", category="shoes", image_bytes=new_shoe),
                    pb.Item(item_id="new-bag", image_path=f"{products.ids[2]}.jpg"),
                    pb.Item(item_id=products.ids[0], category="shirts"),
                ]
            ),
            timeout=30,
        )
        assert (added.created, added.updated) == (2, 1)
        similar = stub.SimilarItems(
            pb.SimilarItemsRequest(item_id="new-shoe", k=6, mode=pb.SIMILARITY_MODE_VISUAL),
            timeout=10,
        )
        assert kinds_of(similar, products).count("shoes") >= 5
        # u001 likes shoes: the new shoe ranks among the shoes, before any other kind.
        ranked = stub.Recommend(pb.RecommendRequest(user_id="u001", k=70), timeout=10)
        ids = [i.item_id for i in ranked.items]
        assert "new-shoe" in ids
        kinds_before = kinds_of(ranked, products)[: ids.index("new-shoe")]
        assert set(kinds_before) <= {"shoes"}

        # A new model version (the same data, retrained) keeps the added items.
        first_version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_version
        warm = [i for i in products.ids if i not in cold_ids]
        train_from_files(
            kind_interactions(products, warm),
            ModelStore(store_copy),
            TrainSettings(factors=16, iterations=15, threads=2, seed=9),
            SMALL_INDEX,
            items_path=products.catalogue,
            progress=False,
            images_path=products.directory / "embeddings.parquet",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            if info.model_version != first_version:
                break
            time.sleep(0.2)
        assert info.model_version != first_version
        after_swap = stub.SimilarItems(
            pb.SimilarItemsRequest(item_id="new-shoe", k=3, mode=pb.SIMILARITY_MODE_VISUAL),
            timeout=10,
        )
        assert after_swap.model_version == info.model_version

    # A restarted server still knows the added items (item log in the model store).
    with serve(store_copy, products) as proc, grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        again = stub.SimilarItems(pb.SimilarItemsRequest(item_id="new-bag", k=3), timeout=10)
        assert len(again.items) == 3


def test_bad_upserts_and_searches_name_the_field(stub: pb_grpc.RecommenderStub) -> None:
    photo = jpeg_bytes(product_picture("shoes", random.Random(1)))
    cases = [
        (pb.UpsertItemsRequest(items=[pb.Item(item_id="")]), "items[0].item_id"),
        (
            pb.UpsertItemsRequest(items=[pb.Item(item_id="a"), pb.Item(item_id="a")]),
            "items[1].item_id",
        ),
        (
            pb.UpsertItemsRequest(items=[pb.Item(item_id="a", category="c" * 300)]),
            "items[0].category",
        ),
        (
            pb.UpsertItemsRequest(
                items=[pb.Item(item_id="a", attributes={f"k{n}": "v" for n in range(65)})]
            ),
            "items[0].attributes",
        ),
        (
            pb.UpsertItemsRequest(items=[pb.Item(item_id="a", image_bytes=b"")]),
            "items[0].image_bytes",
        ),
        (
            pb.UpsertItemsRequest(items=[pb.Item(item_id="a", image_path="missing.jpg")]),
            "items[0].image_path",
        ),
    ]
    for request, field in cases:
        error = error_of(stub.UpsertItems, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.details().startswith(f"{field}:"), error.details()
    for request, field in [
        (pb.SearchByImageRequest(image=photo, k=0), "k"),
        (
            pb.SearchByImageRequest(image=photo, k=3, categories=pb.CategoryFilter(include=[""])),
            "categories.include[0]",
        ),
    ]:
        error = error_of(stub.SearchByImage, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.details().startswith(f"{field}:"), error.details()
    unknown = error_of(
        stub.SimilarItems,
        pb.SimilarItemsRequest(item_id="nope", k=3, mode=pb.SIMILARITY_MODE_VISUAL),
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and unknown.details().startswith("item_id:")


@pytest.mark.slow
def test_image_searches_keep_to_the_filter(
    stub: pb_grpc.RecommenderStub, products: ProductImages
) -> None:
    """Attributes set by UpsertItems on the model's items (no new image) filter SearchByImage
    and visual SimilarItems; a bad filter fails naming the field, before any embedding."""
    price = {item_id: 10 if n % 2 else 100 for n, item_id in enumerate(products.ids)}
    stub.UpsertItems(
        pb.UpsertItemsRequest(
            items=[pb.Item(item_id=i, attributes={"price": str(p)}) for i, p in price.items()]
        ),
        timeout=30,
    )
    photo = jpeg_bytes(product_picture("bags", random.Random(5)))
    found = stub.SearchByImage(
        pb.SearchByImageRequest(image=photo, k=5, filter="price < 50"), timeout=30
    )
    assert len(found.items) == 5
    assert all(price[item.item_id] == 10 for item in found.items)
    assert kinds_of(found, products).count("bags") >= 4  # still the nearest ones that match
    similar = stub.SimilarItems(
        pb.SimilarItemsRequest(
            item_id=products.ids[1], k=5, mode=pb.SIMILARITY_MODE_VISUAL, filter="price >= 50"
        ),
        timeout=10,
    )
    assert len(similar.items) == 5
    assert all(price[item.item_id] == 100 for item in similar.items)
    for text, message in [
        ("price <", "filter: position 8: expected a number"),
        ('price in ("a"', "filter: position 14: expected ')' or ','"),
    ]:
        error = error_of(stub.SearchByImage, pb.SearchByImageRequest(image=photo, k=5, filter=text))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(message), error.details()
