"""A small typed Python client for recsvc, for other services.

    with RecsvcClient("127.0.0.1:50051") as client:
        result = client.recommend("u00001", k=10)
        for item in result.items:
            print(item.item_id, item.score)

Failures raise ``grpc.RpcError`` (``.code()`` and ``.details()`` say what was wrong); every call
has a deadline (``timeout`` seconds, default 5).

A server with TLS and tokens (docs/deploy.md, Security):

    client = RecsvcClient(
        "recsvc-serve.recsvc:50051", tls_ca_file=Path("ca.pem"), token=os.environ["API_TOKEN"]
    )

(``tls=True`` verifies the server against the system's CAs; ``tls_cert_file`` and
``tls_key_file`` add a client certificate for mutual TLS.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api import convert
from recsvc.core.examples import Example, ExamplesQuery
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

_Request = TypeVar("_Request", bound=Any)

__all__ = [
    "CategoryFilter",
    "EventType",
    "Example",
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
        self,
        target: str,
        timeout: float = 5.0,
        max_message_bytes: int = 16 << 20,
        *,
        tls: bool = False,
        tls_ca_file: Path | None = None,
        tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        namespace: str = "",
    ) -> None:
        """TLS is on with ``tls`` or any ``tls_*`` argument: the server is verified against
        ``tls_ca_file`` (default: the system's CAs) under its name in ``target`` or
        ``tls_server_name``; ``token`` goes with every call as ``authorization: Bearer``;
        every call addresses ``namespace`` (empty: the server's default one)."""
        self.timeout = timeout
        self.namespace = namespace
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if tls or tls_ca_file or tls_cert_file or tls_server_name:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls_ca_file.read_bytes() if tls_ca_file else None,
                private_key=tls_key_file.read_bytes() if tls_key_file else None,
                certificate_chain=tls_cert_file.read_bytes() if tls_cert_file else None,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        # Metadata rather than call credentials: a token must also reach a server behind a
        # TLS-terminating proxy or mesh, where this channel itself is plaintext.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
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
        filter: str = "",
        context: Mapping[str, str] | None = None,
        explain: bool = False,
    ) -> Recommendation:
        """Top-k items for a user; ``filter``: an expression on item attributes
        (docs/filters.md); ``context``: facts about the request that rules match on;
        ``explain``: give each item its reasons (docs/explanations.md)."""
        query = RecommendQuery(
            user_id,
            k,
            exclude_seen,
            tuple(exclude_item_ids),
            tuple(recent_item_ids),
            categories or CategoryFilter(),
            filter=filter,
            context=dict(context or {}),
            explain=explain,
        )
        response = self._stub.Recommend(
            self._in_namespace(convert.recommend_query_to_pb(query)),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return convert.recommendation_from_pb(response)

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        request = pb.RecommendBatchRequest(
            requests=[convert.recommend_query_to_pb(q) for q in queries]
        )
        response = self._stub.RecommendBatch(
            self._in_namespace(request), timeout=self.timeout, metadata=self._metadata
        )
        return [convert.recommendation_from_pb(r) for r in response.responses]

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        mode: SimilarityMode = SimilarityMode.COLLABORATIVE,
        categories: CategoryFilter | None = None,
        filter: str = "",
    ) -> SimilarItems:
        request = convert.similar_query_to_pb(
            SimilarQuery(item_id, k, mode, categories or CategoryFilter(), filter=filter)
        )
        return convert.similar_items_from_pb(
            self._stub.SimilarItems(
                self._in_namespace(request), timeout=self.timeout, metadata=self._metadata
            )
        )

    def search_by_image(
        self,
        image: bytes,
        k: int = 10,
        categories: CategoryFilter | None = None,
        filter: str = "",
    ) -> SimilarItems:
        """Items whose photos look like ``image`` (JPEG, PNG or WebP bytes)."""
        filters = categories or CategoryFilter()
        request = pb.SearchByImageRequest(
            image=image,
            k=k,
            categories=pb.CategoryFilter(include=filters.include, exclude=filters.exclude),
            filter=filter,
        )
        response = self._stub.SearchByImage(
            self._in_namespace(request), timeout=self.timeout, metadata=self._metadata
        )
        return SimilarItems(
            [ScoredItem(i.item_id, i.score, i.rule) for i in response.items],
            response.model_version,
        )

    def recommend_from_examples(
        self,
        positives: Sequence[str | bytes | Example],
        negatives: Sequence[str | bytes | Example] = (),
        k: int = 10,
        mode: SimilarityMode = SimilarityMode.COLLABORATIVE,
        *,
        categories: CategoryFilter | None = None,
        filter: str = "",
        exclude_item_ids: Sequence[str] = (),
    ) -> SimilarItems:
        """Items like ``positives`` and unlike ``negatives`` (docs/examples.md): each an item
        id, a photo's bytes (JPEG, PNG or WebP), or an :class:`Example` to give a weight.
        The example items themselves are never returned."""
        query = ExamplesQuery(
            tuple(_example(e) for e in positives),
            tuple(_example(e) for e in negatives),
            k,
            mode,
            categories or CategoryFilter(),
            filter,
            tuple(exclude_item_ids),
        )
        response = self._stub.RecommendFromExamples(
            self._in_namespace(convert.examples_query_to_pb(query)),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return SimilarItems(
            [ScoredItem(i.item_id, i.score, i.rule) for i in response.items],
            response.model_version,
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
                    available=i.available,
                )
                for i in items
            ]
        )
        response = self._stub.UpsertItems(
            self._in_namespace(request), timeout=self.timeout, metadata=self._metadata
        )
        return response.created, response.updated

    def delete_items(self, item_ids: Sequence[str]) -> tuple[int, int]:
        """Delete items (never served again, left out of the next training); returns
        (deleted, not_found)."""
        request = pb.DeleteItemsRequest(item_ids=list(item_ids))
        response = self._stub.DeleteItems(
            self._in_namespace(request), timeout=self.timeout, metadata=self._metadata
        )
        return response.deleted, response.not_found

    def record_interactions(self, interactions: Sequence[RawInteraction]) -> tuple[int, int]:
        """Record interactions; returns (accepted, duplicates)."""
        request = convert.interactions_to_pb(list(interactions))
        response = self._stub.RecordInteractions(
            self._in_namespace(request), timeout=self.timeout, metadata=self._metadata
        )
        return response.accepted, response.duplicates

    def forget_user(self, user_id: str) -> bool:
        """Forget a user (ForgetUser): returns whether the server held any state for them.
        When it returns, the forgetting is durable (docs/privacy.md says what it covers)."""
        response = self._stub.ForgetUser(
            pb.ForgetUserRequest(user_id=user_id, namespace=self.namespace),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return bool(response.found)

    def model_info(self) -> ModelInfo:
        response = self._stub.GetModelInfo(
            pb.GetModelInfoRequest(namespace=self.namespace),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return convert.model_info_from_pb(response)

    def health(self, service: str = "") -> str:
        """The health status name of ``service`` ("" = the whole server), e.g. "SERVING"."""
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def _in_namespace(self, request: _Request) -> _Request:
        request.namespace = self.namespace
        return request

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


def _example(example: str | bytes | Example) -> Example:
    """An item id or a photo's bytes as an Example of weight 1."""
    if isinstance(example, Example):
        return example
    if isinstance(example, bytes):
        return Example(image=example)
    return Example(item_id=example)
