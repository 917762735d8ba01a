"""Catalogue reading, the resumable embed job, the projection, the visual space, and a model
trained with images: artefact round trip, visual and hybrid similarity, search by image, and
items added after training."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsvc.artifacts import ModelStore
from recsvc.catalogue.embedding import EmbedOptions, embed_catalogue
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.catalogue.reader import Catalogue, CatalogueItem, CatalogueOptions, read_catalogue
from recsvc.config import TrainSettings
from recsvc.core.added import NewItem
from recsvc.core.model import Model
from recsvc.core.queries import (
    CategoryFilter,
    ImageQuery,
    RecommendQuery,
    SimilarityMode,
    SimilarQuery,
)
from recsvc.core.state import StoredItem
from recsvc.data.interaction_store import InteractionStore
from recsvc.errors import ArtifactError, DataError, InvalidArgument, NotFound
from recsvc.evaluation.cold_start import visual_agreement
from recsvc.fitting.cold_start_projection import fit_projection
from recsvc.fitting.visual_space import fit_visual_adapter
from recsvc.server import build_recommender
from recsvc.testing import KINDS, ProductImages, jpeg_bytes, product_picture
from recsvc.vision.embedder import ImageEmbedder
from tests.conftest import SEARCH, SMALL_INDEX, TEST_SETTINGS
from tests.helpers import kind_interactions
from workers.retrain import RetrainPolicy, TrainWorker

INLINE = EmbedOptions(loader_workers=0, progress=False, checkpoint_every=1)


def test_catalogue_reader_skips_and_reports_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.csv"
    path.write_text(
        "id,category,colour,note\n"
        "0012,shoes,red,ok\n"
        "13,bags,green,too,many,fields\n"
        "0012,shoes,red,repeated id\n"
        ",shoes,red,no id\n"
        "14,bags,blue,fine\n"
    )
    catalogue = read_catalogue(path, CatalogueOptions(image_pattern="{item_id}.jpg"))
    assert [i.item_id for i in catalogue.items] == ["0012", "14"]  # ids stay text
    assert catalogue.rows_skipped == 3
    first = catalogue.items[0]
    assert first.category == "shoes" and first.attributes == {"colour": "red", "note": "ok"}
    assert first.image == tmp_path / "0012.jpg"
    with pytest.raises(DataError, match="no column 'nope'"):
        read_catalogue(path, CatalogueOptions(category_column="nope"))


def test_catalogue_with_image_bytes_in_parquet(tmp_path: Path) -> None:
    data = jpeg_bytes(product_picture("bags", random.Random(0)))
    path = tmp_path / "catalogue.parquet"
    pq.write_table(
        pa.table({"item_id": ["a", "b"], "image_bytes": [data, None], "category": ["x", "y"]}),
        path,
    )
    catalogue = read_catalogue(path)
    assert catalogue.items[0].image == data
    assert catalogue.items[1].image is None


@pytest.mark.slow
def test_embed_reports_bad_images_and_resumes(
    tmp_path: Path, products: ProductImages, embedder: ImageEmbedder
) -> None:
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    items = [CatalogueItem(i, products.path(i), products.kinds[i]) for i in products.ids[:6]] + [
        CatalogueItem("corrupt", tmp_path / "corrupt.jpg"),
        CatalogueItem("missing", tmp_path / "missing.jpg"),
        CatalogueItem("none", None),
    ]
    out = tmp_path / "embeddings.parquet"
    stops = iter([False, True])  # stop after the second batch
    first = embed_catalogue(
        Catalogue(items),
        embedder,
        out,
        EmbedOptions(batch_size=2, loader_workers=0, progress=False),
        should_stop=lambda: next(stops, True),
    )
    assert first.interrupted and first.embedded == 4
    assert len(EmbeddingTable.load(out).item_ids) == 4  # checkpointed on the way out

    second = embed_catalogue(Catalogue(items), embedder, out, INLINE)
    assert (second.reused, second.embedded, second.failed, second.without_image) == (4, 2, 2, 1)
    assert any(f.startswith("corrupt: ") for f in second.failures)
    assert any(f.startswith("missing: cannot read") for f in second.failures)
    table = EmbeddingTable.load(out)
    assert table.item_ids == products.ids[:6] and table.backbone == "efficientnet_lite0"
    assert np.allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-5)

    # A changed image is embedded again; unchanged ones are not.
    shutil.copy(products.path(products.ids[1]), tmp_path / "changed.jpg")
    items[0] = CatalogueItem(products.ids[0], tmp_path / "changed.jpg", "x")
    third = embed_catalogue(Catalogue(items), embedder, out, INLINE)
    assert (third.reused, third.embedded) == (5, 1)
    table = EmbeddingTable.load(out)
    assert np.allclose(table.vectors[0], table.vectors[1], atol=1e-5)


def test_embedding_table_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    with pytest.raises(DataError, match="not an embedding table"):
        EmbeddingTable.load(path)


@pytest.mark.slow
def test_projection_learns_a_linear_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32)).astype(np.float32)
    y = (x @ rng.normal(size=(32, 8))).astype(np.float32)
    fitted = fit_projection(x, y)
    assert fitted.validation_r2 > 0.8
    assert fitted.projection.apply(x).shape == (400, 8)
    with pytest.raises(ValueError, match="at least 10"):
        fit_projection(x[:5], y[:5])


def test_visual_space_separates_labelled_groups() -> None:
    rng = np.random.default_rng(1)
    labels = [f"c{i % 4}" for i in range(400)]
    centres = rng.normal(size=(4, 64))
    # A weak label signal buried in strong label-free noise along other directions.
    x = 0.3 * centres[[int(c[1]) for c in labels]] + rng.normal(size=(400, 64)) * np.linspace(
        0.1, 3, 64
    )
    x = x.astype(np.float32)
    adapter = fit_visual_adapter(x[:300], labels[:300])
    assert adapter is not None and adapter.output_dim == 3 + 64
    raw = visual_agreement(x[300:], labels[300:])["agreement@10"]
    learned = visual_agreement(adapter.apply(x[300:]), labels[300:])["agreement@10"]
    assert learned > raw + 0.1
    assert fit_visual_adapter(x, ["a", "b"] * 200) is None  # too few categories


def test_model_with_images_round_trips(image_model_store: Path, image_model: Model) -> None:
    visual = image_model.visual
    assert visual is not None and visual.projection is not None and visual.adapter is not None
    # LDA over 3 kinds, the raw, and the class probabilities (RECSVC_TRAIN__VISUAL_CLASS_WEIGHT)
    assert image_model.info.image_embedding_dim == 2 + 1280 + 3
    assert image_model.info.statistics["cold_items"] == 12
    assert len(visual.rows) == image_model.info.num_items == 60
    store = ModelStore(image_model_store)
    version = image_model.version
    (store.versions_dir / version / "visual_index.hnsw").write_bytes(b"tampered")
    try:
        with pytest.raises(ArtifactError, match=r"visual_index\.hnsw"):
            store.load(version, SEARCH)
    finally:
        store_copy = image_model.visual.index
        store_copy.save_hnsw(store.versions_dir / version / "visual_index.hnsw")
    assert store.load(version, SEARCH).visual is not None


def _kind_share(model: Model, ids: list[str], kind: str, products: ProductImages) -> float:
    return float(np.mean([products.kinds[i] == kind for i in ids]))


def test_visual_and_hybrid_similarity(image_model: Model, products: ProductImages) -> None:
    recommender = build_recommender(TEST_SETTINGS, image_model)
    item = products.ids[0]
    for mode in (SimilarityMode.VISUAL, SimilarityMode.HYBRID):
        result = recommender.similar_items(SimilarQuery(item, 10, mode))
        ids = [i.item_id for i in result.items]
        assert item not in ids and len(ids) == 10
        assert _kind_share(image_model, ids, products.kinds[item], products) >= 0.8, mode
    only = recommender.similar_items(
        SimilarQuery(item, 5, SimilarityMode.VISUAL, CategoryFilter(include=("bags",)))
    )
    assert {products.kinds[i.item_id] for i in only.items} == {"bags"}


def test_cold_items_are_recommended_by_their_image(
    image_model: Model, products: ProductImages, cold_ids: list[str]
) -> None:
    recommender = build_recommender(TEST_SETTINGS, image_model)
    user = "u000"  # likes KINDS[0]
    everything = recommender.recommend(RecommendQuery(user, 60)).items
    cold_ranked = [i.item_id for i in everything if i.item_id in cold_ids]
    assert cold_ranked, "cold items take part in recommendations"
    assert products.kinds[cold_ranked[0]] == KINDS[0]


def test_search_by_image_and_added_items(
    image_model: Model, products: ProductImages, embedder: ImageEmbedder
) -> None:
    recommender = build_recommender(TEST_SETTINGS, image_model)
    rng = random.Random(99)
    shoe = embedder.embed_images([product_picture("shoes", rng)])[0]
    result = recommender.search_by_image(shoe, ImageQuery(5))
    assert [products.kinds[i.item_id] for i in result.items].count("shoes") >= 4
    with pytest.raises(InvalidArgument, match=r"^image"):
        recommender.search_by_image(shoe[:10], ImageQuery(5))

    new_shirt = embedder.embed_images([product_picture("shirts", rng)])[0]
    created, updated = recommender.add_items(
        [NewItem("new-shirt", "shirts", {}, new_shirt), NewItem(products.ids[0], "shirts")]
    )
    assert (created, updated) == (1, 1)
    similar = recommender.similar_items(SimilarQuery("new-shirt", 5, SimilarityMode.VISUAL))
    assert [products.kinds[i.item_id] for i in similar.items].count("shirts") >= 4
    collaborative = recommender.similar_items(SimilarQuery("new-shirt", 5))
    assert len(collaborative.items) == 5
    ranked = [i.item_id for i in recommender.recommend(RecommendQuery("u000", 61)).items]
    assert "new-shirt" in ranked
    assert "new-shirt" not in [
        i.item_id
        for i in recommender.recommend(
            RecommendQuery("u000", 61, exclude_item_ids=("new-shirt",))
        ).items
    ]
    found = recommender.search_by_image(new_shirt, ImageQuery(1))
    assert found.items[0].item_id == "new-shirt"
    # A newly loaded model version starts without the added items (the item service re-adds
    # those the new model does not know).
    with pytest.raises(NotFound):
        build_recommender(TEST_SETTINGS, image_model).similar_items(SimilarQuery("new-shirt", 5))


@pytest.mark.slow
def test_train_worker_takes_in_items_upserted_while_serving(
    tmp_path: Path,
    products: ProductImages,
    embedding_table: Path,
    embedder: ImageEmbedder,
    cold_ids: list[str],
) -> None:
    photo = embedder.embed_images([product_picture("bags", random.Random(21))])[0]
    upserted = [
        StoredItem("upserted-bag", "bags", {}, "efficientnet_lite0", photo),
        StoredItem("other-backbone", "bags", {}, "resnet50", photo),
        StoredItem("no-photo", "bags", {}, "efficientnet_lite0", None),
    ]
    version = _train_with_logged_items(tmp_path, products, embedding_table, cold_ids, upserted)
    assert version is not None
    model = ModelStore(tmp_path / "models").load(version, SEARCH)
    assert "upserted-bag" in model.items and "other-backbone" not in model.items
    assert model.info.statistics["cold_items"] == len(cold_ids) + 1
    similar = build_recommender(TEST_SETTINGS, model).similar_items(
        SimilarQuery("upserted-bag", 5, SimilarityMode.VISUAL)
    )
    assert [products.kinds[i.item_id] for i in similar.items].count("bags") >= 4


@pytest.mark.slow
def test_train_worker_drops_deleted_items_and_keeps_hidden_ones(
    tmp_path: Path, products: ProductImages, embedding_table: Path, cold_ids: list[str]
) -> None:
    warm = [i for i in products.ids if i not in cold_ids]
    deleted_warm, hidden_warm, deleted_cold = warm[0], warm[1], cold_ids[0]
    logged = [
        StoredItem(deleted_warm, "", {}, "", None, available=False, deleted=True),
        StoredItem(deleted_cold, "", {}, "", None, available=False, deleted=True),
        StoredItem(hidden_warm, "bags", {}, "efficientnet_lite0", None, available=False),
    ]
    version = _train_with_logged_items(tmp_path, products, embedding_table, cold_ids, logged)
    assert version is not None
    model = ModelStore(tmp_path / "models").load(version, SEARCH)
    assert deleted_warm not in model.items and deleted_cold not in model.items
    assert hidden_warm in model.items
    assert model.info.statistics["cold_items"] == len(cold_ids) - 1


def _train_with_logged_items(
    tmp_path: Path,
    products: ProductImages,
    embedding_table: Path,
    cold_ids: list[str],
    logged: list[StoredItem],
) -> str | None:
    """One forced train-worker round on the warm products' interactions, the embedding table
    and ``logged`` as the item log; the new version."""
    warm = [i for i in products.ids if i not in cold_ids]
    worker = TrainWorker(
        InteractionStore(tmp_path / "events"),
        ModelStore(tmp_path / "models"),
        TrainSettings(factors=8, iterations=5, threads=2),
        SMALL_INDEX,
        RetrainPolicy.from_settings(TEST_SETTINGS.workers),
        base_interactions=kind_interactions(products, warm),
        images=embedding_table,
        upserted=lambda: logged,
    )
    return worker.run_once(force=True)
