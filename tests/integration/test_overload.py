"""Overload against a spawned `irec serve`: refused fast, never a crash, full recovery after.

The server under test is small on purpose: `--max-queue 4 --max-batch 4 --workers 1`, so
it holds CAPACITY = 4 waiting + 4 × 1 being encoded = 8 requests at once. The tests keep
10 × CAPACITY requests outstanding for several seconds (closed loop: each caller sends its
next request as soon as it has an answer), and fire a 50 × CAPACITY burst in one go.
Whatever is past the queue must be answered RESOURCE_EXHAUSTED at once: no INTERNAL, no
UNAVAILABLE, no request left waiting behind an unbounded backlog; afterwards every request
succeeds again and health is SERVING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.conftest import ServedProcess, served_process

MAX_QUEUE = 4
MAX_BATCH = 4
WORKERS = 1
CAPACITY = MAX_QUEUE + MAX_BATCH * WORKERS
SUSTAINED_CALLERS = 10 * CAPACITY
SUSTAINED_S = 5.0
BURST = 50 * CAPACITY
CHANNELS = 8
# A refusal costs no encoder time, only the event loop's turn at the call; under a flood
# that turn can wait behind a few hundred other calls on a busy, shared 2-core machine
# (measured: burst refusal p95 0.27 s, and 1.77 s with a second test run on the same
# cores). So the bound is a ratio to the served calls of the same run, which slow down
# with the machine: refusal p95 < REFUSAL_P95_VS_SERVED × the median served call
# (measured 0.8 and 0.9 ×), well below what queueing behind the encoder took before
# max-queue bounded the real backlog (a 3.5 s median for the same burst, all accepted).
# The absolute bounds below only catch a hang.
REFUSAL_P95_VS_SERVED = 3.0
REFUSAL_MAX_S = 5.0
ACCEPTED_MAX_S = 10.0


def heavy_request(i: int) -> pb.RecommendRequest:
    """Long histories and a long text: each request costs real encoder time."""
    return pb.RecommendRequest(
        request_id=f"r{i}",
        history_item_ids=[str(1 + (i * 13 + j) % 360) for j in range(40)],
        history_texts=[f"a long free text about jazz and horror number {i} " * 20],
        k=10,
    )


Outcome = tuple[str, float, str]  # (status code name, seconds, details)


async def _call(stub: pb_grpc.RecommenderServiceStub, i: int) -> Outcome:
    started = time.perf_counter()
    try:
        answer = await stub.Recommend(heavy_request(i), timeout=60)
        code, details = ("OK" if len(answer.items) == 10 else "SHORT_ANSWER"), ""
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    return code, time.perf_counter() - started, details


async def _with_stubs(target: str, work):  # type: ignore[no-untyped-def]
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        return await work([pb_grpc.RecommenderServiceStub(c) for c in channels])
    finally:
        for channel in channels:
            await channel.close()


async def _burst(target: str) -> list[Outcome]:
    async def work(stubs):  # type: ignore[no-untyped-def]
        return await asyncio.gather(*(_call(stubs[i % CHANNELS], i) for i in range(BURST)))

    return await _with_stubs(target, work)


async def _sustained(target: str) -> list[Outcome]:
    outcomes: list[Outcome] = []

    async def caller(stub: pb_grpc.RecommenderServiceStub, first: int, end: float) -> None:
        i = first
        while time.perf_counter() < end and len(outcomes) < 200_000:
            outcomes.append(await _call(stub, i))
            i += SUSTAINED_CALLERS

    async def work(stubs):  # type: ignore[no-untyped-def]
        end = time.perf_counter() + SUSTAINED_S
        await asyncio.gather(
            *(caller(stubs[c % CHANNELS], c, end) for c in range(SUSTAINED_CALLERS))
        )
        return outcomes

    return await _with_stubs(target, work)


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _check_overload(outcomes: list[Outcome], label: str, ordered: bool = False) -> None:
    codes = {c for c, _, _ in outcomes}
    refused = sorted(t for c, t, _ in outcomes if c == "RESOURCE_EXHAUSTED")
    accepted = sorted(t for c, t, _ in outcomes if c == "OK")
    print(
        f"\n{label}: {len(outcomes)} calls, {len(accepted)} OK, {len(refused)} refused; "
        f"refusal p50 {_pct(refused, 0.5) if refused else 0:.3f} s "
        f"p95 {_pct(refused, 0.95) if refused else 0:.3f} s "
        f"max {refused[-1] if refused else 0:.3f} s; "
        f"OK p50 {_pct(accepted, 0.5) if accepted else 0:.3f} s "
        f"max {accepted[-1] if accepted else 0:.3f} s"
    )
    # Only two answers: served in full, or refused for overload.
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, sorted(codes)
    assert len(accepted) >= CAPACITY, "overload must not stop the server from serving"
    assert len(refused) >= len(outcomes) // 2, f"only {len(refused)} of {len(outcomes)} refused"
    for c, _, details in outcomes:
        if c == "RESOURCE_EXHAUSTED":
            assert details.startswith("server overloaded"), details
    if ordered:
        # Measured in the same run, so it holds on a slow or busy machine: a refusal waits
        # for no encoder run, so the median refusal is faster than the median served call.
        assert _pct(refused, 0.5) < _pct(accepted, 0.5)
    assert _pct(refused, 0.95) < REFUSAL_P95_VS_SERVED * _pct(accepted, 0.5)
    assert refused[-1] < REFUSAL_MAX_S
    # Accepted requests never wait behind an unbounded backlog.
    assert accepted[-1] < ACCEPTED_MAX_S


def _check_recovered(served: ServedProcess) -> None:
    assert served.process.poll() is None, "the server died under overload"
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        for i in range(20):
            answer = stub.Recommend(heavy_request(i), timeout=30)
            assert len(answer.items) == 10 and answer.request_id == f"r{i}"
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recsys.v1.RecommenderService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert "Traceback" not in served.log_text()


@pytest.fixture(scope="module")
def small_server(bundle_dir, tmp_path_factory) -> Iterator[ServedProcess]:
    args = ["--max-queue", str(MAX_QUEUE), "--max-batch", str(MAX_BATCH)]
    args += ["--workers", str(WORKERS), "--max-wait-ms", "2"]
    with served_process(bundle_dir, tmp_path_factory.mktemp("overload"), *args) as served:
        yield served


def test_ten_times_capacity_sustained_is_refused_fast_and_the_server_recovers(small_server):
    outcomes = asyncio.run(_sustained(small_server.target))
    _check_overload(outcomes, "sustained 10× capacity", ordered=True)
    _check_recovered(small_server)


def test_a_burst_of_fifty_times_capacity_is_refused_fast_and_the_server_recovers(small_server):
    _check_overload(asyncio.run(_burst(small_server.target)), "burst 50× capacity")
    _check_recovered(small_server)


def test_an_overloaded_stream_answers_every_message_and_goes_on(small_server):
    # One stream keeps up to 64 messages in flight: far past a queue of 4. Each refused
    # message gets its own RESOURCE_EXHAUSTED error response; the stream stays open.
    requests = [heavy_request(i) for i in range(300)]
    with grpc.insecure_channel(small_server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        responses = list(stub.RecommendStream(iter(requests), timeout=120))
    assert sorted(r.request_id for r in responses) == sorted(r.request_id for r in requests)
    errors = [r.error for r in responses if r.HasField("error")]
    served = [r for r in responses if not r.HasField("error")]
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert all(e.code == exhausted and e.message.startswith("server overloaded") for e in errors)
    assert errors, "64 messages in flight against a queue of 4: some must be refused"
    assert served and all(len(r.items) == 10 for r in served)
    _check_recovered(small_server)
