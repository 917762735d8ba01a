"""Transport security: server TLS credentials and bearer-token authentication with scopes.

Tokens come from a file (a Kubernetes Secret mounted as one): one ``SCOPES TOKEN`` per line,
SCOPES being ``read``, ``write`` or both as ``read,write``; blank lines and ``#`` comments are
skipped. Scopes are independent (``write`` does not imply ``read``): an event producer or a
catalogue sync needs only ``write``, a front end only ``read``, and least privilege is the
default; a token that needs both lists both.
The file is checked for changes every few seconds (``TokenFile``): a token is added or revoked
by editing it (or the Secret), without a restart.

Authentication is a grpc.aio server interceptor, installed only when a token file is set, so
that a server without one pays nothing per call. It runs before the handler lookup: a call
without a valid token never reaches the servicer, whatever its method. The health service stays
open (probes carry no token).

Tokens are kept only as SHA-256 digests, and a presented token's digest is compared with
``hmac.compare_digest`` against every configured one, without stopping at a match: the time a
check takes depends on neither which token matched nor how long it is.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc.api.status import status_for
from recsvc.errors import ConfigError, PermissionDenied, RecsvcError, Unauthenticated

log = logging.getLogger(__name__)


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


_RECOMMENDER = pb.DESCRIPTOR.services_by_name["Recommender"].full_name

# The scope each method needs. A method missing here is refused to every token (deny by
# default): a new RPC must be given its scope (a test checks the Recommender's methods are all
# listed).
METHOD_SCOPES: dict[str, Scope] = {
    **{
        f"/{_RECOMMENDER}/{name}": Scope.READ
        for name in (
            "Recommend",
            "RecommendBatch",
            "RecommendFromExamples",
            "SimilarItems",
            "SearchByImage",
            "GetModelInfo",
        )
    },
    **{
        f"/{_RECOMMENDER}/{name}": Scope.WRITE
        for name in ("RecordInteractions", "UpsertItems", "DeleteItems", "ForgetUser")
    },
    # Reflection, when turned on alongside tokens, describes the API to readers only.
    f"/{reflection.SERVICE_NAME}/ServerReflectionInfo": Scope.READ,
}
# Open to every caller: the kubelet's and load balancers' probes carry no token.
OPEN_METHODS = frozenset(f"/{health.SERVICE_NAME}/{name}" for name in ("Check", "Watch"))

# Short, printable and free of spaces, as HTTP/2 metadata must be; long enough that guessing
# is hopeless (16 random characters from a base64 alphabet: 96 bits).
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096

# Answers carry no detail: a wrong token and a missing one read the same.
UNAUTHENTICATED_MESSAGE = "authentication required: a valid bearer token"
# At most one log line per this many seconds about refused calls (a hostile client must not
# flood the log); the line says how many were refused since the last one.
_REFUSAL_LOG_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class TokenTable:
    """The configured tokens, as SHA-256 digests with the scopes of each."""

    entries: tuple[tuple[bytes, frozenset[Scope]], ...]

    def scopes_of(self, token: str) -> frozenset[Scope]:
        """The scopes ``token`` carries (empty: not a configured token), in constant time."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        granted: set[Scope] = set()
        for digest, scopes in self.entries:
            # No early exit: every entry is compared, whichever matches.
            if hmac.compare_digest(presented, digest):
                granted |= scopes
        return frozenset(granted)

    def count(self, scope: Scope) -> int:
        return sum(1 for _, scopes in self.entries if scope in scopes)


