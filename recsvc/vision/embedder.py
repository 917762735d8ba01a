"""ImageEmbedder: pictures -> pooled, L2-normalised CNN embeddings, in batches.

Preprocessing keeps the whole product in view: the longer side is resized to the backbone's
input size and the picture is padded to a square with white (a centre crop would cut off the
ends of long items such as scarves or shoes photographed sideways). Features are pooled with
generalised mean pooling (p = 3), which stresses the strongest local responses (measured on the
fashion photos: articleType agreement of the 10 nearest neighbours 0.779 against 0.773 for
average pooling). Inference uses channels-last memory; on a GPU also float16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from recsvc.vision.backbones import Backbone, load_backbone

GEM_POWER = 3.0


class EmbedderSettings(Protocol):
    """What :meth:`ImageEmbedder.from_settings` reads (recsvc.config.ImageSettings)."""

    @property
    def backbone(self) -> str: ...
    @property
    def weights(self) -> Path | None: ...
    @property
    def device(self) -> str: ...


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no GPU is available")
    return torch.device(device)


class Preprocess:
    """Picture -> normalised float tensor (3, size, size); picklable for data-loader workers."""

    def __init__(self, backbone: Backbone) -> None:
        self.size = backbone.input_size
        self.normalise = v2.Compose(
            [
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(backbone.mean), std=list(backbone.std)),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor: torch.Tensor = self.normalise(letterbox(image, self.size))
        return tensor


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is ``size`` and pad to a white square, centred."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / max(width, height)
    resized = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
    )
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


class ImageEmbedder:
    """Batched embedding with one backbone on one device.

    Parameters
    ----------
    backbone : the feature extractor (see :func:`recsvc.vision.backbones.load_backbone`)
    device : "auto", "cpu" or "cuda"
    """

    def __init__(self, backbone: Backbone, device: str = "auto") -> None:
        self.backbone = backbone
        self.device = resolve_device(device)
        self.preprocess = Preprocess(backbone)
        # Channels-last pays on both: 2x images/s for EfficientNet-Lite0 on this CPU (21 -> 43).
        self.trunk = backbone.trunk.to(self.device).eval().to(memory_format=torch.channels_last)

    @classmethod
    def from_settings(cls, images: EmbedderSettings) -> ImageEmbedder:
        """The configured backbone (weights from local disk only) on the configured device."""
        return cls(load_backbone(images.backbone, images.weights), images.device)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def weights_sha256(self) -> str:
        return self.backbone.weights_sha256

    def embed_tensors(self, batch: torch.Tensor, pad_to: int = 0) -> npt.NDArray[np.float32]:
        """(B, 3, H, W) preprocessed tensors -> (B, dim) float32 unit vectors.

        ``pad_to``: run a shorter batch padded with blank images to this many, so that an
        image's vector does not depend on how many others came with it. Kernels are chosen
        by batch shape: on this CPU a batch of one gave vectors 7e-8 away from the same image
        in a batch of 2 to 32 (those agreed bit for bit, whatever the neighbours); a GPU's
        convolution algorithms also vary with the batch size. The catalogue embed job pads to
        its batch size, so every shard of a sharded run embeds an image exactly as one run.
        """
        if len(batch) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        count = len(batch)
        if pad_to > count:
            blank = batch.new_zeros((pad_to - count, *batch.shape[1:]))
            batch = torch.cat([batch, blank])
        on_gpu = self.device.type == "cuda"
        batch = batch.to(self.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last
        )
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.float16, enabled=on_gpu),
        ):
            features = self.trunk(batch).float()
            pooled = features.clamp(min=1e-6).pow(GEM_POWER).mean(dim=(2, 3)).pow(1 / GEM_POWER)
            vectors = F.normalize(pooled, dim=1)
        result: npt.NDArray[np.float32] = vectors[:count].cpu().numpy().astype(np.float32)
        return result

    def embed_images(
        self, images: Sequence[Image.Image], batch_size: int = 32
    ) -> npt.NDArray[np.float32]:
        """RGB pictures -> (len(images), dim) float32 unit vectors."""
        parts = [
            self.embed_tensors(
                torch.stack([self.preprocess(i) for i in images[s : s + batch_size]])
            )
            for s in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)
