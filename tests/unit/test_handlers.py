"""The rate-limited warning of malformed requests (recsvc.api.handlers)."""

from __future__ import annotations

import logging
import time

import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc.api.handlers import MalformedRequest, WarningLimiter, safe_deserializer


def test_one_warning_per_kind_and_interval_counting_those_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = WarningLimiter(interval=0.2)
    with caplog.at_level(logging.WARNING):
        logged = [limiter.warn("kind a", "detail") for _ in range(50)]
        assert limiter.warn("kind b", "detail")  # another kind has its own interval
        time.sleep(0.25)
        assert limiter.warn("kind a", "again")
    assert logged == [True] + [False] * 49
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "kind a: detail (0 more left out of the log before this)",
        "kind b: detail (0 more left out of the log before this)",
        "kind a: again (49 more left out of the log before this)",
    ]


def test_safe_deserializer_turns_decode_errors_into_a_malformed_request() -> None:
    limiter = WarningLimiter(interval=60)
    parse = safe_deserializer(pb.RecommendRequest.FromString, "Recommend", limiter)
    good = pb.RecommendRequest(user_id="u1", k=3)
    assert parse(good.SerializeToString()) == good
    bad_utf8 = parse(b"\x0a\x02\xff\xfe")
    assert isinstance(bad_utf8, MalformedRequest)
    assert bad_utf8.message == "request: invalid UTF-8 in a string field"
    truncated = parse(b"\x0a\x05ab")
    assert isinstance(truncated, MalformedRequest)
    assert "protobuf" in truncated.reason and "Error" not in truncated.reason
