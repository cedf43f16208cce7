"""Micro-batching: concurrent requests (unary calls and stream messages alike) share one ONNX run.

Callers (server.core.dispatch) queue an item with ``batcher.enqueue(item)`` and await the
future it returns. A single collector task takes the first waiting
item, then gathers more until ``max_batch`` items or ``max_wait_ms`` have passed, sorts the
batch by cost (input length) and splits it into runs of similar length, so little
compute is spent on padding, and runs each in the thread pool (never on the event loop).

The wait is adaptive: when no run is in progress the batch goes at once with what is
already queued, so a lone request (concurrency 1) never pays ``max_wait_ms``; under
load, runs are in progress, requests pile up behind them, and batches fill.

Opt-in (``irec serve --lone-requests loop``): a lone request that ``inline`` calls cheap
(an ID history on a sequence-head bundle: one short head run) runs on the event loop itself
when nothing else is queued or running, saving the hand-off to a worker thread and the
wake-up after it; anything else, and everything under load, goes to the pool. Not the
default: while the loop runs the work, a stream's next messages wait, so one stream loses
throughput. The figures are in README "Benchmarks" (benchmarks.server_variants).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server.config import ServerConfig
from server.errors import Overloaded, Unavailable

T = TypeVar("T")
R = TypeVar("R")

# Within one gathered batch, start a new ONNX run when the next input is this many
# times longer than the shortest of the current run (padding would dominate).
LENGTH_SPREAD = 2.0


@dataclass
class BatchStats:
    """Counters for metrics and tests."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)

    def add(self, size: int) -> None:
        """Record one ONNX run of `size` items (the last 1000 sizes are kept)."""
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes = [*self.sizes[-999:], size]


