"""recsys.v1 over gRPC: protobuf ↔ domain objects, nothing else.

Every request goes to server.core.dispatch (deadlines, admission, batching, workers, metrics,
tracing); errors map to status codes through server.grpc.calls: a unary call aborts, a
stream answers that one message with `error` set and keeps going.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from server.core.catalogue import NewItem
from server.core.dispatch import Dispatcher, Embedded, Recommended
from server.core.engine import RecommenderEngine, RecommendQuery, RetrievalMode, ScoredItem
from server.errors import grpc_status_for
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.grpc.calls import deadline_of, metadata_flag, streamed, unary

_MODES = {
    pb.RETRIEVAL_MODE_UNSPECIFIED: None,
    pb.RETRIEVAL_MODE_ALL_ITEMS: RetrievalMode.ALL_ITEMS,
    pb.RETRIEVAL_MODE_CLUSTER: RetrievalMode.CLUSTER,
}
# Stream metadata asking for responses in request order (default: completion order).
ORDERED_METADATA = "irec-ordered"


def to_query(request: pb.RecommendRequest) -> RecommendQuery:
    """Domain query from a RecommendRequest."""
    return RecommendQuery(
        history_item_ids=list(request.history_item_ids),
        history_texts=list(request.history_texts),
        k=request.k,
        include_seen_items=request.include_seen_items,
        mode=_MODES.get(request.mode),
        num_clusters=request.num_clusters,
        num_interests=request.num_interests,
    )


def to_response(request_id: str, answer: Recommended) -> pb.RecommendResponse:
    """RecommendResponse from a dispatched Recommendation and its stage times."""
    result = answer.recommendation
    return pb.RecommendResponse(
        request_id=request_id,
        clusters=[
            pb.ClusterScore(cluster_id=c.cluster_id, score=c.score, description=c.description)
            for c in result.clusters
        ],
        items=[_scored(i) for i in result.items],
        bundle_version=result.bundle_version,
        timing=pb.Timing(
            queue_ms=answer.queue_ms,
            tokenize_ms=answer.tokenize_ms,
            encode_ms=answer.encode_ms,
            search_ms=result.timing.search_ms,
            total_ms=answer.total_ms,
        ),
        unknown_item_ids=result.unknown_item_ids,
        interests=[
            pb.Interest(
                cluster_id=i.cluster_id,
                description=i.description,
                weight=i.weight,
                items=[
                    pb.ScoredItem(item_id=s.item_id, score=s.score, title=s.title) for s in i.items
                ],
                because_item_ids=i.because_item_ids,
            )
            for i in result.interests
        ],
    )


def _scored(item: ScoredItem) -> pb.ScoredItem:
    return pb.ScoredItem(item_id=item.item_id, score=item.score, title=item.title)


def to_embed_response(request_id: str, answer: Embedded) -> pb.EmbedResponse:
    """EmbedResponse from dispatched vectors."""
    return pb.EmbedResponse(
        request_id=request_id,
        embeddings=[pb.Embedding(values=v.tolist()) for v in answer.vectors],
        dimension=int(answer.vectors.shape[1]),
        bundle_version=answer.bundle_version,
        timing=pb.Timing(queue_ms=answer.queue_ms, total_ms=answer.total_ms),
    )


def _error(exc: BaseException) -> pb.Error:
    """The `error` of a stream response for a message that failed."""
    code, message = grpc_status_for(exc)
    return pb.Error(code=code.value[0], message=message)


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Implements recsys.v1.RecommenderService over the dispatch layer."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch

    async def _recommend(
        self, request: pb.RecommendRequest, rpc: str, deadline: float | None = None
    ) -> pb.RecommendResponse:
        answer = await self.dispatch.recommend(
            to_query(request), rpc, deadline, request_id=request.request_id
        )
        return to_response(request.request_id, answer)

    async def _embed(
        self, request: pb.EmbedRequest, rpc: str, deadline: float | None = None
    ) -> pb.EmbedResponse:
        answer = await self.dispatch.embed(list(request.texts), rpc, deadline)
        return to_embed_response(request.request_id, answer)

    async def Recommend(  # noqa: N802 (gRPC method name)
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        """Unary Recommend."""
        return await unary(self._recommend(request, "Recommend", deadline_of(context)), context)

    async def Embed(  # noqa: N802
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        """Unary Embed."""
        return await unary(self._embed(request, "Embed", deadline_of(context)), context)

    async def RecommendStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.RecommendRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.RecommendResponse]:
        """Bidirectional Recommend: each response carries its request_id.

        Completion order by default; request order when the call's metadata sets
        `irec-ordered: true`.
        """

        async def one(request: pb.RecommendRequest) -> pb.RecommendResponse:
            return await self._recommend(request, "RecommendStream")

        def failed(request: pb.RecommendRequest, exc: BaseException) -> pb.RecommendResponse:
            return pb.RecommendResponse(request_id=request.request_id, error=_error(exc))

        responses = self.dispatch.stream(
            request_iterator, one, failed, metadata_flag(context, ORDERED_METADATA)
        )
        async for response in streamed(responses, context):
            yield response

    async def EmbedStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.EmbedRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Bidirectional Embed."""

        async def one(request: pb.EmbedRequest) -> pb.EmbedResponse:
            return await self._embed(request, "EmbedStream")

        def failed(request: pb.EmbedRequest, exc: BaseException) -> pb.EmbedResponse:
            return pb.EmbedResponse(request_id=request.request_id, error=_error(exc))

        async for response in streamed(
            self.dispatch.stream(request_iterator, one, failed), context
        ):
            yield response

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        """What is loaded."""
        return await unary(self._model_info(), context)

    async def _model_info(self) -> pb.ModelInfo:
        engine = self.dispatch.current().engine
        bundle = engine.bundle
        manifest = bundle.manifest
        return pb.ModelInfo(
            bundle_version=manifest.bundle_version,
            model_name=manifest.model_name,
            dimension=manifest.dimension,
            num_items=engine.num_items,
            clusters=[
                pb.ClusterInfo(
                    cluster_id=c.cluster_id,
                    description=c.description,
                    size=c.size,
                    num_items=len(c.item_rows),
                )
                for c in bundle.clusters
            ],
            quantization=manifest.quantization,
            encoder_variant=bundle.encoder.variant,
            providers=bundle.encoder.providers,
            max_k=engine.max_k,
            max_sequence_length=manifest.max_sequence_length,
            created_at=manifest.created_at,
        )

    async def ListClusters(  # noqa: N802
        self, request: pb.ListClustersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListClustersResponse:
        """Every interest cluster with its description, size and top items."""
        return await unary(self._list_clusters(request.top_items), context)

    async def _list_clusters(self, top_items: int) -> pb.ListClustersResponse:
        return list_clusters_response(self.dispatch.current().engine, top_items)


def list_clusters_response(engine: RecommenderEngine, top_items: int) -> pb.ListClustersResponse:
    """ListClusters' answer from an engine (the server's, or `irec clusters --bundle`'s)."""
    return pb.ListClustersResponse(
        bundle_version=engine.bundle.manifest.bundle_version,
        clusters=[
            pb.ClusterInfo(
                cluster_id=c.cluster_id,
                description=c.description,
                size=c.size,
                num_items=c.num_items,
                top_items=[pb.ClusterItem(item_id=i, title=t) for i, t in c.top_items],
            )
            for c in engine.list_clusters(top_items)
        ],
    )


class RecommenderAdminServicer(pb_grpc.RecommenderAdminServicer):
    """Implements recsys.v1.RecommenderAdmin: bundle reloads and catalogue updates."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch

    async def ReloadBundle(  # noqa: N802
        self, request: pb.ReloadBundleRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadBundleResponse:
        """Load, verify, warm and swap in another bundle."""
        return await unary(self._reload(request), context)

    async def AddItems(  # noqa: N802
        self, request: pb.AddItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddItemsResponse:
        """Embed and index new items."""
        return await unary(self._add_items(request), context)

    async def RemoveItems(  # noqa: N802
        self, request: pb.RemoveItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveItemsResponse:
        """Stop recommending items."""
        return await unary(self._remove_items(request), context)

    async def _add_items(self, request: pb.AddItemsRequest) -> pb.AddItemsResponse:
        items = [NewItem(i.item_id, i.title or i.item_id, i.text) for i in request.items]
        added, num_items = await self.dispatch.add_items(items)
        return pb.AddItemsResponse(added=added, num_items=num_items)

    async def _remove_items(self, request: pb.RemoveItemsRequest) -> pb.RemoveItemsResponse:
        removed, num_items = await self.dispatch.remove_items(list(request.item_ids))
        return pb.RemoveItemsResponse(removed=removed, num_items=num_items)

    async def _reload(self, request: pb.ReloadBundleRequest) -> pb.ReloadBundleResponse:
        new, old, load_ms = await self.dispatch.reload(request.path)
        return pb.ReloadBundleResponse(
            bundle_version=new.version,
            previous_bundle_version=old.version if old else "",
            load_ms=load_ms,
        )
