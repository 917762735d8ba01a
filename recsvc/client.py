"""A small typed Python client for recsvc, for other services.

    with RecsvcClient("127.0.0.1:50051") as client:
        result = client.recommend("u00001", k=10)
        for item in result.items:
            print(item.item_id, item.score)

Failures raise ``grpc.RpcError`` (``.code()`` and ``.details()`` say what was wrong); every call
has a deadline (``timeout`` seconds, default 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api import convert
from recsvc.core.interactions import RawInteraction
from recsvc.core.items import RawItem
from recsvc.core.model import ModelInfo
from recsvc.core.queries import (
    CategoryFilter,
    Recommendation,
    RecommendQuery,
    ScoredItem,
    SimilarItems,
    SimilarityMode,
    SimilarQuery,
    Strategy,
)
from recsvc.core.state import EventType

__all__ = [
    "CategoryFilter",
    "EventType",
    "ModelInfo",
    "RawInteraction",
    "RecommendQuery",
    "Recommendation",
    "RecsvcClient",
    "ScoredItem",
    "SimilarItems",
    "SimilarityMode",
    "Strategy",
]


class RecsvcClient:
    """A blocking client over one gRPC channel. Thread-safe; reuse one per process."""

    def __init__(
        self, target: str, timeout: float = 5.0, max_message_bytes: int = 16 << 20
    ) -> None:
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude_item_ids: Sequence[str] = (),
        recent_item_ids: Sequence[str] = (),
        categories: CategoryFilter | None = None,
    ) -> Recommendation:
        query = RecommendQuery(
            user_id,
            k,
            exclude_seen,
            tuple(exclude_item_ids),
            tuple(recent_item_ids),
            categories or CategoryFilter(),
        )
        response = self._stub.Recommend(convert.recommend_query_to_pb(query), timeout=self.timeout)
        return convert.recommendation_from_pb(response)

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        request = pb.RecommendBatchRequest(
            requests=[convert.recommend_query_to_pb(q) for q in queries]
        )
        response = self._stub.RecommendBatch(request, timeout=self.timeout)
        return [convert.recommendation_from_pb(r) for r in response.responses]

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        mode: SimilarityMode = SimilarityMode.COLLABORATIVE,
        categories: CategoryFilter | None = None,
    ) -> SimilarItems:
        request = convert.similar_query_to_pb(
            SimilarQuery(item_id, k, mode, categories or CategoryFilter())
        )
        return convert.similar_items_from_pb(self._stub.SimilarItems(request, timeout=self.timeout))

    def search_by_image(
        self, image: bytes, k: int = 10, categories: CategoryFilter | None = None
    ) -> SimilarItems:
        """Items whose photos look like ``image`` (JPEG, PNG or WebP bytes)."""
        filters = categories or CategoryFilter()
        request = pb.SearchByImageRequest(
            image=image,
            k=k,
            categories=pb.CategoryFilter(include=filters.include, exclude=filters.exclude),
        )
        response = self._stub.SearchByImage(request, timeout=self.timeout)
        return SimilarItems(
            [ScoredItem(i.item_id, i.score) for i in response.items], response.model_version
        )

    def upsert_items(self, items: Sequence[RawItem]) -> tuple[int, int]:
        """Add or update items (with an image: recommendable at once); returns (created,
        updated)."""
        request = pb.UpsertItemsRequest(
            items=[
                pb.Item(
                    item_id=i.item_id,
                    category=i.category,
                    attributes=i.attributes,
                    image_bytes=i.image_bytes,
                    image_path=i.image_path,
                )
                for i in items
            ]
        )
        response = self._stub.UpsertItems(request, timeout=self.timeout)
        return response.created, response.updated

    def record_interactions(self, interactions: Sequence[RawInteraction]) -> tuple[int, int]:
        """Record interactions; returns (accepted, duplicates)."""
        request = convert.interactions_to_pb(list(interactions))
        response = self._stub.RecordInteractions(request, timeout=self.timeout)
        return response.accepted, response.duplicates

    def model_info(self) -> ModelInfo:
        response = self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout)
        return convert.model_info_from_pb(response)

    def health(self, service: str = "") -> str:
        """The health status name of ``service`` ("" = the whole server), e.g. "SERVING"."""
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecsvcClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
