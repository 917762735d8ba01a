"""Model artefacts: the only thing that passes from training to serving.

A model store is a directory::

    <store>/versions/<version>/   one directory per published model version
        manifest.json             schema, version, parameters, shapes, sha256 of every file
        manifest.sig              HMAC-SHA256 of manifest.json, when a signing key is set
        users.parquet, items.parquet, *.npy, *.hnsw
    <store>/LATEST                the version serving should load; switched last, atomically
    <store>/.staging/             versions being written (never read by serving)
"""

from recsvc.artifacts.manifest import SCHEMA_VERSION, Manifest
from recsvc.artifacts.store import ModelStore

__all__ = ["SCHEMA_VERSION", "Manifest", "ModelStore"]
