"""Sustained load against a spawned `irec serve`: 64 concurrent clients, zero errors, flat memory.

Each of the 64 clients has its own channel (its own TCP connection) and calls in a closed
loop: mostly unary Recommend, some RecommendStream calls of 16 messages and some Embed
calls, so unary calls, stream messages and embeddings share the batcher as in production.

Memory: the server's RSS (VmRSS of the child process) is sampled every second. The first
WARMUP_S seconds are excluded: ONNX Runtime's arena, glibc's per-thread arenas and gRPC's
buffers grow to the largest batch shape and concurrency they see, then stay. After that
the RSS may grow by at most RSS_GROWTH_BOUND_MB. Why 32 MiB: on the shared 2-core
machine the 64 clients complete ≥ 12 k calls (≈ 15 k messages) in the 50 s after
warm-up, so a leak of ~2.5 KiB per call (one retained response, history or stream
task) exceeds it; the steady-state variation measured in repeated runs (allocator
fragmentation, thread stacks touched late) stayed under 14 MiB, so the bound has a 2×
margin. The soak variant (10 min) holds the same absolute bound: over 12 × more calls
it catches leaks 12 × smaller.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.conftest import (
    SOAK_SECONDS,
    ServedProcess,
    rss_bytes,
    served_process,
    soak_seconds,
)

CLIENTS = 64
LOAD_S = 60.0
WARMUP_S = 10.0
RSS_GROWTH_BOUND_MB = 32.0
STREAM_MESSAGES = 16
CALL_TIMEOUT_S = 30.0


def _history(n: int) -> list[str]:
    return [str(1 + (n * 7 + j) % 360) for j in range(1 + n % 12)]


class _Tally:
    def __init__(self) -> None:
        self.ok = [0] * CLIENTS
        self.errors: list[str] = []
        self.rss: list[tuple[float, int]] = []


async def _client(client: int, target: str, end: float, tally: _Tally) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        n = client
        while time.monotonic() < end and len(tally.errors) < 100:
            n += CLIENTS
            try:
                if n % 10 == 0:  # RecommendStream
                    requests = [
                        pb.RecommendRequest(request_id=f"{n}-{m}", history_item_ids=_history(n + m))
                        for m in range(STREAM_MESSAGES)
                    ]
                    call = stub.RecommendStream(iter(requests), timeout=CALL_TIMEOUT_S)
                    answers = [a async for a in call]
                    ids = sorted(a.request_id for a in answers)
                    bad = [a.error.message for a in answers if a.HasField("error")]
                    if ids != sorted(r.request_id for r in requests) or bad:
                        tally.errors.append(f"stream {n}: {len(answers)} answers, errors {bad[:2]}")
                        continue
                elif n % 10 == 1:  # Embed
                    texts = [f"a story about jazz number {n}", "haunted crypt"]
                    answer = await stub.Embed(pb.EmbedRequest(texts=texts), timeout=CALL_TIMEOUT_S)
                    if len(answer.embeddings) != 2:
                        tally.errors.append(f"embed {n}: {len(answer.embeddings)} vectors")
                        continue
                else:  # unary Recommend
                    k = 1 + n % 10
                    answer = await stub.Recommend(
                        pb.RecommendRequest(history_item_ids=_history(n), k=k),
                        timeout=CALL_TIMEOUT_S,
                    )
                    if len(answer.items) != k or not answer.clusters:
                        tally.errors.append(f"recommend {n}: {len(answer.items)} items, k={k}")
                        continue
                tally.ok[client] += 1
            except grpc.aio.AioRpcError as exc:
                tally.errors.append(f"client {client}: {exc.code().name}: {exc.details()}")


async def _sample_rss(pid: int, end: float, tally: _Tally) -> None:
    started = time.monotonic()
    while time.monotonic() < end:
        tally.rss.append((time.monotonic() - started, rss_bytes(pid)))
        await asyncio.sleep(1.0)


async def _load(served: ServedProcess, seconds: float) -> _Tally:
    tally = _Tally()
    end = time.monotonic() + seconds
    await asyncio.gather(
        _sample_rss(served.process.pid, end, tally),
        *(_client(c, served.target, end, tally) for c in range(CLIENTS)),
    )
    return tally


def _run_load(bundle_dir, workdir, seconds: float) -> None:  # type: ignore[no-untyped-def]
    with served_process(bundle_dir, workdir) as served:
        started_rss = rss_bytes(served.process.pid)
        tally = asyncio.run(_load(served, seconds))
        assert served.process.poll() is None, "the server died under load"
        assert "Traceback" not in served.log_text()
    mb = 1024 * 1024
    after_warmup = [r for t, r in tally.rss if t >= WARMUP_S]
    baseline, final, peak = after_warmup[0], after_warmup[-1], max(after_warmup)
    calls = sum(tally.ok)
    print(
        f"\n{seconds:.0f} s × {CLIENTS} clients: {calls} calls ({calls / seconds:.0f}/s), "
        f"{len(tally.errors)} errors; fewest calls by one client {min(tally.ok)}; RSS MiB: "
        f"start {started_rss / mb:.1f}, after warm-up {baseline / mb:.1f}, "
        f"end {final / mb:.1f}, peak {peak / mb:.1f}; every 10 s: "
        + " ".join(f"{r / mb:.0f}" for t, r in tally.rss[::10])
    )
    assert tally.errors == []
    # Every client was served throughout, not just the lucky ones.
    assert min(tally.ok) >= 10
    assert len(after_warmup) >= (seconds - WARMUP_S) * 0.5, "RSS was not sampled"
    growth_mb = (peak - baseline) / mb
    assert growth_mb < RSS_GROWTH_BOUND_MB, f"RSS grew {growth_mb:.1f} MiB after warm-up"


def test_64_clients_for_60_s_get_no_error_and_memory_stays_flat(bundle_dir, tmp_path):
    _run_load(bundle_dir, tmp_path / "load", LOAD_S)


# The soak runs past the default per-test timeout: its own bound is its length + 5 min.
@pytest.mark.timeout(float(os.environ.get("IREC_SOAK_SECONDS") or SOAK_SECONDS) + 300)
def test_soak(bundle_dir, tmp_path, request):
    seconds = soak_seconds(request.config)
    if seconds <= 0:
        pytest.skip("soak run: pass --soak (10 min) or set IREC_SOAK_SECONDS")
    _run_load(bundle_dir, tmp_path / "soak", seconds)
