"""Conversion between protobuf messages and domain objects, in both directions.

The domain never sees a ``*_pb2`` type; this module is the only place that knows both sides.
"""

from __future__ import annotations

from typing import Any

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc.core.examples import Example, ExamplesQuery
from recsvc.core.interactions import RawInteraction
from recsvc.core.items import RawItem
from recsvc.core.model import IndexFacts, ModelInfo
from recsvc.core.queries import (
    CategoryFilter,
    ImageQuery,
    Reason,
    ReasonKind,
    Recommendation,
    RecommendQuery,
    ScoredItem,
    SimilarItems,
    SimilarityMode,
    SimilarQuery,
    Strategy,
)
from recsvc.core.state import EventType
from recsvc.errors import InvalidArgument

_STRATEGY_TO_PB = {
    Strategy.PERSONALISED: pb.STRATEGY_PERSONALISED,
    Strategy.SESSION: pb.STRATEGY_SESSION,
    Strategy.POPULAR: pb.STRATEGY_POPULAR,
}
_STRATEGY_FROM_PB = {value: key for key, value in _STRATEGY_TO_PB.items()}
_MODE_FROM_PB = {
    pb.SIMILARITY_MODE_UNSPECIFIED: SimilarityMode.COLLABORATIVE,
    pb.SIMILARITY_MODE_COLLABORATIVE: SimilarityMode.COLLABORATIVE,
    pb.SIMILARITY_MODE_VISUAL: SimilarityMode.VISUAL,
    pb.SIMILARITY_MODE_HYBRID: SimilarityMode.HYBRID,
}
_MODE_TO_PB = {
    SimilarityMode.COLLABORATIVE: pb.SIMILARITY_MODE_COLLABORATIVE,
    SimilarityMode.VISUAL: pb.SIMILARITY_MODE_VISUAL,
    SimilarityMode.HYBRID: pb.SIMILARITY_MODE_HYBRID,
}


# ------------------------------------------------------------------ requests: proto -> domain


_NO_CATEGORIES = CategoryFilter()


def categories_from_pb(message: pb.CategoryFilter) -> CategoryFilter:
    if not message.include and not message.exclude:
        return _NO_CATEGORIES
    return CategoryFilter(include=tuple(message.include), exclude=tuple(message.exclude))


def recommend_query_from_pb(message: pb.RecommendRequest) -> RecommendQuery:
    return RecommendQuery(
        user_id=message.user_id,
        k=message.k,
        exclude_seen=message.exclude_seen if message.HasField("exclude_seen") else True,
        exclude_item_ids=tuple(message.exclude_item_ids),
        recent_item_ids=tuple(message.recent_item_ids),
        categories=categories_from_pb(message.categories),
        diversity=message.diversity,
        filter=message.filter,
        context=dict(message.context) if message.context else {},
        explain=message.explain,
        popularity_discount=(
            message.popularity_discount if message.HasField("popularity_discount") else None
        ),
        interests=message.interests,
    )


def _mode_from_pb(value: pb.SimilarityMode) -> SimilarityMode:
    mode = _MODE_FROM_PB.get(value)
    if mode is None:
        raise InvalidArgument("mode", f"unknown similarity mode {value}")
    return mode


def similar_query_from_pb(message: pb.SimilarItemsRequest) -> SimilarQuery:
    return SimilarQuery(
        item_id=message.item_id,
        k=message.k,
        mode=_mode_from_pb(message.mode),
        categories=categories_from_pb(message.categories),
        filter=message.filter,
    )


def image_query_from_pb(message: pb.SearchByImageRequest) -> tuple[bytes, ImageQuery]:
    return message.image, ImageQuery(
        k=message.k, categories=categories_from_pb(message.categories), filter=message.filter
    )


def _example_from_pb(message: pb.Example) -> Example:
    image = message.image if message.WhichOneof("example") == "image" else None
    return Example(item_id=message.item_id, image=image, weight=message.weight)


def examples_query_from_pb(message: pb.RecommendFromExamplesRequest) -> ExamplesQuery:
    return ExamplesQuery(
        positives=tuple(_example_from_pb(e) for e in message.positives),
        negatives=tuple(_example_from_pb(e) for e in message.negatives),
        k=message.k,
        mode=_mode_from_pb(message.mode),
        categories=categories_from_pb(message.categories),
        filter=message.filter,
        exclude_item_ids=tuple(message.exclude_item_ids),
    )


def raw_items_from_pb(message: pb.UpsertItemsRequest) -> list[RawItem]:
    return [
        RawItem(
            item_id=item.item_id,
            category=item.category,
            attributes=dict(item.attributes),
            image_bytes=item.image_bytes if item.WhichOneof("image") == "image_bytes" else None,
            image_path=item.image_path if item.WhichOneof("image") == "image_path" else None,
            available=item.available if item.HasField("available") else None,
        )
        for item in message.items
    ]


