from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from server.batcher import MicroBatcher, _by_length, _Pending
from server.errors import Overloaded


def run(coro):
    return asyncio.run(coro)


def test_concurrent_items_share_runs_and_get_their_own_answers():
    calls = []

    def run_batch(items):
        calls.append(list(items))
        return np.array([[float(i)] for i in items])

    async def scenario():
        batcher = MicroBatcher(
            run_batch, lambda i: 1, ThreadPoolExecutor(2), max_batch=16, max_wait_ms=20
        )
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.close()
        return batcher, results

    batcher, results = run(scenario())
    assert [float(r[0][0]) for r in results] == [float(i) for i in range(40)]
    assert batcher.stats.items == 40
    assert batcher.stats.largest > 1 and max(len(c) for c in calls) <= 16
    assert batcher.stats.batches < 40


def test_a_full_queue_answers_overloaded_at_once_and_recovers():
    def slow(items):
        time.sleep(0.05)
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            slow, lambda i: 1, ThreadPoolExecutor(1), max_batch=1, max_wait_ms=0, max_queue=4
        )
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(50)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, Overloaded)]
        later = await batcher.submit(99)
        await batcher.close()
        return refused, outcomes, later, time.perf_counter() - started

    refused, outcomes, later, _ = run(scenario())
    assert len(refused) >= 40
    assert all(isinstance(o, (Overloaded, tuple)) for o in outcomes)
    assert later[0].shape == (1,)


def test_a_failing_batch_fails_its_callers_only():
    def flaky(items):
        if 13 in items:
            raise ValueError("boom")
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            flaky, lambda i: 1, ThreadPoolExecutor(1), max_batch=1, max_wait_ms=0
        )
        bad = await asyncio.gather(batcher.submit(13), return_exceptions=True)
        good = await batcher.submit(1)
        await batcher.close()
        return bad, good

    bad, good = run(scenario())
    assert isinstance(bad[0], ValueError)
    assert good[0].shape == (1,)


def test_batches_are_split_by_length():
    loop = asyncio.new_event_loop()
    pending = [
        _Pending(i, cost, loop.create_future(), 0.0)
        for i, cost in enumerate([10, 500, 12, 480, 11])
    ]
    groups = _by_length(pending)
    loop.close()
    assert [[p.cost for p in g] for g in groups] == [[10, 11, 12], [480, 500]]


@pytest.mark.parametrize("size", [1, 7])
def test_head_batch_equals_single(size, tmp_path):
    from server.user_head import UserHead

    class FakeSession:
        def run(self, names, feeds):
            ids, text = feeds["item_ids"], feeds["item_text"]
            return [text.sum(axis=1) + ids.sum(axis=1, keepdims=True)]

    head = UserHead(FakeSession(), np.arange(20, dtype=np.float32).reshape(10, 2), max_length=4)
    histories = [([i % 10, (i + 3) % 10], None) for i in range(size)]
    batched = head.user_vectors(histories)
    single = np.stack([head.user_vector(rows) for rows, _ in histories])
    np.testing.assert_allclose(batched, single)


def test_a_withdrawn_request_costs_no_encoder_time():
    seen = []

    def run_batch(items):
        seen.extend(items)
        if "busy" in items:
            time.sleep(0.2)  # keeps the only run slot taken: later items wait in the queue
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            lambda i: 1,
            ThreadPoolExecutor(1),
            max_batch=8,
            max_wait_ms=50,
            max_running=1,
        )
        busy = asyncio.ensure_future(batcher.submit("busy"))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(batcher.submit("late"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0.005)
        doomed.cancel()  # e.g. its deadline passed or the client went away
        await asyncio.gather(busy, kept)
        await batcher.close()

    run(scenario())
    assert seen == ["busy", "kept"]


def test_a_lone_request_does_not_wait_for_company():
    async def scenario():
        batcher = MicroBatcher(
            lambda items: np.zeros((len(items), 1)),
            lambda i: 1,
            ThreadPoolExecutor(1),
            max_batch=8,
            max_wait_ms=500,
        )
        started = time.perf_counter()
        _, queue_ms, _, _ = await batcher.submit("alone")
        elapsed = time.perf_counter() - started
        await batcher.close()
        return queue_ms, elapsed

    queue_ms, elapsed = run(scenario())
    assert queue_ms < 250 and elapsed < 0.25  # not the 500 ms max wait


def test_not_ready_is_unavailable(tmp_path):
    from server.config import ServerConfig
    from server.errors import Unavailable
    from server.serving import ServingState

    state = ServingState(ServerConfig(bundle=tmp_path), ThreadPoolExecutor(1))
    assert not state.ready
    with pytest.raises(Unavailable, match="not ready"):
        state.current()
