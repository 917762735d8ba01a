"""ModelSync: keep a local model store a verified copy of a shared one's latest version.

On Kubernetes the store training publishes to (a bucket mounted through its CSI driver, an
NFS share) need not offer atomic renames or read-after-write consistency, and serving should
not read from it on the request path. Each serving pod therefore runs ``recsvc models sync``
beside the server: it copies the shared store's latest version into a private staging
directory of a local store (an emptyDir), verifies the copy as serving would (manifest,
signature with a key, every file's size and sha256), renames it into ``versions/`` and only
then switches the local LATEST. The server watches the local store as usual, so it sees either
the previous version or the complete new one; a version that does not verify is never
published and is tried again only once its files change.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from recsvc.artifacts.files import open_regular
from recsvc.artifacts.manifest import MANIFEST_NAME
from recsvc.artifacts.signing import SIGNATURE_NAME
from recsvc.artifacts.store import LATEST_NAME, ModelStore
from recsvc.durable import replace_bytes_atomically
from recsvc.errors import ArtifactError

log = logging.getLogger(__name__)

_COPY_CHUNK_BYTES = 1 << 20
# A version's files as (name, size, mtime): a version that failed verification is copied again
# only once this changes (a copy still being uploaded to a bucket does, a damaged one does not).
Fingerprint = tuple[tuple[str, int, int], ...]


class ModelSync:
    """Copies ``source``'s latest version into ``dest`` (see the module's docstring)."""

    def __init__(self, source: ModelStore, dest: ModelStore, keep: int) -> None:
        if source.root.resolve() == dest.root.resolve():
            raise ArtifactError(f"models sync: source and destination are both {source.root}")
        self.source = source
        self.dest = dest
        self.keep = max(1, keep)
        self._rejected: tuple[str, Fingerprint] | None = None

    def sync_once(self) -> str | None:
        """Publish the source's latest version locally if it is new; returns it, or None when
        there is nothing to do. Raises ArtifactError (nothing published) when the version does
        not verify; the next call tries it again only once its files changed."""
        version = self.source.latest_version()
        if version is None or version == self.dest.latest_version():
            return None
        if (self.dest.versions_dir / version).is_dir():
            self.dest.point_latest_to(version)  # verifies the local copy (a roll-back)
            log.info("models sync: %s was here already; LATEST points to it", version)
            return version
        fingerprint = self._fingerprint(version)
        if self._rejected == (version, fingerprint):
            return None
        try:
            self._copy_verified(version)
        except ArtifactError:
            self._rejected = (version, fingerprint)
            raise
        self._rejected = None
        replace_bytes_atomically(self.dest.root / LATEST_NAME, f"{version}\n".encode())
        log.info("models sync: published %s from %s", version, self.source.root)
        self.dest.collect_garbage(self.keep)
        return version

    def _copy_verified(self, version: str) -> None:
        """Copy ``version`` into the destination's staging area, verify it there, then rename
        it into ``versions/``. Whatever fails, the staging copy is removed."""
        manifest = self.source.read_manifest(version)  # names checked before they are paths
        names = [MANIFEST_NAME, *manifest.files]
        source_dir = self.source.versions_dir / version
        if (source_dir / SIGNATURE_NAME).exists():
            names.append(SIGNATURE_NAME)
        self._clear_staging()
        staging = self.dest.staging_dir / "sync"
        staged = staging / "versions" / version
        staged.mkdir(parents=True)
        try:
            for name in names:
                _copy_regular(source_dir, name, staged / name, f"model {version}")
            # The copy is what serving will read: verify it, not the (shared) original.
            ModelStore(staging, self.dest.signing_key).verify(version)
            self.dest.versions_dir.mkdir(parents=True, exist_ok=True)
            # No fsync: the destination is an emptyDir that does not outlive its pod; what
            # matters is that the version appears complete or not at all.
            os.rename(staged, self.dest.versions_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _clear_staging(self) -> None:
        """Remove what a killed sync left (this process is the destination's only writer)."""
        if self.dest.staging_dir.is_dir():
            shutil.rmtree(self.dest.staging_dir, ignore_errors=True)
        self.dest.staging_dir.mkdir(parents=True, exist_ok=True)

    def _fingerprint(self, version: str) -> Fingerprint:
        directory = self.source.versions_dir / version
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
            return tuple(
                (entry.name, stat.st_size, stat.st_mtime_ns)
                for entry in entries
                for stat in [entry.stat(follow_symlinks=False)]
            )
        except OSError:
            return ()


def _copy_regular(directory: Path, name: str, target: Path, what: str) -> None:
    """Copy ``directory/name`` (a regular file, never a link or FIFO) to ``target``."""
    with open_regular(directory, name, what) as source, target.open("xb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK_BYTES)
