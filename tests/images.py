"""Synthetic product photos for tests: three kinds of product that look different.

Each kind has its own shape and colour family, drawn at a random position, size and shade on a
white background, so a CNN puts items of one kind near each other without any of our code
having to be right about it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("shirts", "shoes", "bags")


@dataclass(frozen=True)
class ProductImages:
    directory: Path
    catalogue: Path
    ids: list[str]
    kinds: dict[str, str]

    def path(self, item_id: str) -> Path:
        return self.directory / f"{item_id}.jpg"


def product_picture(kind: str, rng: random.Random, size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    shade = rng.randint(0, 60)
    x, y = rng.randint(4, 24), rng.randint(4, 24)
    w, h = rng.randint(70, 96), rng.randint(70, 96)
    if kind == "shirts":  # red T-shapes
        colour = (200 + shade // 2, shade, shade)
        draw.rectangle([x + w // 4, y, x + 3 * w // 4, y + h], fill=colour)
        draw.rectangle([x, y, x + w, y + h // 4], fill=colour)
    elif kind == "shoes":  # blue wide ellipses
        colour = (shade, shade, 190 + shade)
        draw.ellipse([x, y + h // 3, x + w, y + h], fill=colour)
    else:  # green bags with a handle
        colour = (shade, 150 + shade, shade)
        draw.rectangle([x, y + h // 3, x + w, y + h], fill=colour)
        draw.arc([x + w // 4, y, x + 3 * w // 4, y + 2 * h // 3], 180, 360, fill=colour, width=6)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_product_images(directory: Path, per_kind: int = 20, seed: int = 7) -> ProductImages:
    """``per_kind`` JPEG photos of each kind and a catalogue CSV (item_id,image,category,colour)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    kinds: dict[str, str] = {}
    lines = ["item_id,image,category,colour"]
    for number in range(per_kind * len(KINDS)):
        kind = KINDS[number % len(KINDS)]
        item_id = f"p{number:03d}"
        (directory / f"{item_id}.jpg").write_bytes(jpeg_bytes(product_picture(kind, rng)))
        ids.append(item_id)
        kinds[item_id] = kind
        lines.append(f"{item_id},{item_id}.jpg,{kind},plain")
    catalogue = directory / "catalogue.csv"
    catalogue.write_text("\n".join(lines) + "\n")
    return ProductImages(directory, catalogue, ids, kinds)


def kind_interactions(
    products: ProductImages, warm: list[str], users: int = 150, per_user: int = 8, seed: int = 7
) -> Path:
    """Interactions where each user sticks to one kind of product (only ``warm`` items)."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,weight"]
    for user in range(users):
        kind = KINDS[user % len(KINDS)]
        choices = [i for i in warm if products.kinds[i] == kind]
        for item_id in rng.choice(choices, size=min(per_user, len(choices)), replace=False):
            lines.append(f"u{user:03d},{item_id},1")
    path = products.directory / "interactions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