_EVENT_FROM_PB = {
    pb.EVENT_TYPE_UNSPECIFIED: EventType.VIEW,
    pb.EVENT_TYPE_VIEW: EventType.VIEW,
    pb.EVENT_TYPE_CLICK: EventType.CLICK,
    pb.EVENT_TYPE_CART: EventType.CART,
    pb.EVENT_TYPE_PURCHASE: EventType.PURCHASE,
    pb.EVENT_TYPE_RATING: EventType.RATING,
    pb.EVENT_TYPE_DISLIKE: EventType.DISLIKE,
    pb.EVENT_TYPE_IMPRESSION: EventType.IMPRESSION,
}
_EVENT_TO_PB = {value: key for key, value in _EVENT_FROM_PB.items() if key}


def interactions_from_pb(message: pb.RecordInteractionsRequest) -> list[RawInteraction]:
    return [
        RawInteraction(
            user_id=i.user_id,
            item_id=i.item_id,
            event_type=_EVENT_FROM_PB.get(i.event_type),
            weight=i.weight if i.HasField("weight") else None,
            timestamp_ms=i.timestamp_ms,
            event_id=i.event_id,
            recommendation_id=i.recommendation_id,
            position=i.position if i.HasField("position") else None,
        )
        for i in message.interactions
    ]


def interactions_to_pb(interactions: list[RawInteraction]) -> pb.RecordInteractionsRequest:
    return pb.RecordInteractionsRequest(
        interactions=[
            pb.Interaction(
                user_id=i.user_id,
                item_id=i.item_id,
                event_type=_EVENT_TO_PB[i.event_type or EventType.VIEW],
                weight=i.weight,
                timestamp_ms=i.timestamp_ms,
                event_id=i.event_id,
                recommendation_id=i.recommendation_id,
                position=i.position,
            )
            for i in interactions
        ]
    )


# ------------------------------------------------------------------ requests: domain -> proto


def recommend_query_to_pb(query: RecommendQuery) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        user_id=query.user_id,
        k=query.k,
        exclude_seen=query.exclude_seen,
        exclude_item_ids=list(query.exclude_item_ids),
        recent_item_ids=list(query.recent_item_ids),
        categories=pb.CategoryFilter(
            include=list(query.categories.include), exclude=list(query.categories.exclude)
        ),
        diversity=query.diversity,
        filter=query.filter,
        context=dict(query.context),
        explain=query.explain,
        popularity_discount=query.popularity_discount,
        interests=query.interests,
    )


def _example_to_pb(example: Example) -> pb.Example:
    if example.image is not None:
        return pb.Example(image=example.image, weight=example.weight)
    return pb.Example(item_id=example.item_id, weight=example.weight)


def examples_query_to_pb(query: ExamplesQuery) -> pb.RecommendFromExamplesRequest:
    return pb.RecommendFromExamplesRequest(
        positives=[_example_to_pb(e) for e in query.positives],
        negatives=[_example_to_pb(e) for e in query.negatives],
        k=query.k,
        mode=_MODE_TO_PB[query.mode],
        categories=pb.CategoryFilter(
            include=list(query.categories.include), exclude=list(query.categories.exclude)
        ),
        filter=query.filter,
        exclude_item_ids=list(query.exclude_item_ids),
    )


def similar_query_to_pb(query: SimilarQuery) -> pb.SimilarItemsRequest:
    return pb.SimilarItemsRequest(
        item_id=query.item_id,
        k=query.k,
        mode=_MODE_TO_PB[query.mode],
        categories=pb.CategoryFilter(
            include=list(query.categories.include), exclude=list(query.categories.exclude)
        ),
        filter=query.filter,
    )


# ------------------------------------------------------------------ responses, both ways


def _add_items(field: Any, items: list[ScoredItem]) -> None:
    """Append ``items`` to a repeated ScoredItem field: ``add`` in place is about twice as fast
    as building the messages first (upb, 10 items: ~12 against ~23 us)."""
    add = field.add
    for item in items:
        if item.reasons:
            add(item_id=item.item_id, score=item.score, rule=item.rule, reasons=_reasons(item))
        elif item.rule:
            add(item_id=item.item_id, score=item.score, rule=item.rule)
        else:
            add(item_id=item.item_id, score=item.score)


_REASON_KIND_TO_PB = {
    ReasonKind.HISTORY_ITEM: pb.Reason.KIND_HISTORY_ITEM,
    ReasonKind.VISUAL_NEIGHBOUR: pb.Reason.KIND_VISUAL_NEIGHBOUR,
    ReasonKind.RULE: pb.Reason.KIND_RULE,
}
_REASON_KIND_FROM_PB = {value: key for key, value in _REASON_KIND_TO_PB.items()}


def _reasons(item: ScoredItem) -> list[pb.Reason]:
    return [
        pb.Reason(
            kind=_REASON_KIND_TO_PB[r.kind],
            item_id=r.item_id,
            contribution=r.contribution,
            rule=r.rule,
        )
        for r in item.reasons
    ]


