"""Property-based fuzzing of a running server: random bytes and well-formed messages with
extreme values to every RPC, sent raw (bytes in, bytes out) so that nothing on the client
side validates or re-encodes them.

Only OK, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and RESOURCE_EXHAUSTED may come back
(never UNKNOWN, INTERNAL or UNAVAILABLE), the server still answers health afterwards, and its
log holds no traceback and only rate-limited warnings.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc.testing import ServerProcess, running_server, server_env

pytestmark = pytest.mark.fault

SERVICE = "/recsvc.v1.Recommender/"
METHODS = (
    "Recommend",
    "RecommendBatch",
    "RecommendFromExamples",
    "SimilarItems",
    "SearchByImage",
    "RecordInteractions",
    "UpsertItems",
    "GetModelInfo",
)
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Cases per property: together more than 5,000 per run. Random bytes cost ~3 ms a case, the
# structured messages 2-57 ms (hypothesis builds larger ones as a run goes on), so the share
# of random bytes is the larger one, to keep the whole suite within its time.
RANDOM_BYTES_CASES = 4000
MESSAGE_CASES = 1200


@pytest.fixture(scope="module")
def fuzz_server(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server of its own (fuzzed interactions must not reach other tests' users), with an
    image root so that image_path is read, and small batch limits so that a valid fuzzed
    batch stays cheap."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    (root / "images" / "not-an-image.jpg").write_bytes(b"plain text")
    env = server_env(
        RECSVC_STORE__EVENT_LOG_PATH=str(root / "events.jsonl"),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVING__EXACT_SEARCH_MAX_ITEMS="0",
        RECSVC_SERVING__MAX_K="100",
        RECSVC_SERVING__MAX_BATCH="50",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
        RECSVC_IMAGES__PATH_ROOT=str(root / "images"),
        RECSVC_LOG_LEVEL="WARNING",
    )
    with running_server(["serve", "--model-store", str(model_store), "--port", "0"], env) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        fuzz_server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        yield channel


def call_raw(channel: grpc.Channel, method: str, data: bytes) -> grpc.StatusCode:
    """Send ``data`` as the request of ``method`` as it is; the status code that came back."""
    try:
        channel.unary_unary(method)(data, timeout=30)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        assert code in ALLOWED, f"{method}: {code} {exc.details()}"  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ strategies

# Ids: short and ordinary, long, with NULs and control characters, or non-ASCII.
ids = st.one_of(
    st.sampled_from(["", "u1", "i1", "0", "p001"]),
    st.text(max_size=12),
    st.text(min_size=250, max_size=400),
    st.text(alphabet=st.sampled_from("a\x00\n\t\u00e9\U0001f600"), max_size=20),
)
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 10, 1000]))
int64s = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(width=32)
enums = st.integers(-3, 8)
# Repeated fields: a few of anything, or one value repeated up to what the receive limit holds.
counts = st.one_of(st.integers(0, 5), st.integers(0, 50_000))


def repeated(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.lists(values, max_size=5), st.tuples(values, counts).map(lambda vc: [vc[0]] * vc[1])
    )


categories = st.builds(pb.CategoryFilter, include=repeated(ids), exclude=repeated(ids))


def recommend_requests(
    lists: st.SearchStrategy[list[str]],
) -> st.SearchStrategy[pb.RecommendRequest]:
    return st.builds(
        pb.RecommendRequest,
        user_id=ids,
        k=int32s,
        exclude_seen=st.booleans(),
        exclude_item_ids=lists,
        recent_item_ids=lists,
        categories=st.builds(pb.CategoryFilter, include=lists, exclude=lists),
        diversity=floats,
    )


recommend = recommend_requests(repeated(ids))
# In a batch, the entries' own lists stay short (the batch's length is the huge one).
batch_entry = recommend_requests(st.lists(ids, max_size=3))
images = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xd8\xff\xe0" + b"\x00" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 30]),
    st.sampled_from([10 * 2**20, 10 * 2**20 + 1, 17 * 2**20]).map(lambda n: b"\x00" * n),
)
paths = st.one_of(
    ids,
    st.sampled_from(["not-an-image.jpg", "missing.jpg", "../../etc/passwd", "/etc/passwd", "."]),
)
item = st.one_of(
    st.builds(pb.Item, item_id=ids, category=ids, image_bytes=images),
    st.builds(pb.Item, item_id=ids, category=ids, image_path=paths),
    st.builds(pb.Item, item_id=ids, attributes=st.dictionaries(ids, ids, max_size=3), category=ids),
)
example = st.one_of(
    st.builds(pb.Example, item_id=ids, weight=floats),
    st.builds(pb.Example, image=images, weight=floats),
    st.just(pb.Example()),
)
interaction = st.builds(
    pb.Interaction,
    user_id=ids,
    item_id=ids,
    event_type=enums,
    weight=floats,
    timestamp_ms=int64s,
    event_id=ids,
)


def batch_of(
    message: st.SearchStrategy[pb.RecommendRequest],
) -> st.SearchStrategy[pb.RecommendBatchRequest]:
    return st.one_of(
        st.builds(pb.RecommendBatchRequest, requests=st.lists(message, max_size=4)),
        st.tuples(message, counts).map(
            lambda mc: pb.RecommendBatchRequest(requests=[mc[0]] * mc[1])
        ),
    )


MESSAGES: dict[str, st.SearchStrategy[bytes]] = {
    name: strategy.map(lambda m: m.SerializeToString())
    for name, strategy in {
        "Recommend": recommend,
        "RecommendBatch": batch_of(batch_entry),
        "RecommendFromExamples": st.builds(
            pb.RecommendFromExamplesRequest,
            positives=st.lists(example, max_size=3),
            negatives=st.lists(example, max_size=2),
            k=int32s,
            mode=enums,
            categories=categories,
            exclude_item_ids=repeated(ids),
        ),
        "SimilarItems": st.builds(
            pb.SimilarItemsRequest, item_id=ids, k=int32s, mode=enums, categories=categories
        ),
        "SearchByImage": st.builds(
            pb.SearchByImageRequest, image=images, k=int32s, categories=categories
        ),
        "RecordInteractions": st.builds(
            pb.RecordInteractionsRequest, interactions=st.lists(interaction, max_size=4)
        ),
        "UpsertItems": st.builds(pb.UpsertItemsRequest, items=st.lists(item, max_size=3)),
        "GetModelInfo": st.just(pb.GetModelInfoRequest()),
    }.items()
}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# A length-delimited field 1 (a string in every request that has one, the repeated message in
# the batch ones) holding raw bytes: invalid UTF-8 where a string is expected.
raw_field_one = st.binary(max_size=40).map(lambda b: b"\x0a" + varint(len(b)) + b)


@st.composite
def damaged(draw: st.DrawFn, message: st.SearchStrategy[bytes]) -> bytes:
    """A well-formed message, then perhaps cut short or given an extra raw field 1."""
    data = draw(message)
    how = draw(st.sampled_from(["as is", "truncated", "raw field"]))
    if how == "truncated" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "raw field":
        return data + draw(raw_field_one)
    return data


# ------------------------------------------------------------------ properties


@settings(
    max_examples=RANDOM_BYTES_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    method=st.sampled_from([SERVICE + name for name in METHODS] + [HEALTH_CHECK]),
    data=st.one_of(st.binary(max_size=200), raw_field_one, st.binary(min_size=1, max_size=8)),
)
@pytest.mark.slow
def test_random_bytes_to_every_rpc(channel: grpc.Channel, method: str, data: bytes) -> None:
    call_raw(channel, method, data)


@pytest.mark.slow  # ~25 s
@settings(
    max_examples=MESSAGE_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=st.sampled_from(METHODS).flatmap(lambda m: st.tuples(st.just(m), damaged(MESSAGES[m]))))
def test_extreme_messages_to_every_rpc(channel: grpc.Channel, case: tuple[str, bytes]) -> None:
    method, data = case
    call_raw(channel, SERVICE + method, data)


def test_malformed_requests_get_a_short_invalid_argument(channel: grpc.Channel) -> None:
    """Before: UNKNOWN "Unexpected <class '...DecodeError'>" or "String field had bad UTF-8",
    and an ERROR traceback in the server log for each call."""
    cases = {
        b"\x0a\x02\xff\xfe": "request: invalid UTF-8 in a string field",
        b"\x0a\x05ab": "request: not a decodable protobuf message",
        b"\xff\xff\xff": "request: not a decodable protobuf message",
    }
    for data, expected in cases.items():
        # Field 1 is a string in these two; in UpsertItems it is a message (corrupt bytes).
        methods = [SERVICE + "Recommend", HEALTH_CHECK]
        if "UTF-8" not in expected:
            methods.append(SERVICE + "UpsertItems")
        for method in methods:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(method)(data, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            details = caught.value.details()  # type: ignore[attr-defined]
            assert details.startswith(expected) and "class" not in details, details
    # A stream of requests (reflection): the malformed one ends the call the same way.
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(reflect(iter([b"\xff\xff\xff"]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_server_still_serving_and_log_quiet_after_fuzzing(
    fuzz_server: ServerProcess, channel: grpc.Channel
) -> None:
    """Runs after the properties above (pytest keeps the file's order)."""
    check = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    answer = check(health_pb2.HealthCheckRequest(service="recsvc.v1.Recommender"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    started = time.monotonic()
    channel.unary_unary(SERVICE + "Recommend")(
        pb.RecommendRequest(user_id="u1", k=5).SerializeToString(), timeout=10
    )
    assert time.monotonic() - started < 5
    process = fuzz_server.process
    process.send_signal(signal.SIGTERM)
    assert process.stdout is not None
    log = process.stdout.read()
    process.wait(timeout=30)
    assert "Traceback" not in log
    assert "Unexpected" not in log
    warnings = [line for line in log.splitlines() if "malformed request to" in line]
    # Rate-limited: one per RPC and kind per 10 s, the next one counting those left out.
    assert warnings, "malformed requests are logged"
    assert len(warnings) < 200
