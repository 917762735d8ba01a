"""Optional manifest signing: HMAC-SHA256 of ``manifest.json``'s bytes, kept in ``manifest.sig``.

The manifest holds the sha256 of every other file of its version, so a valid signature over it
vouches for the whole version. With a key configured, training signs and readers (serve,
``recsvc models use``, the retrain worker's warm start) refuse a version whose signature is
missing or does not verify; docs/deploy.md ("Model store integrity") says what that protects.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from recsvc.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from recsvc.config import Settings

SIGNATURE_NAME = "manifest.sig"
MAX_SIGNATURE_BYTES = 1024
MIN_KEY_BYTES = 16


def sign(key: bytes, manifest: bytes) -> str:
    """The signature of ``manifest``'s bytes: HMAC-SHA256 under ``key``, as hex."""
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def check_signature(key: bytes, manifest: bytes, signature: bytes, what: str) -> None:
    """Raise ArtifactError unless ``signature`` is the signature of ``manifest`` under ``key``
    (compared in constant time)."""
    expected = sign(key, manifest).encode()
    if not hmac.compare_digest(expected, signature.strip()):
        raise ArtifactError(f"{what}: manifest signature does not verify")


def signing_key_from(settings: Settings) -> bytes | None:
    """The signing key the settings give, directly or as a file (a Kubernetes Secret mount;
    a trailing newline is not part of the key), or None when signing is off."""
    secret = settings.model_store_signing_key
    path = settings.model_store_signing_key_file
    if secret is not None and path is not None:
        raise ConfigError("model_store_signing_key: set the key or its file, not both")
    if path is not None:
        try:
            key = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(
                f"model_store_signing_key_file: cannot read {path}: {exc.strerror}"
            ) from None
        name = "model_store_signing_key_file"
    elif secret is not None:
        key, name = secret.get_secret_value().encode(), "model_store_signing_key"
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{name}: a signing key needs at least {MIN_KEY_BYTES} bytes")
    return key
