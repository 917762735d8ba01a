from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding import EmbedOptions, embed_catalogue
from recsvc.catalogue.reader import read_catalogue
from recsvc.config import IndexSettings, ServingSettings, Settings, TrainSettings
from recsvc.core.model import Model
from recsvc.data.demo import DemoData, generate_demo_data
from recsvc.index import IndexBuildParams, IndexSearchParams
from recsvc.store.clients import sync_client
from recsvc.testing import (
    ProductImages,
    ServerProcess,
    make_product_images,
    redis_cluster,
    redis_server,
    running_server,
    server_env,
)
from recsvc.training.pipeline import train_from_files
from recsvc.vision.backbones import load_backbone
from recsvc.vision.embedder import ImageEmbedder
from tests.helpers import kind_interactions

SMALL_TRAIN = TrainSettings(factors=32, iterations=10, threads=2)
SMALL_INDEX = IndexSettings(recall_sample=100)
# Served as the server fixture serves: HNSW search even on these small catalogues.
TEST_SETTINGS = Settings(serving=ServingSettings(exact_search_max_items=0))
SEARCH = IndexSearchParams.from_settings(TEST_SETTINGS.serving)
BUILD = IndexBuildParams.from_settings(SMALL_INDEX, threads=2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where CUDA is not available."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests and not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A real Redis for the session: ``RECSVC_TEST_REDIS_URL`` when set, else a private
    redis-server on a free port. Tests flush its database: give the variable one of its own."""
    if url := os.environ.get("RECSVC_TEST_REDIS_URL"):
        yield url
        return
    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The URL of an empty database on a real Redis (flushed before the test)."""
    with redis.Redis.from_url(redis_server_url) as client:
        client.flushdb()
    return redis_server_url


@pytest.fixture(scope="session")
def redis_cluster_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private 3-master, 3-replica Redis Cluster for the session (started by the first test
    that asks for it, ~3 s); its ``redis+cluster://`` URL."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


@pytest.fixture
def redis_cluster_url(redis_cluster_server_url: str) -> str:
    """The URL of an empty Redis Cluster (every master flushed before the test)."""
    with sync_client(redis_cluster_server_url) as client:
        client.flushall()
    return redis_cluster_server_url


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return generate_demo_data(
        tmp_path_factory.mktemp("demo-data"), num_users=600, num_items=800, seed=3
    )


@pytest.fixture(scope="session")
def demo_data_path(demo_data: DemoData) -> Path:
    return demo_data.interactions


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> Path:
    root = tmp_path_factory.mktemp("model-store")
    train_from_files(
        demo_data.interactions,
        ModelStore(root),
        SMALL_TRAIN,
        SMALL_INDEX,
        items_path=demo_data.items,
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def model(model_store: Path) -> Model:
    return ModelStore(model_store).load_latest(SEARCH)


@pytest.fixture(scope="session")
def server(model_store: Path) -> Iterator[ServerProcess]:
    """A real `recsvc serve` process on a free port; HNSW search (no exact shortcut)."""
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(model_store.parent / "server-events.jsonl"),
        RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS="0",
        RECSVC_SERVING__MAX_K="100",
        RECSVC_SERVER__DRAIN_SECONDS="0",
    )
    with running_server(["serve", "--model-store", str(model_store), "--port", "0"], env) as proc:
        yield proc


# ------------------------------------------------------------------ product images


@pytest.fixture(scope="session")
def products(tmp_path_factory: pytest.TempPathFactory) -> ProductImages:
    return make_product_images(tmp_path_factory.mktemp("products"))


@pytest.fixture(scope="session")
def embedder() -> ImageEmbedder:
    return ImageEmbedder(load_backbone(), "cpu")


@pytest.fixture(scope="session")
def embedding_table(products: ProductImages, embedder: ImageEmbedder) -> Path:
    out = products.directory / "embeddings.parquet"
    catalogue = read_catalogue(products.catalogue)
    report = embed_catalogue(
        catalogue, embedder, out, EmbedOptions(loader_workers=0, progress=False)
    )
    assert report.embedded == len(products.ids)
    return out


@pytest.fixture(scope="session")
def cold_ids(products: ProductImages) -> list[str]:
    """The last 4 products of each kind have no interactions: they enter by their image."""
    return products.ids[-12:]


@pytest.fixture(scope="session")
def image_model_store(
    tmp_path_factory: pytest.TempPathFactory,
    products: ProductImages,
    embedding_table: Path,
    cold_ids: list[str],
) -> Path:
    root = tmp_path_factory.mktemp("image-model-store")
    warm = [i for i in products.ids if i not in cold_ids]
    train_from_files(
        kind_interactions(products, warm),
        ModelStore(root),
        TrainSettings(factors=16, iterations=15, threads=2),
        SMALL_INDEX,
        items_path=products.catalogue,
        progress=False,
        images_path=embedding_table,
    )
    return root


@pytest.fixture(scope="session")
def image_model(image_model_store: Path) -> Model:
    return ModelStore(image_model_store).load_latest(SEARCH)
