"""`irec bench`: a gRPC load generator that ships with the `irec` command.

It drives Recommend / RecommendStream / Embed / EmbedStream at a fixed number
of concurrent callers (closed loop: each caller sends its next request when the
previous answer arrives, or keeps `window` messages in flight on a stream), for
a duration or a request count, after a warm-up whose answers are not counted.
It reports requests per second and latency percentiles from client send to
client receive, and counts errors by status code.

One Python process drives a few thousand calls per second; past that the client
is the bottleneck, so `processes` splits the callers over several processes
that start together and whose latencies are merged.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from irec.client import CALL_TIMEOUT_S, call_security, open_channel
from server.bundle.manifest import ITEMS_FILE
from server.config import option
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc

# "health" is the transport's floor: a trivial unary call (grpc.health.v1 Check) on the
# same server, channel and interceptors, with none of our work behind it.
RPCS = ("recommend", "recommend-stream", "embed", "embed-stream", "health")

# Words for synthetic free-text histories when no item IDs are given.
_WORDS = (
    "space adventure comedy drama jazz horror romance thriller documentary western "
    "animation musical mystery crime family war history science fiction fantasy noir"
).split()


_HEALTH_SERVICE = "recsys.v1.RecommenderService"

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class LoadSpecError(ValueError):
    """An option of `irec bench` is out of range; the message names it."""


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how hard and for how long."""

    # Field metadata makes a field an option of `irec bench` (irec.options); the client
    # options (target, timeout, TLS, token) are irec.client.ClientOptions'.
    target: str
    rpc: str = field(
        default="recommend",
        metadata=option(
            "which RPC to drive (health: a trivial Check, the transport's own floor)",
            choices=RPCS,
        ),
    )
    concurrency: int = 1
    duration_s: float | None = field(
        default=10.0, metadata=option("measured seconds per row", "--duration")
    )
    requests: int | None = field(
        default=None, metadata=option("measure this many answers instead of a duration")
    )
    warmup_s: float = field(
        default=1.0, metadata=option("seconds of load before measuring", "--warmup")
    )
    history_length: int = field(default=20, metadata=option("items (or texts) per history"))
    k: int = field(default=10, metadata=option("items per answer", short="-k"))
    texts_per_request: int = field(default=1, metadata=option("texts per Embed request", "--texts"))
    window: int = field(default=32, metadata=option("messages in flight per stream"))
    processes: int = field(default=1, metadata=option("client processes sharing the callers"))
    seed: int = field(default=0, metadata=option("seed of the request pool"))
    timeout_s: float = CALL_TIMEOUT_S
    item_ids: tuple[str, ...] = ()
    tls_ca: Path | None = None
    token: str | None = None

    def check(self) -> None:
        """Raise LoadSpecError naming the first option that is out of range."""
        if self.rpc not in RPCS:
            raise LoadSpecError(f"--rpc: {self.rpc!r} is not one of {', '.join(RPCS)}")
        for name, value in (
            ("--concurrency", self.concurrency),
            ("--history-length", self.history_length),
            ("--k", self.k),
            ("--texts", self.texts_per_request),
            ("--window", self.window),
            ("--processes", self.processes),
        ):
            if value < 1:
                raise LoadSpecError(f"{name}: must be ≥ 1, got {value}")
        if self.requests is None and (self.duration_s is None or self.duration_s <= 0):
            raise LoadSpecError("--duration: must be > 0 (or give --requests)")
        if self.requests is not None and self.requests < 1:
            raise LoadSpecError(f"--requests: must be ≥ 1, got {self.requests}")
        if self.processes > self.concurrency:
            raise LoadSpecError("--processes: cannot exceed --concurrency")


