from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrievalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_MODE_UNSPECIFIED: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_ALL_ITEMS: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_CLUSTER: _ClassVar[RetrievalMode]
RETRIEVAL_MODE_UNSPECIFIED: RetrievalMode
RETRIEVAL_MODE_ALL_ITEMS: RetrievalMode
RETRIEVAL_MODE_CLUSTER: RetrievalMode

class NewItem(_message.Message):
    __slots__ = ("item_id", "title", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    text: str
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class AddItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NewItem]
    def __init__(self, items: _Optional[_Iterable[_Union[NewItem, _Mapping]]] = ...) -> None: ...

class AddItemsResponse(_message.Message):
    __slots__ = ("added", "num_items")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    added: int
    num_items: int
    def __init__(self, added: _Optional[int] = ..., num_items: _Optional[int] = ...) -> None: ...

class RemoveItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveItemsResponse(_message.Message):
    __slots__ = ("removed", "num_items")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    removed: int
    num_items: int
    def __init__(self, removed: _Optional[int] = ..., num_items: _Optional[int] = ...) -> None: ...

class ReloadBundleRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ReloadBundleResponse(_message.Message):
    __slots__ = ("bundle_version", "previous_bundle_version", "load_ms")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    previous_bundle_version: str
    load_ms: float
    def __init__(self, bundle_version: _Optional[str] = ..., previous_bundle_version: _Optional[str] = ..., load_ms: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("request_id", "history_item_ids", "history_texts", "k", "include_seen_items", "mode", "num_clusters", "num_interests")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TEXTS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    NUM_INTERESTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    history_texts: _containers.RepeatedScalarFieldContainer[str]
    k: int
    include_seen_items: bool
    mode: RetrievalMode
    num_clusters: int
    num_interests: int
    def __init__(self, request_id: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., history_texts: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., include_seen_items: _Optional[bool] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ..., num_clusters: _Optional[int] = ..., num_interests: _Optional[int] = ...) -> None: ...

class Interest(_message.Message):
    __slots__ = ("cluster_id", "description", "weight", "items", "because_item_ids")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    description: str
    weight: float
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    because_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster_id: _Optional[int] = ..., description: _Optional[str] = ..., weight: _Optional[float] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., because_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ClusterScore(_message.Message):
    __slots__ = ("cluster_id", "score", "description")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    score: float
    description: str
    def __init__(self, cluster_id: _Optional[int] = ..., score: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    title: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "encode_ms", "search_ms", "total_ms", "tokenize_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    encode_ms: float
    search_ms: float
    total_ms: float
    tokenize_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., tokenize_ms: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "clusters", "items", "bundle_version", "timing", "unknown_item_ids", "error", "interests")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterScore]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    bundle_version: str
    timing: Timing
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    error: Error
    interests: _containers.RepeatedCompositeFieldContainer[Interest]
    def __init__(self, request_id: _Optional[str] = ..., clusters: _Optional[_Iterable[_Union[ClusterScore, _Mapping]]] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., interests: _Optional[_Iterable[_Union[Interest, _Mapping]]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("request_id", "texts")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("request_id", "embeddings", "dimension", "bundle_version", "timing", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dimension: int
    bundle_version: str
    timing: Timing
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dimension: _Optional[int] = ..., bundle_version: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("cluster_id", "description", "size", "num_items", "top_items")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_ITEMS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    description: str
    size: int
    num_items: int
    top_items: _containers.RepeatedCompositeFieldContainer[ClusterItem]
    def __init__(self, cluster_id: _Optional[int] = ..., description: _Optional[str] = ..., size: _Optional[int] = ..., num_items: _Optional[int] = ..., top_items: _Optional[_Iterable[_Union[ClusterItem, _Mapping]]] = ...) -> None: ...

class ClusterItem(_message.Message):
    __slots__ = ("item_id", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class ListClustersRequest(_message.Message):
    __slots__ = ("top_items",)
    TOP_ITEMS_FIELD_NUMBER: _ClassVar[int]
    top_items: int
    def __init__(self, top_items: _Optional[int] = ...) -> None: ...

class ListClustersResponse(_message.Message):
    __slots__ = ("bundle_version", "clusters")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterInfo]
    def __init__(self, bundle_version: _Optional[str] = ..., clusters: _Optional[_Iterable[_Union[ClusterInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("bundle_version", "model_name", "dimension", "num_items", "clusters", "quantization", "providers", "max_k", "max_sequence_length", "created_at", "encoder_variant")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VARIANT_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    model_name: str
    dimension: int
    num_items: int
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterInfo]
    quantization: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    max_k: int
    max_sequence_length: int
    created_at: str
    encoder_variant: str
    def __init__(self, bundle_version: _Optional[str] = ..., model_name: _Optional[str] = ..., dimension: _Optional[int] = ..., num_items: _Optional[int] = ..., clusters: _Optional[_Iterable[_Union[ClusterInfo, _Mapping]]] = ..., quantization: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., max_k: _Optional[int] = ..., max_sequence_length: _Optional[int] = ..., created_at: _Optional[str] = ..., encoder_variant: _Optional[str] = ...) -> None: ...
