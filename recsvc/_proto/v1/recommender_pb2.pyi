from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_PERSONALISED: _ClassVar[Strategy]
    STRATEGY_SESSION: _ClassVar[Strategy]
    STRATEGY_POPULAR: _ClassVar[Strategy]

class SimilarityMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIMILARITY_MODE_UNSPECIFIED: _ClassVar[SimilarityMode]
    SIMILARITY_MODE_COLLABORATIVE: _ClassVar[SimilarityMode]
    SIMILARITY_MODE_VISUAL: _ClassVar[SimilarityMode]
    SIMILARITY_MODE_HYBRID: _ClassVar[SimilarityMode]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_RATING: _ClassVar[EventType]
    EVENT_TYPE_DISLIKE: _ClassVar[EventType]
    EVENT_TYPE_IMPRESSION: _ClassVar[EventType]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_PERSONALISED: Strategy
STRATEGY_SESSION: Strategy
STRATEGY_POPULAR: Strategy
SIMILARITY_MODE_UNSPECIFIED: SimilarityMode
SIMILARITY_MODE_COLLABORATIVE: SimilarityMode
SIMILARITY_MODE_VISUAL: SimilarityMode
SIMILARITY_MODE_HYBRID: SimilarityMode
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_RATING: EventType
EVENT_TYPE_DISLIKE: EventType
EVENT_TYPE_IMPRESSION: EventType

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "rule", "reasons")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    rule: str
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., rule: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("kind", "item_id", "contribution", "rule")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Reason.Kind]
        KIND_HISTORY_ITEM: _ClassVar[Reason.Kind]
        KIND_VISUAL_NEIGHBOUR: _ClassVar[Reason.Kind]
        KIND_RULE: _ClassVar[Reason.Kind]
    KIND_UNSPECIFIED: Reason.Kind
    KIND_HISTORY_ITEM: Reason.Kind
    KIND_VISUAL_NEIGHBOUR: Reason.Kind
    KIND_RULE: Reason.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    kind: Reason.Kind
    item_id: str
    contribution: float
    rule: str
    def __init__(self, kind: _Optional[_Union[Reason.Kind, str]] = ..., item_id: _Optional[str] = ..., contribution: _Optional[float] = ..., rule: _Optional[str] = ...) -> None: ...

class CategoryFilter(_message.Message):
    __slots__ = ("include", "exclude")
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    include: _containers.RepeatedScalarFieldContainer[str]
    exclude: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, include: _Optional[_Iterable[str]] = ..., exclude: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "exclude_seen", "exclude_item_ids", "recent_item_ids", "categories", "diversity", "filter", "context", "explain", "popularity_discount", "interests", "namespace")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    exclude_seen: bool
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    categories: CategoryFilter
    diversity: float
    filter: str
    context: _containers.ScalarMap[str, str]
    explain: bool
    popularity_discount: float
    interests: int
    namespace: str
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., categories: _Optional[_Union[CategoryFilter, _Mapping]] = ..., diversity: _Optional[float] = ..., filter: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., explain: _Optional[bool] = ..., popularity_discount: _Optional[float] = ..., interests: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "strategy", "recommendation_id", "experiment", "arm")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    strategy: Strategy
    recommendation_id: str
    experiment: str
    arm: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., recommendation_id: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("requests", "namespace")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    namespace: str
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ..., namespace: _Optional[str] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "mode", "categories", "filter", "namespace")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    mode: SimilarityMode
    categories: CategoryFilter
    filter: str
    namespace: str
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., mode: _Optional[_Union[SimilarityMode, str]] = ..., categories: _Optional[_Union[CategoryFilter, _Mapping]] = ..., filter: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("item_id", "image", "weight")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    image: bytes
    weight: float
    def __init__(self, item_id: _Optional[str] = ..., image: _Optional[bytes] = ..., weight: _Optional[float] = ...) -> None: ...

