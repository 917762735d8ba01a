"""Image decoding, backbones and the embedder, on real torch and real pretrained weights."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from recsvc.errors import ConfigError
from recsvc.testing import jpeg_bytes, product_picture
from recsvc.vision import DEFAULT_BACKBONE, ImageError, decode_image
from recsvc.vision.backbones import available_backbones, load_backbone
from recsvc.vision.embedder import ImageEmbedder, letterbox


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_decodes_every_colour_mode_to_rgb() -> None:
    base = Image.new("RGB", (40, 30), (10, 200, 30))
    cases = {
        "jpeg": encoded(base, "JPEG"),
        "greyscale": encoded(base.convert("L"), "PNG"),
        "cmyk": encoded(base.convert("CMYK"), "JPEG"),
        "palette": encoded(base.convert("P"), "PNG"),
        "sixteen_bit": encoded(Image.new("I;16", (40, 30), 40000), "PNG"),
        "webp": encoded(base, "WEBP"),
    }
    for name, data in cases.items():
        image = decode_image(data)
        assert image.mode == "RGB", name
        assert image.size == (40, 30), name
    # 16-bit grey is scaled to 8 bits, not clipped to white.
    assert decode_image(cases["sixteen_bit"]).getpixel((0, 0))[0] == 40000 // 256


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 10, 20))
    decoded = decode_image(encoded(image, "PNG"))
    assert decoded.getpixel((15, 10)) == (255, 255, 255)
    assert decoded.getpixel((5, 10)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not a JPEG"),
        (jpeg_bytes(Image.new("RGB", (300, 300), (1, 2, 3)))[:400], "truncated or corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a JPEG|truncated"),
    ],
)
def test_bad_bytes_raise_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # 20000 x 20000 pixels that compress to a few kilobytes.
    bomb = encoded(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(bomb, max_pixels=50_000_000)


def test_unknown_backbone_and_missing_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        load_backbone("nope")
    with pytest.raises(ConfigError, match="never downloads"):
        load_backbone("resnet18")
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone("resnet18", tmp_path / "missing.pt")
    assert DEFAULT_BACKBONE in available_backbones()


def test_torchvision_backbone_from_a_local_weights_file(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    backbone = load_backbone("resnet18", weights)
    assert backbone.dim == 512
    wrong = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ConfigError, match="does not fit"):
        load_backbone("resnet18", wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_backbone("resnet18", garbage)


@pytest.mark.slow
def test_embeddings_are_unit_vectors_and_group_similar_products(embedder: ImageEmbedder) -> None:
    rng = random.Random(1)
    kinds = ["shirts", "shoes"] * 4
    vectors = embedder.embed_images([product_picture(k, rng) for k in kinds], batch_size=3)
    assert vectors.shape == (8, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    same = np.equal.outer(np.array(kinds), np.array(kinds)) & ~np.eye(8, dtype=bool)
    different = ~np.equal.outer(np.array(kinds), np.array(kinds))
    assert similarity[same].mean() > similarity[different].mean() + 0.05
    again = embedder.embed_images([product_picture("shirts", random.Random(1))])
    assert np.allclose(again[0], vectors[0], atol=1e-5)


def test_letterbox_keeps_the_whole_product() -> None:
    tall = Image.new("RGB", (50, 200), (0, 0, 0))
    square = letterbox(tall, 224)
    assert square.size == (224, 224)
    assert square.getpixel((5, 112)) == (255, 255, 255)  # padding
    assert square.getpixel((112, 5)) == (0, 0, 0)  # the top of the product is still there
