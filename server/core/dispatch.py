"""The one way from every front end to the engine: recsys.v1 unary and streams, Embed, KServe.

A front end (server.grpc.recsys_v1, server.grpc.kserve_v2) maps its wire format to domain objects
(RecommendQuery, texts) and back, and maps errors to status codes; everything a request
meets in between is here, the same for every protocol:

- **deadlines**: a request whose deadline passes while it waits is withdrawn before it
  costs encoder time (DeadlineExceeded);
- **admission**: past ``max_queue`` waiting requests the answer is Overloaded at once
  (the batchers' bounded queues); past ``max_streams`` open streams a new stream is
  refused; one stream keeps at most ``stream_in_flight`` messages in flight;
- **batching**: requests of every front end share the served bundle's micro-batchers
  (server.core.model_slot.Loaded, server.core.batcher), one for histories and one for texts;
- **workers**: the thread pool of ``workers`` threads that runs the batches, never the
  event loop;
- **metrics**: ``irec_requests_total{rpc, code}`` once per request (a stream message
  counts one) and ``irec_request_seconds{rpc, stage}``;
- **tracing**: the stage spans (queue, tokenize, encode, search) under the call's span.

It imports no protobuf and no gRPC call objects: errors are the server.errors tree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from server.config import ServerConfig
from server.core.catalogue import NewItem
from server.core.engine import Recommendation, RecommendQuery
from server.core.model_slot import Loaded, ServingState
from server.errors import DeadlineExceeded, InvalidArgument, Overloaded, status_name
from server.metrics import Metrics
from server.tracing import StageTracer

log = logging.getLogger(__name__)
T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Recommended:
    """A Recommendation and the milliseconds its request spent per stage."""

    recommendation: Recommendation
    queue_ms: float
    tokenize_ms: float
    encode_ms: float
    total_ms: float


@dataclass(frozen=True)
class Embedded:
    """Unit vectors of texts [n, dim], the bundle that made them, and the request's times."""

    vectors: np.ndarray
    bundle_version: str
    queue_ms: float
    total_ms: float


