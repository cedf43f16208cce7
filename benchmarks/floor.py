"""Serving overhead against the hardware floor: gRPC server vs the same work in-process.

`python -m benchmarks.floor --bundle DIR` starts `irec serve` on the bundle
(a child process on a loopback port), loads the same bundle in this process with
the server's own loader, and measures on the same seeded requests:

1. latency: Recommend p50 at concurrency 1 over gRPC ÷ p50 of the same work done
   in-process (prepare → encode → clusters + HNSW), interleaved in blocks so noise
   hits both alike (goal ≤ 1.10);
2. throughput: saturated Recommend RPS over gRPC ÷ in-process batched throughput
   (batches of --max-batch through the same engine, one caller, the same cores;
   goal ≥ 0.85);
3. streaming: users/s through one RecommendStream ÷ the same in-process floor
   (goal ≥ 0.9), and ÷ unary calls at the same concurrency as the stream's window.

Client and server share this machine's cores; the load generator's CPU counts
against the server's numbers, as it would for any client on the same host.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from irec.server_process import spawn_server
from server.config import ServerConfig
from server.engine import RecommenderEngine, RecommendQuery
from server.loadgen import LoadSpec, build_requests, item_ids_from_bundle, run_load
from server.service import to_query
from server.serving import load_engine


@dataclass
class FloorRow:
    """One measure: over gRPC, in-process, their ratio and the goal."""

    measure: str
    served: float
    floor: float
    goal: str

    @property
    def ratio(self) -> float:
        """Served ÷ floor."""
        return self.served / self.floor if self.floor else float("nan")


def _queries(spec: LoadSpec) -> list[RecommendQuery]:
    """The load generator's requests as the engine's queries (the servicer's own mapping)."""
    return [to_query(r) for r in build_requests(spec)]


def in_process_latency_ms(
    engine: RecommenderEngine, queries: Sequence[RecommendQuery]
) -> list[float]:
    """One query at a time, the whole path: prepare, encode, clusters and search."""
    times = []
    for query in queries:
        started = time.perf_counter()
        engine.recommend(query)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def in_process_throughput(
    engine: RecommenderEngine, queries: Sequence[RecommendQuery], batch: int, seconds: float
) -> float:
    """Queries per second through batches of `batch` (one encoder run each)."""
    done = 0
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        chunk = [queries[(i + j) % len(queries)] for j in range(batch)]
        i += batch
        prepared = [engine.prepare(q) for q in chunk]
        users = engine.user_vectors(prepared)
        for p, u in zip(prepared, users, strict=True):
            engine.finish(p, u)
        done += batch
    return done / (time.perf_counter() - started)


def measure(
    bundle: Path,
    seconds: float,
    blocks: int,
    block_size: int,
    saturate: int,
    processes: int,
    window: int,
    max_batch: int,
    history_length: int,
) -> list[FloorRow]:
    """Run all three comparisons against one server; return the table's rows."""
    config = ServerConfig(bundle=bundle, device="cpu", max_batch=max_batch)
    engine = load_engine(bundle, config)
    with tempfile.TemporaryDirectory() as tmp:
        process, port = spawn_server(
            ["--bundle", str(bundle), "--device", "cpu", "--max-batch", str(max_batch)],
            Path(tmp) / "port",
            stdout=open(Path(tmp) / "server.log", "w"),  # noqa: SIM115 (closed with tmp)
        )
        try:
            base = LoadSpec(
                target=f"127.0.0.1:{port}",
                item_ids=item_ids_from_bundle(bundle),
                history_length=history_length,
                warmup_s=0.5,
            )
            queries = _queries(base)
            # 1. Latency at concurrency 1, interleaved blocks.
            served_ms: list[float] = []
            floor_ms: list[float] = []
            for b in range(blocks):
                block = replace(base, duration_s=None, requests=block_size, seed=b)
                served_ms.extend(run_load(block).latencies_ms.tolist())
                floor_ms.extend(in_process_latency_ms(engine, _queries(block)[:block_size]))
            # 2. Throughput: saturated server vs in-process batches, alternated twice.
            served_rps: list[float] = []
            floor_qps: list[float] = []
            for _ in range(2):
                flood = replace(base, concurrency=saturate, processes=processes, duration_s=seconds)
                served_rps.append(run_load(flood).rps)
                floor_qps.append(in_process_throughput(engine, queries, max_batch, seconds))
            # 3. One stream with `window` in flight vs unary at the same concurrency.
            stream = replace(base, rpc="recommend-stream", window=window, duration_s=seconds)
            stream_rps = run_load(stream).rps
            unary = replace(base, concurrency=window, processes=processes, duration_s=seconds)
            unary_rps = run_load(unary).rps
        finally:
            process.terminate()
            process.wait(timeout=30)
    floor = statistics.median(floor_qps)
    return [
        FloorRow(
            "Recommend p50 at concurrency 1 (ms)",
            statistics.median(served_ms),
            statistics.median(floor_ms),
            "≤ 1.10",
        ),
        FloorRow(
            f"Recommend throughput, {saturate} callers (req/s)",
            statistics.median(served_rps),
            floor,
            "≥ 0.85",
        ),
        FloorRow(f"one RecommendStream, window {window} (users/s)", stream_rps, floor, "≥ 0.9"),
        FloorRow(
            f"one stream ÷ unary at concurrency {window} (users/s)",
            stream_rps,
            unary_rps,
            "> 1",
        ),
    ]


def format_rows(rows: Sequence[FloorRow]) -> str:
    """Markdown table."""
    lines = [
        "| measure | irec over gRPC | floor (in-process) | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r.measure} | {r.served:.2f} | {r.floor:.2f} | {r.ratio:.2f} | {r.goal} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    parser.add_argument("--blocks", type=int, default=6, help="latency blocks per side")
    parser.add_argument("--block-size", type=int, default=50, help="requests per block")
    parser.add_argument("--saturate", type=int, default=64, help="callers for throughput")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=int, default=64, help="stream messages in flight")
    parser.add_argument(
        "--max-batch", type=int, default=ServerConfig.max_batch, help="server and floor batch"
    )
    parser.add_argument("--history-length", type=int, default=20, help="items per history")
    args = parser.parse_args(argv)
    np.random.seed(0)
    rows = measure(
        args.bundle,
        args.seconds,
        args.blocks,
        args.block_size,
        args.saturate,
        args.processes,
        args.window,
        args.max_batch,
        args.history_length,
    )
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