def load_tokens(path: Path) -> TokenTable:
    """Read a token file (see the module's docstring); errors name the line, never the token."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"security.token_file: cannot read {path}: {exc}") from exc
    scopes_by_digest: dict[bytes, set[Scope]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"security.token_file: {path} line {number}"
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{where}: expected 'SCOPES TOKEN'")
        scope_names, token = parts
        scopes = _parse_scopes(scope_names, where)
        if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH or not token.isascii():
            raise ConfigError(
                f"{where}: a token must be {MIN_TOKEN_LENGTH}-{MAX_TOKEN_LENGTH} ASCII "
                "characters (e.g. `openssl rand -base64 32`)"
            )
        digest = hashlib.sha256(token.encode()).digest()
        scopes_by_digest.setdefault(digest, set()).update(scopes)
    if not scopes_by_digest:
        raise ConfigError(f"security.token_file: {path} holds no token")
    return TokenTable(tuple((d, frozenset(s)) for d, s in scopes_by_digest.items()))


class TokenFile:
    """The tokens of a token file, re-read when the file changes: a Kubernetes Secret mounted
    as a volume is updated in place (within about a minute), so a token is added or revoked
    without a restart. A file that no longer parses keeps the tokens loaded before (and says
    so in the log) rather than locking every client out."""

    def __init__(self, path: Path, reload_seconds: float) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self._stamp = _file_stamp(path)
        self.table = load_tokens(path)
        self._next_check = time.monotonic() + reload_seconds

    def current(self) -> TokenTable:
        """The tokens now; looks at the file at most once per ``reload_seconds`` (one stat of
        a tmpfs file, on the calling thread)."""
        if self.reload_seconds and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.reload_seconds
            self._reload_if_changed()
        return self.table

    def _reload_if_changed(self) -> None:
        try:
            stamp = _file_stamp(self.path)
        except ConfigError as exc:
            log.error("%s; keeping the tokens loaded before", exc)
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.table = load_tokens(self.path)
        except ConfigError as exc:
            log.error("%s; keeping the tokens loaded before", exc)
            return
        log.info(
            "security.token_file: reloaded %d read and %d write token(s) from %s",
            self.table.count(Scope.READ),
            self.table.count(Scope.WRITE),
            self.path,
        )


def _file_stamp(path: Path) -> tuple[int, int, int]:
    # A Secret update swaps a symlink: the inode changes even when mtime and size do not.
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"security.token_file: cannot read {path}: {exc.strerror}") from exc
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _parse_scopes(names: str, where: str) -> set[Scope]:
    scopes = set()
    for name in names.split(","):
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ConfigError(f"{where}: unknown scope {name!r} (known: {known})") from None
    return scopes


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` metadata entry, if there is one."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Lets a call through only with a token that carries its method's scope; health is open.

    Missing or unknown token: UNAUTHENTICATED; a valid token without the method's scope:
    PERMISSION_DENIED (both mapped through recsvc.api.status).
    """

    def __init__(
        self, tokens: TokenFile | TokenTable, method_scopes: Mapping[str, Scope] | None = None
    ) -> None:
        self.tokens = tokens
        self.method_scopes = METHOD_SCOPES if method_scopes is None else method_scopes
        self.refused = 0
        self._refused_logged = 0
        self._last_log = 0.0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        method = handler_call_details.method
        if method in OPEN_METHODS:
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)  # type: ignore[arg-type]
        table = self.tokens.current() if isinstance(self.tokens, TokenFile) else self.tokens
        scopes = table.scopes_of(token) if token is not None else frozenset()
        error: RecsvcError | None = None
        if not scopes:
            error = Unauthenticated(UNAUTHENTICATED_MESSAGE)
        else:
            needed = self.method_scopes.get(method)
            if needed is None or needed not in scopes:
                what = f"the {needed.value} scope" if needed else "a scope this server grants"
                error = PermissionDenied(f"permission denied: this call needs {what}")
        if error is None:
            return await continuation(handler_call_details)
        self._note_refusal(error)
        return _refusing_handler(await continuation(handler_call_details), error)

    def _note_refusal(self, error: RecsvcError) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log >= _REFUSAL_LOG_INTERVAL_SECONDS:
            log.warning(
                "refused %d call(s) without the needed credentials (latest: %s)",
                self.refused - self._refused_logged,
                type(error).__name__,
            )
            self._refused_logged, self._last_log = self.refused, now


def _refusing_handler(handler: Handler | None, error: RecsvcError) -> Handler:
    """A handler of the same shape as ``handler`` (unary or streaming) that answers ``error``'s
    status; the request is never deserialised."""
    code, message = status_for(error), str(error)

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises; this makes it an async generator

    request_streaming = bool(handler and handler.request_streaming)
    if handler is not None and handler.response_streaming:
        if request_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


# -- TLS --------------------------------------------------------------------------------------


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None, reload_seconds: float = 0.0
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca_file``, clients must present a
    certificate that CA signed (mutual TLS). With ``reload_seconds``, changed files are read
    again for the connections that follow (see :class:`CertificateFiles`)."""
    files = CertificateFiles(cert_file, key_file, client_ca_file, reload_seconds)
    if not reload_seconds:
        cert, key, client_ca = files.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,
        require_client_authentication=client_ca_file is not None,
    )


class CertificateFiles:
    """The server's certificate, key and client CA, re-read when they change: cert-manager
    renews a Secret in place, and without this a renewed certificate would wait for a restart
    (and an expired one would refuse every client). gRPC calls :meth:`fetch` on its own thread
    before each handshake; the files are looked at at most once per ``reload_seconds``. Files
    that no longer read as PEM keep the certificate loaded before (logged as an ERROR)."""

    def __init__(
        self, cert_file: Path, key_file: Path, client_ca_file: Path | None, reload_seconds: float
    ) -> None:
        self.paths = [cert_file, key_file] + ([client_ca_file] if client_ca_file else [])
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._stamps = self._stamp()
        self._next_check = time.monotonic() + reload_seconds

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        cert = _read_pem(self.cert_file, "security.tls_cert_file", "CERTIFICATE")
        key = _read_pem(self.key_file, "security.tls_key_file", "PRIVATE KEY")
        client_ca = (
            _read_pem(self.client_ca_file, "security.tls_client_ca_file", "CERTIFICATE")
            if self.client_ca_file
            else None
        )
        return cert, key, client_ca

    def configuration(self) -> Any:  # grpc.ServerCertificateConfiguration (untyped)
        cert, key, client_ca = self.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def fetch(self) -> Any:
        """A new configuration if the files changed since the last look, else None."""
        with self._lock:
            if time.monotonic() < self._next_check:
                return None
            self._next_check = time.monotonic() + self.reload_seconds
            try:
                stamps = self._stamp()
                if stamps == self._stamps:
                    return None
                self._stamps = stamps
                configuration = self.configuration()
            except Exception as exc:  # never into gRPC's handshake thread
                log.error("%s; keeping the TLS certificate loaded before", exc)
                return None
            log.info("TLS certificate re-read from %s", self.cert_file)
            return configuration

    def _stamp(self) -> list[tuple[int, int, int]]:
        stamps = []
        for path in self.paths:
            try:
                stat = path.stat()
            except OSError as exc:
                raise ConfigError(f"security: cannot read {path}: {exc.strerror}") from exc
            stamps.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return stamps


def _read_pem(path: Path, setting: str, label: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
    # gRPC reports a bad PEM only at the first handshake, as a failed connection: check here.
    if b"-----BEGIN " not in data or label.encode() not in data:
        raise ConfigError(f"{setting}: {path} is not a PEM file with a {label}")
    return data