@dataclass
class LoadResult:
    """Latencies (ms) of the counted answers, errors by status code, and the window."""

    spec: LoadSpec
    latencies_ms: np.ndarray
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        """Answers without error."""
        return int(self.latencies_ms.size)

    @property
    def rps(self) -> float:
        """Answered requests per second over the measured window (errors included)."""
        total = self.ok + sum(self.errors.values())
        return total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (nan when nothing succeeded)."""
        if self.latencies_ms.size == 0:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))

    def row(self) -> dict[str, Any]:
        """One table row as plain values (also the --json output)."""
        return {
            "rpc": self.spec.rpc,
            "concurrency": self.spec.concurrency,
            "window": self.spec.window if self.spec.rpc.endswith("stream") else None,
            "ok": self.ok,
            "errors": dict(self.errors),
            "seconds": round(self.elapsed_s, 2),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


def item_ids_from_bundle(bundle: Path) -> tuple[str, ...]:
    """Item IDs of a bundle's items.jsonl, to build realistic histories."""
    path = bundle / ITEMS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LoadSpecError(f"--bundle: cannot read {path} ({exc.strerror})") from exc
    ids = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ids.append(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LoadSpecError(f"{path}:{line_no}: not an item object ({exc})") from exc
    if not ids:
        raise LoadSpecError(f"--bundle: {path} has no items")
    return tuple(ids)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def build_requests(spec: LoadSpec, count: int = 512) -> list[Any]:
    """A seeded pool of requests that the callers cycle through."""
    rng = random.Random(spec.seed)
    pool: list[Any] = []
    if spec.rpc == "health":
        return [health_pb2.HealthCheckRequest(service=_HEALTH_SERVICE)]
    for i in range(count):
        if spec.rpc.startswith("embed"):
            texts = [_sentence(rng, 12) for _ in range(spec.texts_per_request)]
            pool.append(pb.EmbedRequest(request_id=str(i), texts=texts))
        elif spec.item_ids:
            history = [rng.choice(spec.item_ids) for _ in range(spec.history_length)]
            pool.append(pb.RecommendRequest(request_id=str(i), history_item_ids=history, k=spec.k))
        else:
            texts = [_sentence(rng, 3) for _ in range(spec.history_length)]
            pool.append(pb.RecommendRequest(request_id=str(i), history_texts=texts, k=spec.k))
    return pool


class _Recorder:
    """Collects latencies that end inside the measured window; counts errors."""

    def __init__(self, measure_from: float, measure_until: float, budget: int | None) -> None:
        self.measure_from = measure_from
        self.measure_until = measure_until
        self.budget = budget  # remaining counted requests (count mode)
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.first_end = float("inf")
        self.last_end = 0.0

    def running(self, now: float) -> bool:
        if self.budget is not None:
            return self.budget > 0 or now < self.measure_from
        return now < self.measure_until

    def record(self, sent: float, error: str | None) -> None:
        now = time.perf_counter()
        if now < self.measure_from or (self.budget is None and now > self.measure_until):
            return
        if self.budget is not None:
            if self.budget <= 0:
                return
            self.budget -= 1
        self.first_end = min(self.first_end, now)
        self.last_end = max(self.last_end, now)
        if error is None:
            self.latencies.append((now - sent) * 1000.0)
        else:
            self.errors[error] += 1


async def _unary_caller(
    stub: pb_grpc.RecommenderServiceStub,
    spec: LoadSpec,
    pool: list[Any],
    offset: int,
    recorder: _Recorder,
    metadata: list[tuple[str, str]] | None,
    health: health_pb2_grpc.HealthStub | None = None,
) -> None:
    method = stub.Embed if spec.rpc == "embed" else stub.Recommend
    if health is not None:
        method = health.Check
    i = offset
    while recorder.running(time.perf_counter()):
        request = pool[i % len(pool)]
        i += 1
        sent = time.perf_counter()
        try:
            await method(request, timeout=spec.timeout_s, metadata=metadata)
            recorder.record(sent, None)
        except grpc.aio.AioRpcError as exc:
            recorder.record(sent, exc.code().name)


async def _stream_caller(
    stub: pb_grpc.RecommenderServiceStub,
    spec: LoadSpec,
    pool: list[Any],
    offset: int,
    recorder: _Recorder,
    metadata: list[tuple[str, str]] | None,
) -> None:
    """One stream with up to `window` messages in flight; ids map answers to send times."""
    slots = asyncio.Semaphore(spec.window)
    sent_at: dict[str, float] = {}
    serial = 0

    async def requests() -> AsyncIterator[Any]:
        nonlocal serial
        while recorder.running(time.perf_counter()):
            await slots.acquire()
            request = type(pool[0])()
            request.CopyFrom(pool[(offset + serial) % len(pool)])
            request.request_id = f"{offset}-{serial}"
            serial += 1
            sent_at[request.request_id] = time.perf_counter()
            yield request

    method = stub.EmbedStream if spec.rpc == "embed-stream" else stub.RecommendStream
    call = method(requests(), timeout=None, metadata=metadata)
    try:
        async for response in call:
            sent = sent_at.pop(response.request_id, time.perf_counter())
            error = None
            if response.HasField("error"):
                error = _CODE_NAMES.get(response.error.code, str(response.error.code))
            recorder.record(sent, error)
            slots.release()
    except grpc.aio.AioRpcError as exc:
        recorder.record(time.perf_counter(), exc.code().name)


async def _drive(spec: LoadSpec, callers: int, first: int, start_at: float) -> dict[str, Any]:
    """Run `callers` callers in this process; start_at is a shared wall-clock start."""
    credentials, metadata = call_security(spec.tls_ca, None, None, spec.token)
    channel: grpc.aio.Channel = open_channel(spec.target, credentials, aio=True)
    async with channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), timeout=spec.timeout_s)
        pool = build_requests(spec)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        now = time.perf_counter()
        measure_from = now + spec.warmup_s
        measure_until = measure_from + (spec.duration_s or 0.0)
        budget = None
        if spec.requests is not None:
            share = spec.requests // spec.processes
            budget = share + (spec.requests - share * spec.processes if first == 0 else 0)
        recorder = _Recorder(measure_from, measure_until, budget)
        if spec.rpc.endswith("stream"):
            callers_run = [
                _stream_caller(stub, spec, pool, (first + c) * 97, recorder, metadata)
                for c in range(callers)
            ]
        else:
            health = health_pb2_grpc.HealthStub(channel) if spec.rpc == "health" else None
            callers_run = [
                _unary_caller(stub, spec, pool, (first + c) * 97, recorder, metadata, health)
                for c in range(callers)
            ]
        await asyncio.gather(*callers_run)
    return {
        "latencies": recorder.latencies,
        "errors": dict(recorder.errors),
        "first_end": recorder.first_end,
        "last_end": recorder.last_end,
        "measure_from": measure_from,
        "measure_until": measure_until,
    }


