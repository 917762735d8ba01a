"""ModelStore: publish model versions atomically; find, verify and load them.

Publishing writes a version into ``.staging``, fsyncs every file and the directory, renames it
into ``versions/`` and only then switches ``LATEST`` (write a temporary file, fsync, rename).
A crash at any point leaves either the old or the new version visible, never a partial one.
Loading verifies the manifest (and its signature, with a key), that every file it names is a
regular file directly inside the version, and the sha256 of every file before any file is
parsed; parsing then checks every array and index file against the manifest (layout.py,
hnsw_header.py): hnswlib checks neither the integrity nor the dimension of what it reads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from recsvc.artifacts.files import check_directory, is_plain_name, open_regular
from recsvc.artifacts.layout import (
    ITEM_FACTORS,
    ITEMS,
    USER_FACTORS,
    USERS,
    load_array,
    manifest_for,
    read_model,
    required_files,
    write_model_files,
)
from recsvc.artifacts.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SCHEMA_VERSION,
    Manifest,
    file_entry,
)
from recsvc.artifacts.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    check_signature,
    sign,
    signing_key_from,
)
from recsvc.core.model import Model
from recsvc.durable import fsync_path, replace_bytes_atomically, write_durably
from recsvc.errors import ArtifactError
from recsvc.index import IndexBuildParams, IndexSearchParams

if TYPE_CHECKING:
    from recsvc.config import Settings

log = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_LATEST_BYTES = 256


class ModelStore:
    """A directory of model versions (see :mod:`recsvc.artifacts`)."""

    def __init__(self, root: Path, signing_key: bytes | None = None) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"
        # With a key, publish signs each manifest and reading refuses one whose signature
        # does not verify (recsvc.artifacts.signing).
        self.signing_key = signing_key

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        """The store the settings name, with their signing key (read from its file if set)."""
        return cls(settings.model_store, signing_key_from(settings))

    # ----------------------------------------------------------------- reading

    def latest_version(self) -> str | None:
        """The version LATEST points to, or None when nothing was published yet."""
        # Read on the event loop by the watcher: a FIFO or a link must not block or redirect it.
        if not (self.root / LATEST_NAME).exists() and not (self.root / LATEST_NAME).is_symlink():
            return None
        with open_regular(self.root, LATEST_NAME, str(self.root)) as handle:
            raw = handle.read(_MAX_LATEST_BYTES)
        version = raw.decode("utf-8", errors="replace").strip()
        if not version:
            raise ArtifactError(f"{self.root / LATEST_NAME} is empty")
        return version

    def list_versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir())

    def read_manifest(self, version: str) -> Manifest:
        """A version's manifest, parsed, its signature checked when the store has a key, and
        checked against this server's schema (files are not checked: see :meth:`verify`)."""
        if not _VERSION_NAME.fullmatch(version):
            raise ArtifactError(f"{version!r} is not a model version name")
        what = f"model {version}"
        directory = self.versions_dir / version
        check_directory(directory, what)
        with open_regular(directory, MANIFEST_NAME, what) as handle:
            if os.fstat(handle.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise ArtifactError(f"{what}: {MANIFEST_NAME} is implausibly large")
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        if self.signing_key is not None:
            check_signature(self.signing_key, raw, _read_signature(directory, what), what)
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValueError as exc:
            raise ArtifactError(f"{what}: invalid {MANIFEST_NAME}: {exc}") from exc
        if manifest.schema_version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{what}: schema version {manifest.schema_version}, this server reads "
                f"{SCHEMA_VERSION}"
            )
        if manifest.model_version != version:
            raise ArtifactError(f"{what}: manifest names version {manifest.model_version}")
        # Before any name is used as a path: only plain names inside the version directory.
        strays = sorted(repr(name) for name in manifest.files if not is_plain_name(name))
        if strays:
            raise ArtifactError(f"{what}: manifest names files outside the version: {strays}")
        missing = required_files(manifest) - manifest.files.keys()
        if missing:
            raise ArtifactError(f"{what}: manifest lacks {sorted(missing)}")
        return manifest

    def verify(self, version: str) -> Manifest:
        """Check a version's manifest (and signature) and every file's type, size and sha256;
        return the manifest."""
        manifest = self.read_manifest(version)
        directory = self.versions_dir / version
        what = f"model {version}"
        for name, entry in manifest.files.items():
            with open_regular(directory, name, what) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != entry.bytes:
                    raise ArtifactError(
                        f"{what}: file {name} has {size} bytes, manifest says {entry.bytes} "
                        "(truncated or replaced)"
                    )
                if hashlib.file_digest(handle, "sha256").hexdigest() != entry.sha256:
                    raise ArtifactError(f"{what}: file {name} fails its sha256 check")
        return manifest

    def load(self, version: str, params: IndexSearchParams) -> Model:
        """Verify, then load a version into a :class:`Model`. Raises ArtifactError, whatever
        went wrong: a version that does not load is refused, it never stops the caller."""
        manifest = self.verify(version)
        directory = self.versions_dir / version
        try:
            return read_model(directory, manifest, params)
        except ArtifactError:
            raise
        except Exception as exc:  # any reader's error: numpy, pyarrow, hnswlib, ours
            raise ArtifactError(f"model {version}: unreadable: {_reason(exc)}") from exc

    def load_factors(self, version: str) -> tuple[list[str], list[str], Any, Any]:
        """A verified version's user ids, item ids, user factors and item factors only (what a
        warm-started retraining needs; no index is read)."""
        manifest = self.verify(version)
        directory = self.versions_dir / version
        try:
            users = pq.read_table(directory / USERS).column("user_id").to_pylist()
            items = pq.read_table(directory / ITEMS).column("item_id").to_pylist()
            shape_u = (manifest.num_users, manifest.factors)
            shape_i = (manifest.num_items, manifest.factors)
            user_factors = load_array(directory / USER_FACTORS, np.float32, shape_u)
            item_factors = load_array(directory / ITEM_FACTORS, np.float32, shape_i)
        except Exception as exc:
            raise ArtifactError(f"model {version}: unreadable: {_reason(exc)}") from exc
        return users, items, user_factors, item_factors

    def load_latest(self, params: IndexSearchParams) -> Model:
        version = self.latest_version()
        if version is None:
            raise ArtifactError(f"no model published in {self.root}; run `recsvc train` first")
        return self.load(version, params)

    # ----------------------------------------------------------------- writing

    def new_version(self) -> str:
        """A fresh version id, later than every published one (UTC time, microseconds)."""
        version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S-%f")
        published = self.list_versions()
        while published and version <= published[-1]:
            time.sleep(0.001)
            version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S-%f")
        return version

    def publish(self, model: Model, index_params: IndexBuildParams) -> Path:
        """Write ``model`` as a new version and point LATEST at it. Returns its directory."""
        version = model.version
        final = self.versions_dir / version
        if final.exists():
            raise ArtifactError(f"model {version} already exists in {self.root}")
        with self._staging(version) as staging:
            files = write_model_files(staging, model)
            manifest = manifest_for(
                model, index_params, {n: file_entry(staging / n) for n in files}
            )
            raw = manifest.model_dump_json(indent=2).encode()
            write_durably(staging / MANIFEST_NAME, raw)
            if self.signing_key is not None:
                write_durably(staging / SIGNATURE_NAME, sign(self.signing_key, raw).encode())
            fsync_path(staging)
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
            fsync_path(self.versions_dir)
        self.point_latest_to(version)
        log.info("published model %s to %s", version, final)
        return final

    def point_latest_to(self, version: str) -> None:
        """Atomically switch LATEST to ``version`` (which must verify)."""
        self.verify(version)
        replace_bytes_atomically(self.root / LATEST_NAME, f"{version}\n".encode())

    def delete(self, version: str) -> None:
        """Remove a published version; the one LATEST points to cannot be removed. Its manifest
        is not read: damaged, unsigned or crafted versions must be removable too."""
        if not _VERSION_NAME.fullmatch(version):
            raise ArtifactError(f"{version!r} is not a model version name")
        if version == self.latest_version():
            raise ArtifactError(f"model {version} is the latest version; it cannot be removed")
        directory = self.versions_dir / version
        if not directory.is_symlink() and not directory.is_dir():
            raise ArtifactError(f"model {version} does not exist in {self.root}")
        # Rename first so that a reader never sees a half-deleted version.
        doomed = self.staging_dir / f"deleting-{version}"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        os.rename(directory, doomed)
        if doomed.is_symlink():
            doomed.unlink()  # the link only: what it points to is not the store's
        else:
            shutil.rmtree(doomed)

    def collect_garbage(self, keep: int) -> list[str]:
        """Keep the ``keep`` newest versions and LATEST; remove the rest and abandoned staging
        directories (of processes no longer running). Returns the versions removed."""
        latest = self.latest_version()
        versions = self.list_versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != latest]
        for version in doomed:
            self.delete(version)
        if self.staging_dir.is_dir():
            for leftover in self.staging_dir.iterdir():
                owner = leftover.suffix.lstrip(".")
                if not (owner.isdigit() and _process_alive(int(owner))):
                    shutil.rmtree(leftover, ignore_errors=True)
        return doomed

    @contextmanager
    def _staging(self, version: str) -> Iterator[Path]:
        """A private directory to write into; removed on any failure or interruption."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = self.staging_dir / f"{version}.{os.getpid()}"
        staging.mkdir()
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _read_signature(directory: Path, what: str) -> bytes:
    try:
        with open_regular(directory, SIGNATURE_NAME, what) as handle:
            return handle.read(MAX_SIGNATURE_BYTES)
    except ArtifactError as exc:
        raise ArtifactError(f"{what}: unsigned or unreadable signature ({exc})") from None


def _reason(exc: BaseException) -> str:
    """An error's text for a log line: its type when its message is empty (an IndexError
    from numpy can say nothing else)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
