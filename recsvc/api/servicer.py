"""The Recommender servicer: convert, call the domain, convert back. No logic lives here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api import convert
from recsvc.api.boundary import call_boundary
from recsvc.api.gate import CallGate
from recsvc.core.items import ItemService
from recsvc.core.memory import model_memory_bytes
from recsvc.core.namespaces import DEFAULT_NAMESPACE, NamespaceTable
from recsvc.core.service import RecommendationService
from recsvc.errors import InvalidArgument
from recsvc.metrics import Metrics

Context = grpc.aio.ServicerContext


@dataclass(frozen=True)
class Served:
    """What answers one namespace's calls."""

    namespace: str
    service: RecommendationService
    items: ItemService


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """gRPC front of :class:`RecommendationService` and :class:`ItemService`, one pair per
    namespace, picked by each request's ``namespace`` (empty: the default one)."""

    def __init__(
        self,
        service: RecommendationService,
        items: ItemService,
        metrics: Metrics | None = None,
        echo_generated_ids: bool = False,
        namespaces: Mapping[str, Served] | None = None,
        default_namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        """``service`` and ``items`` answer ``default_namespace``; ``namespaces`` adds the
        others (or all of them, the default one included)."""
        units = {default_namespace: Served(default_namespace, service, items)}
        units.update(namespaces or {})
        self.namespaces = NamespaceTable(units, default_namespace)
        self.metrics = metrics
        # Read by call_boundary: whether ids made here go back to the caller too.
        self.echo_generated_ids = echo_generated_ids
        # Every call passes it (call_boundary); it holds calls at the end of a shutdown.
        self.gate = CallGate()

    def _check_batch_namespaces(self, batch: pb.RecommendBatchRequest, unit: Served) -> None:
        """A batch is answered in its own namespace: a request in it naming another is
        refused rather than answered from the wrong catalogue."""
        for i, request in enumerate(batch.requests):
            if (
                request.namespace
                and self.namespaces.pick(request.namespace, f"requests[{i}].namespace") is not unit
            ):
                raise InvalidArgument(
                    f"requests[{i}].namespace",
                    f"{request.namespace[:80]!r} is not the batch's namespace (leave it empty)",
                )

    @call_boundary
    async def Recommend(
        self,
        request: pb.RecommendRequest,
        context: Context[pb.RecommendRequest, pb.RecommendResponse],
    ) -> pb.RecommendResponse:
        unit = self.namespaces.pick(request.namespace)
        query = convert.recommend_query_from_pb(request)
        result = await unit.service.recommend(query, context.time_remaining())
        return convert.recommendation_to_pb(result)

    @call_boundary
    async def RecommendBatch(
        self,
        request: pb.RecommendBatchRequest,
        context: Context[pb.RecommendBatchRequest, pb.RecommendBatchResponse],
    ) -> pb.RecommendBatchResponse:
        unit = self.namespaces.pick(request.namespace)
        self._check_batch_namespaces(request, unit)
        queries = [convert.recommend_query_from_pb(r) for r in request.requests]
        # Each slice converted and serialized on a worker thread, the parts joined: repeated
        # fields concatenate on the wire. Up to 1,000 x 1,000 items would otherwise hold the
        # event loop for long (api.handlers passes the bytes through).
        parts: list[bytes] = []
        async for part in unit.service.recommend_batch_slices(queries, context.time_remaining()):
            parts.append(await asyncio.to_thread(convert.serialized_batch_part, part))
        return b"".join(parts)  # type: ignore[return-value]

    @call_boundary
    async def SimilarItems(
        self,
        request: pb.SimilarItemsRequest,
        context: Context[pb.SimilarItemsRequest, pb.SimilarItemsResponse],
    ) -> pb.SimilarItemsResponse:
        unit = self.namespaces.pick(request.namespace)
        query = convert.similar_query_from_pb(request)
        return convert.similar_items_to_pb(await unit.service.similar_items(query))

    @call_boundary
    async def GetModelInfo(
        self,
        request: pb.GetModelInfoRequest,
        context: Context[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        unit = self.namespaces.pick(request.namespace)
        model = unit.service.current().model
        arms = unit.service.arms
        return convert.model_info_to_pb(
            model.info,
            unit.service.rules_version,
            unit.namespace,
            model_memory_bytes(model),
            arms.models.memory() if arms is not None else (0, 0),
        )

    @call_boundary
    async def RecordInteractions(
        self,
        request: pb.RecordInteractionsRequest,
        context: Context[pb.RecordInteractionsRequest, pb.RecordInteractionsResponse],
    ) -> pb.RecordInteractionsResponse:
        unit = self.namespaces.pick(request.namespace)
        raw = convert.interactions_from_pb(request)
        result = await unit.service.record(raw, context.time_remaining())
        return pb.RecordInteractionsResponse(
            accepted=len(result.accepted), duplicates=result.duplicates
        )

    @call_boundary
    async def SearchByImage(
        self,
        request: pb.SearchByImageRequest,
        context: Context[pb.SearchByImageRequest, pb.SearchByImageResponse],
    ) -> pb.SearchByImageResponse:
        unit = self.namespaces.pick(request.namespace)
        image, query = convert.image_query_from_pb(request)
        result = await unit.items.search_by_image(image, query)
        return pb.SearchByImageResponse(
            items=convert.similar_items_to_pb(result).items, model_version=result.model_version
        )

    @call_boundary
    async def RecommendFromExamples(
        self,
        request: pb.RecommendFromExamplesRequest,
        context: Context[pb.RecommendFromExamplesRequest, pb.RecommendFromExamplesResponse],
    ) -> pb.RecommendFromExamplesResponse:
        unit = self.namespaces.pick(request.namespace)
        query = convert.examples_query_from_pb(request)
        result = await unit.items.recommend_from_examples(query)
        return pb.RecommendFromExamplesResponse(
            items=convert.similar_items_to_pb(result).items, model_version=result.model_version
        )

    @call_boundary
    async def UpsertItems(
        self,
        request: pb.UpsertItemsRequest,
        context: Context[pb.UpsertItemsRequest, pb.UpsertItemsResponse],
    ) -> pb.UpsertItemsResponse:
        unit = self.namespaces.pick(request.namespace)
        created, updated = await unit.items.upsert(convert.raw_items_from_pb(request))
        return pb.UpsertItemsResponse(created=created, updated=updated)

    @call_boundary
    async def DeleteItems(
        self,
        request: pb.DeleteItemsRequest,
        context: Context[pb.DeleteItemsRequest, pb.DeleteItemsResponse],
    ) -> pb.DeleteItemsResponse:
        unit = self.namespaces.pick(request.namespace)
        deleted, not_found = await unit.items.delete(list(request.item_ids))
        return pb.DeleteItemsResponse(deleted=deleted, not_found=not_found)

    @call_boundary
    async def ForgetUser(
        self,
        request: pb.ForgetUserRequest,
        context: Context[pb.ForgetUserRequest, pb.ForgetUserResponse],
    ) -> pb.ForgetUserResponse:
        unit = self.namespaces.pick(request.namespace)
        found = await unit.service.forget_user(request.user_id, context.time_remaining())
        return pb.ForgetUserResponse(found=found)