def _drive_in_process(spec: LoadSpec, callers: int, first: int, start_at: float) -> dict[str, Any]:
    return asyncio.run(_drive(spec, callers, first, start_at))


def run_load(spec: LoadSpec) -> LoadResult:
    """Drive the load described by spec and return what was measured."""
    spec.check()
    start_at = time.time() + (0.5 if spec.processes == 1 else 2.0)
    shares = [spec.concurrency // spec.processes] * spec.processes
    for i in range(spec.concurrency % spec.processes):
        shares[i] += 1
    firsts = [sum(shares[:i]) for i in range(spec.processes)]
    if spec.processes == 1:
        parts = [_drive_in_process(spec, shares[0], 0, start_at)]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(spec.processes, mp_context=context) as pool:
            futures = [
                pool.submit(_drive_in_process, spec, share, first, start_at)
                for share, first in zip(shares, firsts, strict=True)
            ]
            parts = [f.result() for f in futures]
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    latencies = np.array([x for part in parts for x in part["latencies"]], dtype=np.float64)
    if spec.requests is None:
        elapsed = float(np.median([p["measure_until"] - p["measure_from"] for p in parts]))
    else:
        # perf_counter is per process: each process's own span, the longest one counts.
        elapsed = max(p["last_end"] - p["measure_from"] for p in parts)
    return LoadResult(spec, latencies, errors, max(elapsed, 1e-9))


def format_table(results: Sequence[LoadResult]) -> str:
    """Markdown table of load results, one row each."""
    lines = [
        "| rpc | callers | window | ok | errors | s | RPS | p50 ms | p90 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        r = result.row()
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append(
            f"| {r['rpc']} | {r['concurrency']} | {r['window'] or '-'} | {r['ok']} | {errors} "
            f"| {r['seconds']:.1f} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def sweep(spec: LoadSpec, concurrencies: Sequence[int]) -> list[LoadResult]:
    """One run per concurrency level, in order (processes capped at the level)."""
    if not concurrencies:
        raise LoadSpecError("--concurrency: give at least one level")
    return [
        run_load(replace(spec, concurrency=c, processes=min(spec.processes, c)))
        for c in concurrencies
    ]
