"""The embed worker: each round re-reads the catalogue and embeds the images that are new or
changed since the last round (the next training picks them up)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recsvc.catalogue.embedding import embed_catalogue, embed_options
from recsvc.catalogue.reader import Catalogue
from recsvc.config import Settings


def build_embed_round(
    settings: Settings, read_catalogue: Callable[[], Catalogue], out: Path
) -> Callable[[], dict[str, object]]:
    """The embed worker's round, wired from the settings (the CNN loads once, here)."""
    from recsvc.vision.embedder import ImageEmbedder  # torch: only in this worker

    embedder = ImageEmbedder.from_settings(settings.images)
    options = embed_options(settings.images, progress=False)

    def run() -> dict[str, object]:
        report = embed_catalogue(read_catalogue(), embedder, out, options)
        return {k: v for k, v in report.as_dict().items() if k != "failures"}

    return run
