"""A large RecommendBatch response is serialized in parts off the event loop and joined."""

from __future__ import annotations

import gc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc.api import convert
from recsvc.api.handlers import passing_bytes_through
from recsvc.core.holder import freeze_heap
from recsvc.core.queries import Recommendation, ScoredItem, Strategy


def result(n: int) -> Recommendation:
    items = [ScoredItem(f"i{n}-{r}", 1.0 / (r + 1)) for r in range(3)]
    return Recommendation(items, "v1", Strategy.PERSONALISED)


def test_joined_parts_parse_as_the_whole_response_in_order() -> None:
    results = [result(n) for n in range(7)]
    joined = b"".join(convert.serialized_batch_part(results[s : s + 3]) for s in range(0, 7, 3))
    whole = pb.RecommendBatchResponse()
    convert.add_recommendations(whole.responses, results)
    parsed = pb.RecommendBatchResponse.FromString(joined)
    assert parsed == whole
    assert [r.items[0].item_id for r in parsed.responses] == [f"i{n}-0" for n in range(7)]


def test_bytes_pass_through_and_messages_are_serialized() -> None:
    serialize = passing_bytes_through(pb.RecommendBatchResponse.SerializeToString)
    message = pb.RecommendBatchResponse(responses=[pb.RecommendResponse(model_version="v")])
    assert serialize(b"\x0a\x00") == b"\x0a\x00"
    assert serialize(message) == message.SerializeToString()


def test_freeze_heap_moves_what_is_alive_out_of_the_collector() -> None:
    try:
        kept = [[n] for n in range(1000)]  # tracked containers, alive
        freeze_heap()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
