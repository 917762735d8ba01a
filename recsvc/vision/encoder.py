"""ImageEncoder: uploaded image bytes -> raw embeddings, for the server.

Backbones load on first use (a server whose model has no images never imports torch)
and stay loaded per name. Decoding and the forward pass are CPU-heavy, so the service runs
:meth:`ImageEncoder.embed` in its image threads, several at once: an eval-mode forward pass
under inference mode changes no state, and with torch at ``threads`` (1) intra-op threads
each image thread keeps one core busy, so one long upload does not hold up a small search.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from recsvc.vision.decode import ImageError, decode_image

if TYPE_CHECKING:
    from recsvc.vision.embedder import ImageEmbedder


class BadImage(ImageError):
    """One image of a batch cannot be used; ``position`` says which."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position = position


class ImageEncoder:
    def __init__(
        self,
        max_pixels: int,
        device: str = "cpu",
        weights: dict[str, Path] | None = None,
        threads: int = 0,
        batch_size: int = 32,
    ) -> None:
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.device = device
        self.weights = weights or {}
        self.threads = threads
        self._embedders: dict[str, ImageEmbedder] = {}
        self._lock = threading.Lock()

    def embedder(self, backbone: str) -> ImageEmbedder:
        # torch is imported here, not at module load: servers without images never pay for it.
        import torch

        from recsvc.vision.backbones import load_backbone
        from recsvc.vision.embedder import ImageEmbedder

        with self._lock:
            if backbone not in self._embedders:
                if self.threads:
                    torch.set_num_threads(self.threads)
                self._embedders[backbone] = ImageEmbedder(
                    load_backbone(backbone, self.weights.get(backbone)), self.device
                )
            return self._embedders[backbone]

    def embed(self, images: list[bytes], backbone: str) -> npt.NDArray[np.float32]:
        """Decode and embed (n, backbone dim); raises BadImage naming the first image that
        cannot be used, before any forward pass."""
        embedder = self.embedder(backbone)
        pictures = []
        for position, data in enumerate(images):
            try:
                pictures.append(decode_image(data, self.max_pixels, draft=embedder.preprocess.size))
            except ImageError as exc:
                raise BadImage(position, str(exc)) from exc
        return embedder.embed_images(pictures, self.batch_size)