class RecommendFromExamplesRequest(_message.Message):
    __slots__ = ("positives", "negatives", "k", "mode", "categories", "filter", "exclude_item_ids", "namespace")
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    positives: _containers.RepeatedCompositeFieldContainer[Example]
    negatives: _containers.RepeatedCompositeFieldContainer[Example]
    k: int
    mode: SimilarityMode
    categories: CategoryFilter
    filter: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    namespace: str
    def __init__(self, positives: _Optional[_Iterable[_Union[Example, _Mapping]]] = ..., negatives: _Optional[_Iterable[_Union[Example, _Mapping]]] = ..., k: _Optional[int] = ..., mode: _Optional[_Union[SimilarityMode, str]] = ..., categories: _Optional[_Union[CategoryFilter, _Mapping]] = ..., filter: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., namespace: _Optional[str] = ...) -> None: ...

class RecommendFromExamplesResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SearchByImageRequest(_message.Message):
    __slots__ = ("image", "k", "categories", "filter", "namespace")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    k: int
    categories: CategoryFilter
    filter: str
    namespace: str
    def __init__(self, image: _Optional[bytes] = ..., k: _Optional[int] = ..., categories: _Optional[_Union[CategoryFilter, _Mapping]] = ..., filter: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class SearchByImageResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "weight", "timestamp_ms", "event_id", "recommendation_id", "position")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: EventType
    weight: float
    timestamp_ms: int
    event_id: str
    recommendation_id: str
    position: int
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., weight: _Optional[float] = ..., timestamp_ms: _Optional[int] = ..., event_id: _Optional[str] = ..., recommendation_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions", "namespace")
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    namespace: str
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ..., namespace: _Optional[str] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "category", "attributes", "image_bytes", "image_path", "available")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    category: str
    attributes: _containers.ScalarMap[str, str]
    image_bytes: bytes
    image_path: str
    available: bool
    def __init__(self, item_id: _Optional[str] = ..., category: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., image_bytes: _Optional[bytes] = ..., image_path: _Optional[str] = ..., available: _Optional[bool] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items", "namespace")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    namespace: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., namespace: _Optional[str] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("created", "updated")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    created: int
    updated: int
    def __init__(self, created: _Optional[int] = ..., updated: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids", "namespace")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    namespace: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., namespace: _Optional[str] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted", "not_found")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: int
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[int] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id", "namespace")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    namespace: str
    def __init__(self, user_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "algorithm", "num_users", "num_items", "num_interactions", "factors", "image_embedding_dim", "parameters", "created_at_ms", "trained_on", "index_recall_at_10", "rules_version", "engine", "user_index", "similar_index", "namespace", "memory_bytes", "arm_models", "arm_memory_bytes")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    NUM_USERS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NUM_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    INDEX_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    RULES_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    USER_INDEX_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_INDEX_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARM_MODELS_FIELD_NUMBER: _ClassVar[int]
    ARM_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    algorithm: str
    num_users: int
    num_items: int
    num_interactions: int
    factors: int
    image_embedding_dim: int
    parameters: _containers.ScalarMap[str, str]
    created_at_ms: int
    trained_on: str
    index_recall_at_10: float
    rules_version: str
    engine: str
    user_index: IndexInfo
    similar_index: IndexInfo
    namespace: str
    memory_bytes: int
    arm_models: int
    arm_memory_bytes: int
    def __init__(self, model_version: _Optional[str] = ..., algorithm: _Optional[str] = ..., num_users: _Optional[int] = ..., num_items: _Optional[int] = ..., num_interactions: _Optional[int] = ..., factors: _Optional[int] = ..., image_embedding_dim: _Optional[int] = ..., parameters: _Optional[_Mapping[str, str]] = ..., created_at_ms: _Optional[int] = ..., trained_on: _Optional[str] = ..., index_recall_at_10: _Optional[float] = ..., rules_version: _Optional[str] = ..., engine: _Optional[str] = ..., user_index: _Optional[_Union[IndexInfo, _Mapping]] = ..., similar_index: _Optional[_Union[IndexInfo, _Mapping]] = ..., namespace: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., arm_models: _Optional[int] = ..., arm_memory_bytes: _Optional[int] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search", "recall_at_10")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    recall_at_10: float
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ..., recall_at_10: _Optional[float] = ...) -> None: ...