class Dispatcher:
    """Owns the worker pool and the served bundle; every request of every front end goes here."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics | None = None,
        tracer: StageTracer | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        self.executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="irec-worker"
        )
        self.state = ServingState(config, self.executor, self.metrics)
        self._open_streams = 0

    @property
    def ready(self) -> bool:
        """Whether a bundle is loaded and warmed."""
        return self.state.ready

    def current(self) -> Loaded:
        """The bundle served now (for what a front end reports about it), or Unavailable."""
        return self.state.current()

    # -- requests --------------------------------------------------------------------------

    async def recommend(
        self,
        query: RecommendQuery,
        rpc: str,
        deadline: float | None = None,
        request_id: str = "",
    ) -> Recommended:
        """Answer one query through the history batcher; `deadline` on the perf_counter clock."""
        with self._counted(rpc):
            arrived = time.perf_counter()
            arrived_ns = time.time_ns()
            # One bundle from start to end, even if a reload swaps another in meanwhile.
            loaded = self.state.current()
            prepared = loaded.engine.prepare(query)
            remaining = _remaining(deadline, "deadline passed before the request was encoded")
            # Queued in this same step as current(): see MicroBatcher.enqueue.
            submitted = loaded.batcher.enqueue(prepared)
            result, queue_ms, tokenize_ms, _ = await _within(submitted, remaining)
            # The batch's encoder run, less the part of it that went to tokenizing.
            encode_ms = max(result.timing.encode_ms - tokenize_ms, 0.0)
            total_ms = (time.perf_counter() - arrived) * 1e3
            search_ms = result.timing.search_ms
            self.metrics.observe_stages(
                rpc,
                queue=queue_ms,
                tokenize=tokenize_ms,
                encode=encode_ms,
                search=search_ms,
                total=total_ms,
            )
            if self.tracer is not None:
                self.tracer.stages(
                    arrived_ns,
                    [
                        ("queue", queue_ms),
                        ("tokenize", tokenize_ms),
                        ("encode", encode_ms),
                        ("search", search_ms),
                    ],
                    request_id=request_id,
                    bundle_version=result.bundle_version,
                    history_length=len(query.history_item_ids) + len(query.history_texts),
                    k=len(result.items),
                )
            return Recommended(result, queue_ms, tokenize_ms, encode_ms, total_ms)

    async def embed(
        self, texts: Sequence[str], rpc: str, deadline: float | None = None
    ) -> Embedded:
        """Unit vectors of `texts` through the text batcher, one batcher item per text.

        Texts of concurrent calls and streams share encoder runs.
        """
        with self._counted(rpc):
            arrived = time.perf_counter()
            arrived_ns = time.time_ns()
            loaded = self.state.current()
            loaded.engine.check_texts(texts)
            remaining = _remaining(deadline, "deadline passed before the texts were encoded")
            futures = []
            try:
                for text in texts:
                    futures.append(loaded.text_batcher.enqueue(text))
            except Exception:
                for future in futures:
                    future.cancel()  # the queue filled part-way: withdraw what went in
                raise
            answers = await _within(asyncio.gather(*futures), remaining)
            vectors = np.stack([vector for vector, *_ in answers])
            queue_ms = max(answer[1] for answer in answers)
            tokenize_ms = max(answer[2] for answer in answers)
            encode_ms = max(answer[3] for answer in answers)
            total_ms = (time.perf_counter() - arrived) * 1e3
            self.metrics.observe_stages(
                rpc, queue=queue_ms, tokenize=tokenize_ms, encode=encode_ms, total=total_ms
            )
            version = loaded.engine.bundle.version
            if self.tracer is not None:
                self.tracer.stages(
                    arrived_ns,
                    [("queue", queue_ms), ("tokenize", tokenize_ms), ("encode", encode_ms)],
                    bundle_version=version,
                    texts=len(texts),
                )
            return Embedded(vectors, version, queue_ms, total_ms)

    async def stream(
        self,
        requests: AsyncIterator[Req],
        handle: Callable[[Req], Awaitable[Resp]],
        failed: Callable[[Req, BaseException], Resp],
        ordered: bool = False,
    ) -> AsyncIterator[Resp]:
        """Answer a stream: up to `stream_in_flight` messages at once, each through `handle`.

        A message that fails gets `failed(request, error)` and the stream goes on.
        Responses come in completion order, or in request order when `ordered`. A new
        stream past `max_streams` open ones is refused with Overloaded.
        """
        if self._open_streams >= self.config.max_streams:
            raise Overloaded(
                f"{self._open_streams} streams open, the limit is {self.config.max_streams}; "
                "retry later"
            )
        self._open_streams += 1
        try:
            async for response in _bounded(
                requests, handle, failed, self.config.stream_in_flight, ordered
            ):
                yield response
        finally:
            self._open_streams -= 1

    # -- administration (off the worker pool: it never takes a serving slot) --------------

    async def add_items(self, items: Sequence[NewItem]) -> tuple[int, int]:
        """Embed and index new items; (items added, items now served)."""
        engine = self.state.current().engine
        if not items:
            raise InvalidArgument("items", "empty: give at least one item")
        added = await asyncio.get_running_loop().run_in_executor(
            None, engine.catalogue.add, list(items)
        )
        return added, engine.num_items

    async def remove_items(self, item_ids: Sequence[str]) -> tuple[int, int]:
        """Stop recommending items; (items removed, items now served)."""
        engine = self.state.current().engine
        if not item_ids:
            raise InvalidArgument("item_ids", "empty: give at least one item ID")
        removed = await asyncio.get_running_loop().run_in_executor(
            None, engine.catalogue.remove, list(item_ids)
        )
        return removed, engine.num_items

    async def reload(self, path: str) -> tuple[Loaded, Loaded | None, float]:
        """Load, verify, warm and swap in the bundle at `path`; (new, old, load ms)."""
        if not path.strip():
            raise InvalidArgument("path", "empty: give the bundle folder")
        return await self.state.load(Path(path))

    async def close(self) -> None:
        """Stop the batchers, then the worker pool."""
        await self.state.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    @contextmanager
    def _counted(self, rpc: str) -> Iterator[None]:
        """Count the request once under `rpc` with its outcome's status code name."""
        try:
            yield
        except asyncio.CancelledError:
            self.metrics.count(rpc, "CANCELLED")
            raise
        except Exception as exc:
            self.metrics.count(rpc, status_name(exc))
            raise
        self.metrics.count(rpc, "OK")


_timeout = getattr(asyncio, "timeout", None)


def _remaining(deadline: float | None, expired: str) -> float | None:
    """Seconds left before `deadline`; DeadlineExceeded(expired) if none are."""
    if deadline is None:
        return None
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise DeadlineExceeded(expired)
    return remaining


async def _within(work: Awaitable[T], remaining: float | None) -> T:
    """Await `work`; past `remaining` seconds cancel it (the batcher skips cancelled items)."""
    if remaining is None:
        return await work
    try:
        if _timeout is not None:  # Python ≥ 3.11: no extra task per call (~5 µs less)
            async with _timeout(remaining):
                return await work
        return await asyncio.wait_for(work, remaining)
    except asyncio.TimeoutError as exc:
        raise DeadlineExceeded("deadline passed while the request was queued") from exc


async def _bounded(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], Awaitable[Resp]],
    failed: Callable[[Req, BaseException], Resp],
    in_flight: int,
    ordered: bool,
) -> AsyncIterator[Resp]:
    """Process up to `in_flight` requests of a stream at once.

    A slot is freed only when its response has been handed on, so a slow reader holds at
    most `in_flight` responses in memory (flow control does the rest).
    """
    done: asyncio.Queue[tuple[int, Resp] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def one(sequence: int, request: Req) -> None:
        try:
            response = await handle(request)
        except Exception as exc:
            if status_name(exc) == "INTERNAL":
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