@dataclass
class _Pending(Generic[T, R]):
    item: T
    cost: int
    future: asyncio.Future[tuple[R, float, float, float]]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Gathers items into batches for `run_batch(items) -> one result per item`."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        cost: Callable[[T], int],
        executor: Executor,
        max_batch: int = ServerConfig.max_batch,
        max_wait_ms: float = ServerConfig.max_wait_ms,
        max_queue: int = ServerConfig.max_queue,
        on_batch: Callable[[int], None] | None = None,
        tokenize_clock: Callable[[], float] | None = None,
        max_running: int = ServerConfig.workers,
        inline: Callable[[T], bool] | None = None,
    ) -> None:
        self.run_batch = run_batch
        # Read on the thread that ran a batch: the ms of it that went to tokenizing.
        self.tokenize_clock = tokenize_clock
        self.cost = cost
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.max_queue = max_queue
        self.stats = BatchStats()
        self.on_batch = on_batch
        self.inline = inline
        self.inline_runs = 0
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._running = 0
        # Items the collector has taken off the queue and not yet handed to a run.
        self._held: list[_Pending[T, R]] = []
        # Encoder runs started and not finished. Work is taken off the queue only when
        # one is free, so requests wait in the queue (bounded by max_queue) and not in
        # the executor's unbounded backlog, which max_queue would not see.
        self._run_slots = asyncio.Semaphore(max(1, max_running))

    @property
    def depth(self) -> int:
        """Items waiting to be batched."""
        return self._queue.qsize()

    async def submit(self, item: T) -> tuple[R, float, float, float]:
        """The item's result and the ms it waited, its batch tokenized, and its batch encoded."""
        return await self.enqueue(item)

    def enqueue(self, item: T) -> asyncio.Future[tuple[R, float, float, float]]:
        """Queue the item now (no await in between) and return the future of its answer.

        Synchronous on purpose: a caller that picked this batcher before a bundle swap
        has its item queued before the swap's drain looks at the queue, so the old
        batcher serves it instead of dropping it. Cancel the future to withdraw the item.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._collect())
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"server overloaded: {self._queue.qsize()} requests waiting; retry")
        future: asyncio.Future[tuple[R, float, float, float]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait(_Pending(item, self.cost(item), future, time.perf_counter()))
        return future

    async def drain_and_close(self, timeout_s: float = 30.0) -> None:
        """After a swap: let queued and running work finish, then stop."""
        deadline = time.perf_counter() + timeout_s
        while (
            self._queue.qsize() or self._running or self._held
        ) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await self.close()

    async def close(self) -> None:
        """Stop the collector; anything still queued is answered UNAVAILABLE, never left hanging."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(Unavailable("batcher stopped; retry"))

    async def _collect(self) -> None:
        try:
            await self._collect_forever()
        except asyncio.CancelledError:
            # Stopped while holding items taken off the queue: answer them, never drop them.
            for pending in self._held:
                if not pending.future.done():
                    pending.future.set_exception(Unavailable("batcher stopped; retry"))
            raise

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._held = []
            await self._run_slots.acquire()  # released when the run it starts ends
            batch = self._held = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Idle engine: go now. Busy engine: wait a little for company.
            deadline = loop.time() + (self.max_wait_s if self._running else 0.0)
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # Cancelled callers (deadline passed, client gone) cost nothing.
            batch = [p for p in batch if not p.future.done()]
            groups = _by_length(batch)
            if not groups:
                self._run_slots.release()
            if self._runs_inline(groups):
                self._run_inline(groups[0])
                self._held = []
                continue
            for position, group in enumerate(groups):
                if position > 0:
                    await self._run_slots.acquire()
                loop.create_task(self._run(group))
                dispatched = {id(p) for p in group}
                self._held = [p for p in self._held if id(p) not in dispatched]

    def _timed_run(self, items: Sequence[T]) -> tuple[Sequence[R], float]:
        """Run a batch on a pool thread; also return the ms of it that went to tokenizing."""
        if self.tokenize_clock is not None:
            self.tokenize_clock()  # reset whatever this thread counted before
        vectors = self.run_batch(items)
        return vectors, (self.tokenize_clock() if self.tokenize_clock is not None else 0.0)

    def _runs_inline(self, groups: list[list[_Pending[T, R]]]) -> bool:
        """One cheap item, nothing running, nothing queued: run it on the loop."""
        return (
            self.inline is not None
            and len(groups) == 1
            and len(groups[0]) == 1
            and self._running == 0
            and self._queue.empty()
            and self.inline(groups[0][0].item)
        )

    def _run_inline(self, group: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        try:
            vectors, tokenize_ms = self._timed_run([p.item for p in group])
        except Exception as exc:  # the caller's error, as from the pool
            _fail(group, exc)
            return
        finally:
            self._run_slots.release()
        self.inline_runs += 1
        self._deliver(group, vectors, started, tokenize_ms)

    async def _run(self, group: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        self._running += 1
        try:
            vectors, tokenize_ms = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._timed_run, [p.item for p in group]
            )
        except Exception as exc:  # one bad batch fails its callers, not the batcher
            _fail(group, exc)
            return
        finally:
            self._running -= 1
            self._run_slots.release()
        self._deliver(group, vectors, started, tokenize_ms)

    def _deliver(
        self,
        group: list[_Pending[T, R]],
        vectors: Sequence[R],
        started: float,
        tokenize_ms: float,
    ) -> None:
        """Answer each caller of a finished run and count the run."""
        encode_ms = (time.perf_counter() - started) * 1e3 - tokenize_ms
        self.stats.add(len(group))
        if self.on_batch is not None:
            self.on_batch(len(group))
        for p, vector in zip(group, vectors, strict=True):
            if not p.future.done():
                queue_ms = (started - p.enqueued) * 1e3
                p.future.set_result((vector, queue_ms, tokenize_ms, encode_ms))


def _fail(group: list[_Pending[T, R]], exc: Exception) -> None:
    for p in group:
        if not p.future.done():
            p.future.set_exception(exc)


def _by_length(batch: list[_Pending[T, R]]) -> list[list[_Pending[T, R]]]:
    """Split a batch, sorted by cost, wherever the cost jumps past LENGTH_SPREAD."""
    groups: list[list[_Pending[T, R]]] = []
    for pending in sorted(batch, key=lambda p: p.cost):
        if groups and pending.cost <= max(groups[-1][0].cost, 8) * LENGTH_SPREAD:
            groups[-1].append(pending)
        else:
            groups.append([pending])
    return groups
