"""The Recommender servicer: convert, call the domain, convert back. No logic lives here."""

from __future__ import annotations

import asyncio

import grpc

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api import convert
from recsvc.api.boundary import call_boundary
from recsvc.api.gate import CallGate
from recsvc.core.items import ItemService
from recsvc.core.service import RecommendationService
from recsvc.metrics import Metrics

Context = grpc.aio.ServicerContext


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """gRPC front of :class:`RecommendationService` and :class:`ItemService`."""

    def __init__(
        self,
        service: RecommendationService,
        items: ItemService,
        metrics: Metrics | None = None,
        echo_generated_ids: bool = False,
    ) -> None:
        self._service = service
        self._items = items
        self.metrics = metrics
        # Read by call_boundary: whether ids made here go back to the caller too.
        self.echo_generated_ids = echo_generated_ids
        # Every call passes it (call_boundary); it holds calls at the end of a shutdown.
        self.gate = CallGate()

    @call_boundary
    async def Recommend(
        self,
        request: pb.RecommendRequest,
        context: Context[pb.RecommendRequest, pb.RecommendResponse],
    ) -> pb.RecommendResponse:
        query = convert.recommend_query_from_pb(request)
        result = await self._service.recommend(query, context.time_remaining())
        return convert.recommendation_to_pb(result)

    @call_boundary
    async def RecommendBatch(
        self,
        request: pb.RecommendBatchRequest,
        context: Context[pb.RecommendBatchRequest, pb.RecommendBatchResponse],
    ) -> pb.RecommendBatchResponse:
        queries = [convert.recommend_query_from_pb(r) for r in request.requests]
        # Each slice converted and serialized on a worker thread, the parts joined: repeated
        # fields concatenate on the wire. Up to 1,000 x 1,000 items would otherwise hold the
        # event loop for long (api.handlers passes the bytes through).
        parts: list[bytes] = []
        async for part in self._service.recommend_batch_slices(queries, context.time_remaining()):
            parts.append(await asyncio.to_thread(convert.serialized_batch_part, part))
        return b"".join(parts)  # type: ignore[return-value]

    @call_boundary
    async def SimilarItems(
        self,
        request: pb.SimilarItemsRequest,
        context: Context[pb.SimilarItemsRequest, pb.SimilarItemsResponse],
    ) -> pb.SimilarItemsResponse:
        query = convert.similar_query_from_pb(request)
        return convert.similar_items_to_pb(await self._service.similar_items(query))

    @call_boundary
    async def GetModelInfo(
        self,
        request: pb.GetModelInfoRequest,
        context: Context[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        info = self._service.current().model.info
        return convert.model_info_to_pb(info, self._service.rules_version)

    @call_boundary
    async def RecordInteractions(
        self,
        request: pb.RecordInteractionsRequest,
        context: Context[pb.RecordInteractionsRequest, pb.RecordInteractionsResponse],
    ) -> pb.RecordInteractionsResponse:
        raw = convert.interactions_from_pb(request)
        result = await self._service.record(raw, context.time_remaining())
        return pb.RecordInteractionsResponse(
            accepted=len(result.accepted), duplicates=result.duplicates
        )

    @call_boundary
    async def SearchByImage(
        self,
        request: pb.SearchByImageRequest,
        context: Context[pb.SearchByImageRequest, pb.SearchByImageResponse],
    ) -> pb.SearchByImageResponse:
        image, query = convert.image_query_from_pb(request)
        result = await self._items.search_by_image(image, query)
        return pb.SearchByImageResponse(
            items=convert.similar_items_to_pb(result).items, model_version=result.model_version
        )

    @call_boundary
    async def RecommendFromExamples(
        self,
        request: pb.RecommendFromExamplesRequest,
        context: Context[pb.RecommendFromExamplesRequest, pb.RecommendFromExamplesResponse],
    ) -> pb.RecommendFromExamplesResponse:
        query = convert.examples_query_from_pb(request)
        result = await self._items.recommend_from_examples(query)
        return pb.RecommendFromExamplesResponse(
            items=convert.similar_items_to_pb(result).items, model_version=result.model_version
        )

    @call_boundary
    async def UpsertItems(
        self,
        request: pb.UpsertItemsRequest,
        context: Context[pb.UpsertItemsRequest, pb.UpsertItemsResponse],
    ) -> pb.UpsertItemsResponse:
        created, updated = await self._items.upsert(convert.raw_items_from_pb(request))
        return pb.UpsertItemsResponse(created=created, updated=updated)

    @call_boundary
    async def DeleteItems(
        self,
        request: pb.DeleteItemsRequest,
        context: Context[pb.DeleteItemsRequest, pb.DeleteItemsResponse],
    ) -> pb.DeleteItemsResponse:
        deleted, not_found = await self._items.delete(list(request.item_ids))
        return pb.DeleteItemsResponse(deleted=deleted, not_found=not_found)

    @call_boundary
    async def ForgetUser(
        self,
        request: pb.ForgetUserRequest,
        context: Context[pb.ForgetUserRequest, pb.ForgetUserResponse],
    ) -> pb.ForgetUserResponse:
        found = await self._service.forget_user(request.user_id, context.time_remaining())
        return pb.ForgetUserResponse(found=found)
