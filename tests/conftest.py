from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc.artifacts import ModelStore
from recsvc.config import IndexSettings, TrainSettings
from recsvc.core.model import Model
from tests.helpers import ServerProcess, running_server, server_env
from workers.demo_data import DemoData, generate_demo_data
from workers.train import index_params, train_from_files

SMALL_TRAIN = TrainSettings(factors=32, iterations=10, threads=2)
SMALL_INDEX = IndexSettings(recall_sample=100)


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
    return ModelStore(model_store).load_latest(index_params(SMALL_INDEX))


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
