"""TLS and bearer tokens on a real `recsvc serve` process, with certificates made at test time.

A private CA (openssl) signs the server's certificate (for 127.0.0.1 and localhost) and a
client certificate; one server runs TLS with tokens, reflection turned off and a plaintext
health-only port; another runs mutual TLS without tokens.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api.auth import METHOD_SCOPES, Scope, load_tokens
from recsvc.client import RawInteraction, RecsvcClient
from recsvc.config import load_settings
from recsvc.core.model import Model
from recsvc.core.state import EventType
from recsvc.errors import ConfigError
from recsvc.testing import ServerProcess, free_port, recsvc_command, running_server, server_env
from tests.helpers import ROOT

READ_TOKEN = "read-token-0123456789abcdef"
WRITE_TOKEN = "write-token-0123456789abcdef"
BOTH_TOKEN = "both-token-0123456789abcdef"
TOKEN_FILE = f"""# scopes token
read {READ_TOKEN}
write {WRITE_TOKEN}
read,write {BOTH_TOKEN}
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _signed_pair(directory: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> Path:
    key, csr, ext = (directory / f"{name}.{s}" for s in ("key", "csr", "ext"))
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    ext.write_text(extensions + "\n")
    cert = directory / f"{name}.pem"
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return cert


def make_pki(directory: Path) -> Pki:
    """A private CA, a server certificate for 127.0.0.1 and localhost, a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=recsvc test CA",
    )  # fmt: skip
    server = _signed_pair(
        directory, "server", ca, ca_key, "subjectAltName=IP:127.0.0.1,DNS:localhost"
    )
    client = _signed_pair(directory, "client", ca, ca_key, "extendedKeyUsage=clientAuth")
    return Pki(ca, server, directory / "server.key", client, directory / "client.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass(frozen=True)
class Secured:
    process: ServerProcess
    probe_port: int
    token_file: Path


@pytest.fixture(scope="module")
def secured(
    pki: Pki, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    """TLS, tokens, reflection off, a plaintext health port."""
    directory = tmp_path_factory.mktemp("secured")
    token_file = directory / "tokens"
    token_file.write_text(TOKEN_FILE)
    probe_port = free_port()
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(directory / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SECURITY__TLS_CERT_FILE=str(pki.server_cert),
        RECSVC_SECURITY__TLS_KEY_FILE=str(pki.server_key),
        RECSVC_SECURITY__TOKEN_FILE=str(token_file),
        RECSVC_SECURITY__REFLECTION="off",
        RECSVC_SECURITY__HEALTH_PORT=str(probe_port),
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as process:
        yield Secured(process, probe_port, token_file)


def tls_channel(target: str, pki: Pki, client_cert: bool = False) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(target, credentials)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def code_of(call: object, request: object, metadata: object = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10, metadata=metadata)  # type: ignore[operator]
    return caught.value


def health_status(channel: grpc.Channel) -> str:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="recsvc.v1.Recommender"), timeout=10
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def interaction(user: str, item: str, event_id: str) -> RawInteraction:
    return RawInteraction(user, item, EventType.VIEW, None, 1_700_000_000_000, event_id)


# ------------------------------------------------------------------ TLS


def test_tls_client_with_the_ca_and_a_read_token_is_answered(
    secured: Secured, pki: Pki, model: Model
) -> None:
    target = secured.process.target
    with RecsvcClient(target, tls_ca_file=pki.ca, token=READ_TOKEN) as client:
        result = client.recommend(model.users.ids[0], k=5)
        assert len(result.items) == 5
        assert client.model_info().version == model.version
    # By the DNS name in the certificate, too.
    port = target.rsplit(":", 1)[1]
    with RecsvcClient(f"localhost:{port}", tls_ca_file=pki.ca, token=READ_TOKEN) as client:
        assert client.model_info().version == model.version


def test_plaintext_client_is_refused(secured: Secured) -> None:
    with (
        grpc.insecure_channel(secured.process.target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        health_status(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_ca_is_refused(secured: Secured) -> None:
    # The system's CAs did not sign the test CA's server certificate.
    with (
        RecsvcClient(secured.process.target, tls=True, token=READ_TOKEN) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.model_info()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_a_renewed_certificate_is_served_without_a_restart(
    model_store: Path, tmp_path: Path
) -> None:
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    served = tmp_path / "served"
    served.mkdir()

    def install(pki: Pki) -> None:  # as a Secret update does: new files swapped in
        for source, name in ((pki.server_cert, "tls.crt"), (pki.server_key, "tls.key")):
            staged = served / f"{name}.new"
            staged.write_bytes(source.read_bytes())
            staged.replace(served / name)

    def health_via(target: str, pki: Pki) -> str:
        try:
            with tls_channel(target, pki) as channel:
                return health_status(channel)
        except grpc.RpcError as exc:
            return str(exc.code().name)

    install(old)
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SECURITY__TLS_CERT_FILE=str(served / "tls.crt"),
        RECSVC_SECURITY__TLS_KEY_FILE=str(served / "tls.key"),
        RECSVC_SECURITY__TLS_RELOAD_SECONDS="0.1",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as process:
        assert health_via(process.target, old) == "SERVING"
        assert health_via(process.target, new) == "UNAVAILABLE"  # another CA signed it
        install(new)
        deadline = time.monotonic() + 15
        while health_via(process.target, new) != "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health_via(process.target, new) == "SERVING"
        assert health_via(process.target, old) == "UNAVAILABLE"
        (served / "tls.crt").write_text("not a certificate\n")  # a broken file keeps the last
        time.sleep(0.3)
        assert health_via(process.target, new) == "SERVING"


# ------------------------------------------------------------------ tokens and scopes


def test_missing_or_unknown_token_is_unauthenticated_alike(
    secured: Secured, pki: Pki, model: Model
) -> None:
    with tls_channel(secured.process.target, pki) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        calls = [
            (stub.Recommend, pb.RecommendRequest(user_id=model.users.ids[0], k=5)),
            (stub.GetModelInfo, pb.GetModelInfoRequest()),
            (stub.RecordInteractions, pb.RecordInteractionsRequest()),
            (stub.UpsertItems, pb.UpsertItemsRequest()),
        ]
        details = set()
        for call, request in calls:
            for metadata in (
                None,
                bearer(READ_TOKEN[:-1] + "X"),  # one character off
                bearer(READ_TOKEN + "X"),  # a configured token is a prefix of it
                (("authorization", READ_TOKEN),),  # no scheme
            ):
                error = code_of(call, request, metadata)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                details.add(error.details())
    # One message for every case: nothing tells how close a guess was.
    assert len(details) == 1
    assert "token" in details.pop()


def test_read_token_may_not_write(secured: Secured, pki: Pki, model: Model) -> None:
    with tls_channel(secured.process.target, pki) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        record = pb.RecordInteractionsRequest(
            interactions=[
                pb.Interaction(
                    user_id=model.users.ids[1],
                    item_id=model.items.ids[0],
                    event_type=pb.EVENT_TYPE_VIEW,
                    event_id="sec-read-1",
                )
            ]
        )
        error = code_of(stub.RecordInteractions, record, bearer(READ_TOKEN))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert READ_TOKEN not in (error.details() or "")
        upsert = pb.UpsertItemsRequest(items=[pb.Item(item_id="sec-new-item")])
        error = code_of(stub.UpsertItems, upsert, bearer(READ_TOKEN))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        # Refused before the servicer: the event was not recorded, a write token records it.
        response = stub.RecordInteractions(record, timeout=10, metadata=bearer(WRITE_TOKEN))
        assert (response.accepted, response.duplicates) == (1, 0)


def test_write_token_writes_but_does_not_read(secured: Secured, pki: Pki, model: Model) -> None:
    user = model.users.ids[2]
    target = secured.process.target
    with RecsvcClient(target, tls_ca_file=pki.ca, token=WRITE_TOKEN) as client:
        assert client.record_interactions(
            [interaction(user, model.items.ids[3], "sec-write-1")]
        ) == (1, 0)
        with pytest.raises(grpc.RpcError) as caught:
            client.recommend(user, k=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with RecsvcClient(target, tls_ca_file=pki.ca, token=BOTH_TOKEN) as client:
        assert client.record_interactions(
            [interaction(user, model.items.ids[4], "sec-both-1")]
        ) == (1, 0)
        assert model.items.ids[4] not in {i.item_id for i in client.recommend(user, k=50).items}


def test_health_is_open_and_the_probe_port_serves_only_health(secured: Secured, pki: Pki) -> None:
    with tls_channel(secured.process.target, pki) as channel:
        assert health_status(channel) == "SERVING"  # no token
    with grpc.insecure_channel(f"127.0.0.1:{secured.probe_port}") as channel:
        assert health_status(channel) == "SERVING"
        stub = pb_grpc.RecommenderStub(channel)
        error = code_of(stub.GetModelInfo, pb.GetModelInfoRequest(), bearer(BOTH_TOKEN))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_is_off_when_configured(secured: Secured, pki: Pki) -> None:
    with tls_channel(secured.process.target, pki) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=10,
            metadata=bearer(READ_TOKEN),
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(responses)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_start_up_says_how_the_server_is_secured(secured: Secured) -> None:
    output = "".join(secured.process.output)
    assert "authentication on: 2 read and 2 write token(s)" in output
    assert "TLS on, reflection off" in output
    for token in (READ_TOKEN, WRITE_TOKEN, BOTH_TOKEN):
        assert token not in output


@pytest.mark.slow
def test_recsvc_call_takes_tls_and_token_options(secured: Secured, pki: Pki) -> None:
    token_file = secured.token_file.parent / "client-token"
    token_file.write_text(READ_TOKEN + "\n")
    base = ["call", "info", "--target", secured.process.target, "--tls-ca", str(pki.ca)]
    env = server_env()
    done = subprocess.run(
        recsvc_command(*base, "--token-file", str(token_file)),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"version"' in done.stdout
    refused = subprocess.run(
        recsvc_command(*base), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr


# ------------------------------------------------------------------ mutual TLS


@pytest.fixture(scope="module")
def mutual(
    pki: Pki, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Mutual TLS, no tokens."""
    directory = tmp_path_factory.mktemp("mutual")
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(directory / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SECURITY__TLS_CERT_FILE=str(pki.server_cert),
        RECSVC_SECURITY__TLS_KEY_FILE=str(pki.server_key),
        RECSVC_SECURITY__TLS_CLIENT_CA_FILE=str(pki.ca),
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as process:
        yield process


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mutual: ServerProcess, pki: Pki, model: Model
) -> None:
    with tls_channel(mutual.target, pki) as channel, pytest.raises(grpc.RpcError) as caught:
        health_status(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with RecsvcClient(
        mutual.target,
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
    ) as client:
        assert len(client.recommend(model.users.ids[0], k=5).items) == 5
    output = "".join(mutual.output)
    assert "authentication off" in output
    assert "TLS mutual" in output


# ------------------------------------------------------------------ reflection with tokens


@pytest.fixture(scope="module")
def reflecting(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tokens without TLS (as behind a TLS-terminating mesh), reflection turned on."""
    directory = tmp_path_factory.mktemp("reflecting")
    (directory / "tokens").write_text(TOKEN_FILE)
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(directory / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SECURITY__TOKEN_FILE=str(directory / "tokens"),
        RECSVC_SECURITY__REFLECTION="on",
    )
    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as process:
        yield process.target


def list_services(channel: grpc.Channel, metadata: object) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        timeout=10,
        metadata=metadata,
    )
    return {s.name for r in responses for s in r.list_services_response.service}


def test_reflection_turned_on_with_tokens_needs_the_read_scope(reflecting: str) -> None:
    with grpc.insecure_channel(reflecting) as channel:
        assert "recsvc.v1.Recommender" in list_services(channel, bearer(READ_TOKEN))
        for metadata, code in [
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (bearer(WRITE_TOKEN), grpc.StatusCode.PERMISSION_DENIED),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                list_services(channel, metadata)
            assert caught.value.code() == code
        # Health's streaming Watch stays open too.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert next(iter(watch)).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


@pytest.mark.slow
def test_tokens_are_added_and_revoked_without_a_restart(model_store: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {READ_TOKEN}\n")
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SECURITY__TOKEN_FILE=str(tokens),
        RECSVC_SECURITY__TOKEN_RELOAD_SECONDS="0.1",
    )
    new_token = "rotated-token-0123456789abcdef"

    def code_with(stub: pb_grpc.RecommenderStub, token: str) -> grpc.StatusCode:
        try:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=bearer(token))
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def replace(text: str) -> None:  # as a Secret update does: a new file swapped in
        staged = tmp_path / "tokens.new"
        staged.write_text(text)
        staged.replace(tokens)

    def wait_for(stub: pb_grpc.RecommenderStub, token: str, code: grpc.StatusCode) -> None:
        deadline = time.monotonic() + 15
        while code_with(stub, token) != code and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code_with(stub, token) == code

    args = ["serve", "--model-store", str(model_store), "--port", "0"]
    with running_server(args, env) as process, grpc.insecure_channel(process.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        assert code_with(stub, READ_TOKEN) == grpc.StatusCode.OK
        assert code_with(stub, new_token) == grpc.StatusCode.UNAUTHENTICATED
        replace(f"read {new_token}\n")  # rotate: the old token is revoked
        wait_for(stub, new_token, grpc.StatusCode.OK)
        assert code_with(stub, READ_TOKEN) == grpc.StatusCode.UNAUTHENTICATED
        replace("read,admin broken\n")  # a broken file keeps the tokens loaded before
        time.sleep(0.5)
        assert code_with(stub, new_token) == grpc.StatusCode.OK
        replace(f"write {new_token}\n")  # and a fixed one is read again
        wait_for(stub, new_token, grpc.StatusCode.PERMISSION_DENIED)


def test_serve_with_a_bad_token_file_exits_with_one_line(model_store: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("read tooshort\n")
    env = server_env(
        RECSVC_SECURITY__TOKEN_FILE=str(tokens),
        RECSVC_STORE__EVENT_LOG_PATH=str(tmp_path / "events.jsonl"),
    )
    done = subprocess.run(
        recsvc_command("serve", "--model-store", str(model_store), "--port", "0"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "recsvc: error: security.token_file:" in done.stderr
    assert "tooshort" not in done.stderr


# ------------------------------------------------------------------ configuration


def test_every_recommender_method_has_a_scope() -> None:
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    for method in service.methods:
        assert f"/{service.full_name}/{method.name}" in METHOD_SCOPES, method.name
    writes = {m.rsplit("/", 1)[1] for m, s in METHOD_SCOPES.items() if s is Scope.WRITE}
    assert writes == {"RecordInteractions", "UpsertItems", "DeleteItems", "ForgetUser"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("admin 0123456789abcdef0123", "unknown scope 'admin'"),
        ("read short", "a token must be"),
        ("read 0123456789abcdef0123 extra", "expected 'SCOPES TOKEN'"),
    ],
)
def test_token_file_errors_name_the_line_not_the_token(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"read {READ_TOKEN}\n\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_tokens(path)
    message = str(caught.value)
    assert problem in message and "line 3" in message
    assert READ_TOKEN not in message and "0123456789abcdef0123" not in message


def test_token_table_grants_scopes_only_to_exact_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE + f"write {READ_TOKEN}\n")  # a second line adds a scope
    table = load_tokens(path)
    assert table.scopes_of(READ_TOKEN) == {Scope.READ, Scope.WRITE}
    assert table.scopes_of(WRITE_TOKEN) == {Scope.WRITE}
    assert table.scopes_of(READ_TOKEN[:-1]) == frozenset()
    assert table.scopes_of("") == frozenset()


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls_cert_file and security\.tls_key_file"):
        load_settings(security={"tls_cert_file": tmp_path / "cert.pem"})
    with pytest.raises(ConfigError, match="tls_client_ca_file needs"):
        load_settings(security={"tls_client_ca_file": tmp_path / "ca.pem"})
    assert load_settings().security.reflection_on
    assert not load_settings(security={"token_file": tmp_path / "t"}).security.reflection_on
