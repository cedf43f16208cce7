"""gRPC adapters: protobuf ↔ domain objects, errors → status codes. No model logic here.

Blocking work (tokenize, ONNX, HNSW) runs in a thread pool so the grpc.aio event
loop never blocks. Unary and streaming RPCs share one error mapping
(server.errors.grpc_status_for): a unary call aborts with the status, a stream
answers that one message with `error` set and keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np

from server.catalogue import NewItem
from server.engine import Recommendation, RecommendQuery, RetrievalMode
from server.errors import DeadlineExceeded, InvalidArgument, grpc_status_for
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.serving import ServingState
from server.tracing import StageTracer

log = logging.getLogger(__name__)
T = TypeVar("T")

_MODES = {
    pb.RETRIEVAL_MODE_UNSPECIFIED: None,
    pb.RETRIEVAL_MODE_ALL_ITEMS: RetrievalMode.ALL_ITEMS,
    pb.RETRIEVAL_MODE_CLUSTER: RetrievalMode.CLUSTER,
}
# Requests of one stream processed at once (they batch with each other and with
# unary calls); more wait, and gRPC flow control then pushes back on the client.
STREAM_IN_FLIGHT = 64
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
    )


def to_response(
    request_id: str,
    result: Recommendation,
    queue_ms: float,
    total_ms: float,
    tokenize_ms: float = 0.0,
    encode_ms: float | None = None,
) -> pb.RecommendResponse:
    """RecommendResponse from a domain Recommendation."""
    return pb.RecommendResponse(
        request_id=request_id,
        clusters=[
            pb.ClusterScore(cluster_id=c.cluster_id, score=c.score, description=c.description)
            for c in result.clusters
        ],
        items=[
            pb.ScoredItem(item_id=i.item_id, score=i.score, title=i.title) for i in result.items
        ],
        bundle_version=result.bundle_version,
        timing=pb.Timing(
            queue_ms=queue_ms,
            tokenize_ms=tokenize_ms,
            encode_ms=result.timing.encode_ms if encode_ms is None else encode_ms,
            search_ms=result.timing.search_ms,
            total_ms=total_ms,
        ),
        unknown_item_ids=result.unknown_item_ids,
    )


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Implements recsys.v1.RecommenderService over a RecommenderEngine."""

    def __init__(
        self,
        state: ServingState,
        executor: Executor,
        stream_in_flight: int = STREAM_IN_FLIGHT,
        max_streams: int = 256,
        tracer: StageTracer | None = None,
    ) -> None:
        self.state = state
        self.tracer = tracer
        self.executor = executor
        self.stream_in_flight = stream_in_flight
        self.max_streams = max_streams
        self._open_streams = 0

    async def _run(self, fn: Callable[[], T]) -> tuple[T, float]:
        """Run fn in the pool; return its result and the ms it waited for a thread."""
        submitted = time.perf_counter()
        started: list[float] = []

        def timed() -> T:
            started.append(time.perf_counter())
            return fn()

        result = await asyncio.get_running_loop().run_in_executor(self.executor, timed)
        return result, (started[0] - submitted) * 1e3

    async def _recommend(
        self, request: pb.RecommendRequest, deadline: float | None = None, rpc: str = "Recommend"
    ) -> pb.RecommendResponse:
        arrived = time.perf_counter()
        arrived_ns = time.time_ns()
        # One bundle from start to end, even if a reload swaps another in meanwhile.
        loaded = self.state.current()
        engine = loaded.engine
        prepared = engine.prepare(to_query(request))
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline passed before the request was encoded")
        # Queued in this same step as current(): see MicroBatcher.enqueue.
        submitted = loaded.batcher.enqueue(prepared)
        if remaining is None:
            result, queue_ms, tokenize_ms, _ = await submitted
        else:
            # A request still queued when its deadline passes is withdrawn (wait_for
            # cancels the future; the batcher skips it), so no encoder time goes to it.
            try:
                result, queue_ms, tokenize_ms, _ = await asyncio.wait_for(submitted, remaining)
            except asyncio.TimeoutError as exc:
                raise DeadlineExceeded("deadline passed while the request was queued") from exc
        # The batch's encoder run, less the part of it that went to tokenizing.
        encode_ms = max(result.timing.encode_ms - tokenize_ms, 0.0)
        total_ms = (time.perf_counter() - arrived) * 1e3
        self.state.metrics.observe_stages(
            rpc,
            queue=queue_ms,
            tokenize=tokenize_ms,
            encode=encode_ms,
            search=result.timing.search_ms,
            total=total_ms,
        )
        if self.tracer is not None:
            self.tracer.stages(
                arrived_ns,
                [
                    ("queue", queue_ms),
                    ("tokenize", tokenize_ms),
                    ("encode", encode_ms),
                    ("search", result.timing.search_ms),
                ],
                request_id=request.request_id,
                bundle_version=result.bundle_version,
                history_length=len(request.history_item_ids) + len(request.history_texts),
                k=len(result.items),
            )
        return to_response(request.request_id, result, queue_ms, total_ms, tokenize_ms, encode_ms)

    async def _embed(self, request: pb.EmbedRequest) -> pb.EmbedResponse:
        arrived = time.perf_counter()
        texts = list(request.texts)
        loaded = self.state.current()
        loaded.engine.check_texts(texts)
        engine = loaded.engine
        # One batcher item per text: texts of concurrent calls share encoder runs.
        futures = []
        try:
            for text in texts:
                futures.append(loaded.text_batcher.enqueue(text))
        except Exception:
            for future in futures:
                future.cancel()  # the queue filled part-way: withdraw what went in
            raise
        answers = await asyncio.gather(*futures)
        vectors = np.stack([vector for vector, *_ in answers])
        queue_ms = max(answer[1] for answer in answers)
        return pb.EmbedResponse(
            request_id=request.request_id,
            embeddings=[pb.Embedding(values=v.tolist()) for v in vectors],
            dimension=int(vectors.shape[1]),
            bundle_version=engine.bundle.version,
            timing=pb.Timing(queue_ms=queue_ms, total_ms=(time.perf_counter() - arrived) * 1e3),
        )

    async def Recommend(  # noqa: N802 (gRPC method name)
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        """Unary Recommend."""
        return await _unary(
            self._recommend(request, _deadline(context)), context, self._counter("Recommend")
        )

    def _counter(self, rpc: str) -> Callable[[str], None]:
        """Counts one call of `rpc` by status code name."""
        return lambda code: self.state.metrics.requests.labels(rpc=rpc, code=code).inc()

    async def Embed(  # noqa: N802
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        """Unary Embed."""
        return await _unary(self._embed(request), context, self._counter("Embed"))

    async def RecommendStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.RecommendRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.RecommendResponse]:
        """Bidirectional Recommend: each response carries its request_id.

        Completion order by default; request order when the call's metadata sets
        `irec-ordered: true`.
        """
        if self._open_streams >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._open_streams} streams open, the limit is {self.max_streams}; retry later",
            )

        def failed(request: pb.RecommendRequest, exc: BaseException) -> pb.RecommendResponse:
            code, message = grpc_status_for(exc)
            return pb.RecommendResponse(
                request_id=request.request_id,
                error=pb.Error(code=code.value[0], message=message),
            )

        async def one(request: pb.RecommendRequest) -> pb.RecommendResponse:
            return await self._recommend(request, rpc="RecommendStream")

        ordered = _flag(context, ORDERED_METADATA)
        self._open_streams += 1
        try:
            async for response in _stream(
                request_iterator, one, failed, self.stream_in_flight, ordered
            ):
                code = grpc.StatusCode.OK.name
                if response.HasField("error"):
                    code = _code_name(response.error.code)
                self.state.metrics.requests.labels(rpc="RecommendStream", code=code).inc()
                yield response
        finally:
            self._open_streams -= 1

    async def EmbedStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.EmbedRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Bidirectional Embed."""

        def failed(request: pb.EmbedRequest, exc: BaseException) -> pb.EmbedResponse:
            code, message = grpc_status_for(exc)
            return pb.EmbedResponse(
                request_id=request.request_id,
                error=pb.Error(code=code.value[0], message=message),
            )

        async for response in _stream(request_iterator, self._embed, failed, self.stream_in_flight):
            yield response

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        """What is loaded."""
        return await _unary(self._model_info(), context)

    async def _model_info(self) -> pb.ModelInfo:
        engine = self.state.current().engine
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


class RecommenderAdminServicer(pb_grpc.RecommenderAdminServicer):
    """Implements recsys.v1.RecommenderAdmin: bundle reloads."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def ReloadBundle(  # noqa: N802
        self, request: pb.ReloadBundleRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadBundleResponse:
        """Load, verify, warm and swap in another bundle."""
        return await _unary(self._reload(request), context)

    async def AddItems(  # noqa: N802
        self, request: pb.AddItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddItemsResponse:
        """Embed and index new items."""
        return await _unary(self._add_items(request), context)

    async def RemoveItems(  # noqa: N802
        self, request: pb.RemoveItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveItemsResponse:
        """Stop recommending items."""
        return await _unary(self._remove_items(request), context)

    async def _add_items(self, request: pb.AddItemsRequest) -> pb.AddItemsResponse:
        engine = self.state.current().engine
        items = [NewItem(i.item_id, i.title or i.item_id, i.text) for i in request.items]
        if not items:
            raise InvalidArgument("items", "empty: give at least one item")
        loop = asyncio.get_running_loop()
        added = await loop.run_in_executor(None, engine.catalogue.add, items)
        return pb.AddItemsResponse(added=added, num_items=engine.num_items)

    async def _remove_items(self, request: pb.RemoveItemsRequest) -> pb.RemoveItemsResponse:
        engine = self.state.current().engine
        ids = list(request.item_ids)
        if not ids:
            raise InvalidArgument("item_ids", "empty: give at least one item ID")
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, engine.catalogue.remove, ids)
        return pb.RemoveItemsResponse(removed=removed, num_items=engine.num_items)

    async def _reload(self, request: pb.ReloadBundleRequest) -> pb.ReloadBundleResponse:
        if not request.path.strip():
            raise InvalidArgument("path", "empty: give the bundle folder")
        new, old, load_ms = await self.state.load(Path(request.path))
        return pb.ReloadBundleResponse(
            bundle_version=new.version,
            previous_bundle_version=old.version if old else "",
            load_ms=load_ms,
        )


def _flag(context: grpc.aio.ServicerContext, key: str) -> bool:
    """Whether the call's metadata sets `key` to a true value."""
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value).lower() in ("1", "true", "yes")
    return False


