"""manifest.json: what a model version holds, and the checksum of every file in it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class IndexEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    m: int
    ef_construction: int
    recall_at_10: float = Field(ge=0.0, le=1.0)
    ef_search: int = Field(
        0,
        ge=0,
        description="The ef recall_at_10 was measured at and the model is served at "
        "(0: a model from before ef tuning, served at the default).",
    )


class ImagesEntry(BaseModel):
    """The image part of a model: which backbone made the embeddings, and what was learned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str
    backbone_dim: int = Field(ge=1, description="Dimension of the backbone's embeddings.")
    dim: int = Field(ge=1, description="Dimension of the visual space the index searches.")
    adapter: bool = Field(description="Whether a learned map into the visual space is included.")
    adapter_raw_weight: float = Field(0.0, ge=0.0, le=1.0)
    adapter_classes: int = Field(
        0, ge=0, description="Categories of the adapter's class-probability part (0: none)."
    )
    adapter_class_weight: float = Field(0.0, ge=0.0, description="That part's weight.")
    adapter_class_temperature: float = Field(1.0, gt=0.0, description="Its softmax temperature.")
    items_with_images: int = Field(ge=0)
    cold_items: int = Field(ge=0, description="Items that entered by their image alone.")
    projection: bool = Field(description="Whether a cold-start projection is included.")
    projection_r2: float | None = None


class Manifest(BaseModel):
    """The manifest of one model version. Unknown keys are rejected: a newer schema must bump
    ``schema_version`` so that older servers refuse it instead of misreading it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    model_version: str
    created_at_ms: int
    algorithm: str
    engine: str = Field("implicit", description="Training engine: implicit or spark.")
    trained_on: str
    parameters: dict[str, Any]
    regularization: float
    alpha: float
    num_users: int = Field(ge=0)
    num_items: int = Field(ge=1)
    num_interactions: int = Field(ge=0)
    factors: int = Field(ge=1)
    index: IndexEntry
    similar_index: IndexEntry | None = Field(
        None, description="The item->item (cosine) index; None in models that did not record it."
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Training data statistics.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Offline evaluation.")
    images: ImagesEntry | None = None
    files: dict[str, FileEntry]


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_of(path), bytes=path.stat().st_size)