def _items_from_pb(items: list[pb.ScoredItem]) -> list[ScoredItem]:
    return [
        ScoredItem(
            item.item_id,
            item.score,
            item.rule,
            tuple(
                Reason(_REASON_KIND_FROM_PB[r.kind], r.item_id, r.contribution, r.rule)
                for r in item.reasons
                if r.kind in _REASON_KIND_FROM_PB
            ),
        )
        for item in items
    ]


def recommendation_to_pb(result: Recommendation) -> pb.RecommendResponse:
    message = pb.RecommendResponse(
        model_version=result.model_version,
        strategy=_STRATEGY_TO_PB[result.strategy],
        recommendation_id=result.recommendation_id,
        experiment=result.experiment,
        arm=result.arm,
    )
    _add_items(message.items, result.items)
    return message


def add_recommendations(field: Any, results: list[Recommendation]) -> None:
    """Append ``results`` to a repeated RecommendResponse field, in place (no copies)."""
    add = field.add
    for result in results:
        message = add(
            model_version=result.model_version,
            strategy=_STRATEGY_TO_PB[result.strategy],
            recommendation_id=result.recommendation_id,
            experiment=result.experiment,
            arm=result.arm,
        )
        _add_items(message.items, result.items)


def serialized_batch_part(results: list[Recommendation]) -> bytes:
    """``results`` as the bytes of a RecommendBatchResponse holding them; the bytes of
    consecutive parts, joined, are the response holding them all."""
    message = pb.RecommendBatchResponse()
    add_recommendations(message.responses, results)
    return message.SerializeToString()


def recommendation_from_pb(message: pb.RecommendResponse) -> Recommendation:
    return Recommendation(
        items=_items_from_pb(list(message.items)),
        model_version=message.model_version,
        strategy=_STRATEGY_FROM_PB[message.strategy],
        recommendation_id=message.recommendation_id,
        experiment=message.experiment,
        arm=message.arm,
    )


def similar_items_to_pb(result: SimilarItems) -> pb.SimilarItemsResponse:
    message = pb.SimilarItemsResponse(model_version=result.model_version)
    _add_items(message.items, result.items)
    return message


def similar_items_from_pb(message: pb.SimilarItemsResponse) -> SimilarItems:
    return SimilarItems(_items_from_pb(list(message.items)), message.model_version)


def model_info_to_pb(
    info: ModelInfo,
    rules_version: str = "",
    namespace: str = "",
    memory_bytes: int = 0,
    arm_models: tuple[int, int] = (0, 0),
) -> pb.ModelInfo:
    """The model's facts, the version of the business rules in force (not the model's:
    rules change apart from it), the namespace it serves and the memory it holds, and the
    (count, memory bytes) of the models loaded for experiment arms."""
    return pb.ModelInfo(
        model_version=info.version,
        algorithm=info.algorithm,
        num_users=info.num_users,
        num_items=info.num_items,
        num_interactions=info.num_interactions,
        factors=info.factors,
        image_embedding_dim=info.image_embedding_dim,
        parameters={key: str(value) for key, value in info.parameters.items()},
        created_at_ms=info.created_at_ms,
        trained_on=info.trained_on,
        index_recall_at_10=info.index_recall_at_10,
        rules_version=rules_version,
        engine=info.engine,
        user_index=_index_info_to_pb(info.user_index),
        similar_index=_index_info_to_pb(info.similar_index) if info.similar_index else None,
        namespace=namespace,
        memory_bytes=memory_bytes,
        arm_models=arm_models[0],
        arm_memory_bytes=arm_models[1],
    )


def _index_info_to_pb(facts: IndexFacts) -> pb.IndexInfo:
    return pb.IndexInfo(
        m=facts.m,
        ef_construction=facts.ef_construction,
        ef_search=facts.ef_search,
        recall_at_10=facts.recall_at_10,
    )


def _index_facts_from_pb(message: pb.IndexInfo) -> IndexFacts:
    return IndexFacts(message.m, message.ef_construction, message.ef_search, message.recall_at_10)


def model_info_from_pb(message: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        version=message.model_version,
        algorithm=message.algorithm,
        num_users=message.num_users,
        num_items=message.num_items,
        num_interactions=message.num_interactions,
        factors=message.factors,
        parameters=dict(message.parameters),
        created_at_ms=message.created_at_ms,
        trained_on=message.trained_on,
        index_recall_at_10=message.index_recall_at_10,
        index_ef_search=message.user_index.ef_search,
        index_m=message.user_index.m,
        index_ef_construction=message.user_index.ef_construction,
        similar_index=(
            _index_facts_from_pb(message.similar_index)
            if message.HasField("similar_index")
            else None
        ),
        engine=message.engine,
        image_embedding_dim=message.image_embedding_dim,
    )