def _code_name(value: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), "UNKNOWN")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the perf_counter clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.perf_counter() + remaining


async def _unary(
    work: Awaitable[T],
    context: grpc.aio.ServicerContext,
    count: Callable[[str], None] | None = None,
) -> T:
    """Await the work; map any error through the one table and abort with it."""
    try:
        result = await work
    except asyncio.CancelledError:
        if count is not None:
            count(grpc.StatusCode.CANCELLED.name)
        raise
    except Exception as exc:
        code, message = grpc_status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        if count is not None:
            count(code.name)
        await context.abort(code, message)
        raise  # unreachable: abort raises
    if count is not None:
        count(grpc.StatusCode.OK.name)
    return result


Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _stream(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], Awaitable[Resp]],
    failed: Callable[[Req, BaseException], Resp],
    in_flight: int = STREAM_IN_FLIGHT,
    ordered: bool = False,
) -> AsyncIterator[Resp]:
    """Process up to `in_flight` requests of a stream at once.

    Responses come in completion order, or in request order when `ordered`. A slot is
    freed only when its response has been handed to gRPC, so a slow reader holds at
    most `in_flight` responses in memory (flow control does the rest).
    """
    done: asyncio.Queue[tuple[int, Resp] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def one(sequence: int, request: Req) -> None:
        try:
            response = await handle(request)
        except Exception as exc:
            if grpc_status_for(exc)[0] is grpc.StatusCode.INTERNAL:
                log.exception("internal error in stream")
            response = failed(request, exc)
        await done.put((sequence, response))

    async def feed() -> None:
        try:
            sequence = 0
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(one(sequence, request))
                sequence += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
        finally:
            await done.put(None)

    feeder = asyncio.create_task(feed())
    waiting: dict[int, Resp] = {}
    next_out = 0
    try:
        while (item := await done.get()) is not None:
            if not ordered:
                slots.release()
                yield item[1]
                continue
            waiting[item[0]] = item[1]
            while next_out in waiting:
                slots.release()
                yield waiting.pop(next_out)
                next_out += 1
    finally:
        feeder.cancel()
        for task in list(tasks):
            task.cancel()
