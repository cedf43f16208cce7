from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from server.core.batcher import MicroBatcher, _by_length, _Pending
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


@pytest.fixture(scope="module")
def real_head(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A small sequence head exported to ONNX as the bundle writer does, with its torch twin."""
    import onnxruntime as ort
    import torch

    from export.onnx_head import export_head
    from training.sequence_head import HeadConfig, SequenceHead

    torch.manual_seed(0)
    text = torch.randn(10, 8)
    head = SequenceHead(text, HeadConfig(dim=16, blocks=1, heads=2, max_length=6)).eval()
    path = tmp_path_factory.mktemp("head") / "user_head.onnx"
    export_head(head, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return head, session, text.numpy()


# Histories of different lengths in one batch: shorter and longer than max_length (6),
# with and without free texts, so a row mix-up, a left/right alignment or a padding
# slip changes the answer.
HISTORIES = [
    ([3], None),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], None),
    ([9, 2], "free"),
    ([5, 5, 1, 4], None),
    ([], "free"),
    ([7, 8, 9, 0, 1, 2], None),
    ([4], "free"),
]


@pytest.mark.parametrize("size", [1, 2, 7])
def test_head_batch_equals_single_and_torch(real_head, size):
    import torch

    from server.bundle.user_head import UserHead
    from training.sequence_head import right_aligned

    head, session, item_text = real_head
    user_head = UserHead(session, item_text, max_length=6)
    free = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    histories = [(rows, free if extra else None) for rows, extra in HISTORIES[:size]]
    batched = user_head.user_vectors(histories)
    single = np.stack([user_head.user_vector(rows, text) for rows, text in histories])
    assert batched.shape == (size, 16)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    # Item-only histories against the torch head on right-aligned IDs (the training layout).
    plain = [i for i, (_, text) in enumerate(histories) if text is None]
    ids = right_aligned([histories[i][0] for i in plain], 6)
    with torch.no_grad():
        want = head.user_vectors(torch.from_numpy(ids), head.item_text[torch.from_numpy(ids)])
    np.testing.assert_allclose(batched[plain], want.numpy(), rtol=1e-4, atol=1e-4)
    # Different histories give different vectors: the check above could not pass by accident.
    if size > 1:
        assert not np.allclose(batched[0], batched[1], atol=1e-3)


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


MAX_WAIT_MS = 30_000.0


def test_a_lone_request_does_not_wait_for_company():
    async def scenario():
        batcher = MicroBatcher(
            lambda items: np.zeros((len(items), 1)),
            lambda i: 1,
            ThreadPoolExecutor(1),
            max_batch=8,
            max_wait_ms=MAX_WAIT_MS,
        )
        started = time.perf_counter()
        _, queue_ms, _, _ = await batcher.submit("alone")
        elapsed = time.perf_counter() - started
        await batcher.close()
        return queue_ms, elapsed

    # An ordering, not a latency bound: with a max wait of 30 s, a lone request that
    # waited for company would take ≥ 30 s; answered at once it takes milliseconds, and
    # even a stalled, busy machine stays far below half of it.
    queue_ms, elapsed = run(scenario())
    assert queue_ms < MAX_WAIT_MS / 2 and elapsed * 1e3 < MAX_WAIT_MS / 2


def test_not_ready_is_unavailable(tmp_path):
    from server.config import ServerConfig
    from server.core.model_slot import ServingState
    from server.errors import Unavailable

    state = ServingState(ServerConfig(bundle=tmp_path), ThreadPoolExecutor(1))
    assert not state.ready
    with pytest.raises(Unavailable, match="not ready"):
        state.current()


def test_stats_count_every_run_exactly():
    calls = []

    def run_batch(items):
        calls.append(len(items))
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            run_batch, lambda i: 1, ThreadPoolExecutor(2), max_batch=8, max_wait_ms=20
        )
        await asyncio.gather(*(batcher.submit(i) for i in range(30)))
        await batcher.close()
        return batcher.stats

    stats = run(scenario())
    assert stats.batches == len(calls) and stats.items == sum(calls) == 30
    assert stats.largest == max(calls) and stats.sizes == calls


def test_exactly_max_queue_requests_wait_and_the_next_is_refused():
    gate = __import__("threading").Event()

    def run_batch(items):
        assert gate.wait(30)
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            lambda i: 1,
            ThreadPoolExecutor(1),
            max_batch=1,
            max_wait_ms=0,
            max_queue=4,
            max_running=1,
        )
        running = batcher.enqueue("running")
        while batcher.depth:  # the collector took it and holds the only run slot
            await asyncio.sleep(0.001)
        waiting = [batcher.enqueue(i) for i in range(4)]  # exactly max_queue wait
        assert batcher.depth == 4
        with pytest.raises(Overloaded):
            batcher.enqueue("one too many")
        gate.set()
        await asyncio.gather(running, *waiting)
        await batcher.close()

    run(scenario())


@pytest.mark.parametrize("max_running", [1, 2])
def test_never_more_runs_at_once_than_max_running(max_running):
    # Mixed lengths: one gathered batch splits into several runs, each needs a slot.
    import threading

    lock, now, peak = threading.Lock(), [0], [0]

    def run_batch(items):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            lambda i: i,
            ThreadPoolExecutor(8),
            max_batch=32,
            max_wait_ms=5,
            max_running=max_running,
        )
        costs = [10, 500, 40, 160, 2000, 10, 640] * 6
        await asyncio.gather(*(batcher.submit(c) for c in costs))
        await batcher.close()
        return batcher.stats

    stats = run(scenario())
    assert 1 <= peak[0] <= max_running and stats.items == 42


def test_queue_ms_is_the_wait_in_milliseconds():
    def run_batch(items):
        if "busy" in items:
            time.sleep(0.2)
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            lambda i: 1,
            ThreadPoolExecutor(1),
            max_batch=8,
            max_wait_ms=0,
            max_running=1,
        )
        busy = batcher.enqueue("busy")
        while batcher.depth:  # the collector took it: it runs alone
            await asyncio.sleep(0.001)
        queued_at = time.perf_counter()
        waiter = batcher.enqueue("waiter")
        (_, busy_queue_ms, _, busy_encode_ms) = await busy
        (_, queue_ms, _, _) = await waiter
        waited_ms = (time.perf_counter() - queued_at) * 1e3
        await batcher.close()
        return busy_encode_ms, queue_ms, waited_ms

    busy_encode_ms, queue_ms, waited_ms = run(scenario())
    # The waiter queued while the busy run (≥ 200 ms by its sleep) went on: its queue time
    # is most of that run and never more than the wait this test measured around it.
    assert busy_encode_ms >= 200
    assert 0.5 * busy_encode_ms <= queue_ms <= waited_ms


def test_close_answers_everything_still_queued_unavailable():
    from server.errors import Unavailable

    gate = __import__("threading").Event()

    def run_batch(items):
        assert gate.wait(30)
        return np.zeros((len(items), 1))

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            lambda i: 1,
            ThreadPoolExecutor(1),
            max_batch=1,
            max_wait_ms=0,
            max_running=1,
        )
        running = batcher.enqueue("running")
        while batcher.depth:
            await asyncio.sleep(0.001)
        queued = [batcher.enqueue(i) for i in range(3)]
        await batcher.close()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*queued, return_exceptions=True), timeout=10
        )
        gate.set()
        await running
        return outcomes

    outcomes = run(scenario())
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes


def test_a_lone_cheap_item_runs_on_the_loop_and_a_crowd_goes_to_the_pool():
    """`inline` says which items are cheap; only a lone one, with nothing running, stays."""
    import threading

    threads: dict[str, str] = {}

    def run_batch(items):
        for item in items:
            threads[item] = threading.current_thread().name
        if any("bad" in item for item in items):
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def scenario():
        batcher = MicroBatcher(
            run_batch,
            lambda i: 1,
            ThreadPoolExecutor(1, thread_name_prefix="pool"),
            max_batch=4,
            max_wait_ms=5,
            inline=lambda item: item.startswith("cheap"),
        )
        lone = await batcher.submit("cheap-1")
        costly = await batcher.submit("costly")
        crowd = await asyncio.gather(*(batcher.submit(f"cheap-{n}") for n in range(2, 8)))
        with pytest.raises(ValueError, match="bad item"):
            await batcher.submit("cheap-bad")
        after = await batcher.submit("cheap-9")  # the failure released its run slot
        await batcher.close()
        return batcher, lone, costly, crowd, after

    batcher, lone, costly, crowd, after = run(scenario())
    loop_thread = threading.main_thread().name
    assert lone[0] == "CHEAP-1" and costly[0] == "COSTLY" and after[0] == "CHEAP-9"
    assert [c[0] for c in crowd] == [f"CHEAP-{n}" for n in range(2, 8)]
    assert threads["cheap-1"] == loop_thread == threads["cheap-9"] == threads["cheap-bad"]
    assert threads["costly"].startswith("pool")
    # Six at once: the first may go alone, the rest queue behind it and go to the pool.
    assert sum(threads[f"cheap-{n}"].startswith("pool") for n in range(2, 8)) >= 5
    assert batcher.inline_runs == 2 + (threads["cheap-2"] == loop_thread)
    assert batcher.stats.items == 9  # inline runs are counted like any other
