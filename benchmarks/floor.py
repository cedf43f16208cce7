"""Per-call cost of serving against two floors: the same work in-process, and gRPC's own.

`python -m benchmarks.floor --bundle DIR [--name head|minilm] [--history ids|texts]` starts
`irec serve` on the bundle (a child process pinned to the first half of this machine's
cores), loads the same bundle in this process with the server's own loader (pinned to the
same cores), and runs the load generator in child processes pinned to the other half, so
client and server are not measured as one. On the same seeded requests it measures:

1. latency at concurrency 1, interleaved blocks so noise hits all alike: Recommend over
   gRPC, the same work in-process (prepare → head/encoder → clusters + HNSW), and a trivial
   RPC on the same server (grpc.health.v1 Check: transport, interceptors, no work). Our
   code's share per call = Recommend p50 − in-process p50 − trivial p50 (goal ≤ 0.25 ms);
2. CPU per call, from the server's /proc counters over each block: Recommend, trivial RPC,
   and the in-process work's own CPU (goal: Recommend ≤ in-process + 1.3 × trivial);
3. throughput: saturated Recommend (64 callers) ÷ in-process batched throughput;
4. one RecommendStream (64 in flight) ÷ the same in-process floor (goal ≥ 0.80).

The table is printed and recorded in benchmarks/results/floor.json under --name.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import results
from irec.loadgen import LoadResult, LoadSpec, build_requests, item_ids_from_bundle, run_load
from irec.server_process import spawn_server
from server.bundle import manifest as fmt
from server.config import ServerConfig
from server.core.engine import RecommenderEngine, RecommendQuery
from server.core.model_slot import load_engine
from server.grpc.recsys_v1 import to_query

# Goals of issue 12, per call on the same machine.
OWN_CODE_GOAL_MS = 0.25
CPU_TRIVIAL_FACTOR = 1.3
STREAM_GOAL = 0.80
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


@dataclass
class FloorResult:
    """What `floor.json` records per bundle (issue 12's keys, milliseconds and ratios)."""

    p50_ms: float
    inprocess_p50_ms: float
    trivial_rpc_p50_ms: float
    server_cpu_ms_per_call: float
    inprocess_cpu_ms_per_call: float
    trivial_rpc_server_cpu_ms_per_call: float
    saturated_rps: float
    inprocess_rps: float
    stream_rps: float
    unary_rps_at_window: float
    history: str
    pinned: bool

    @property
    def own_code_ms_per_call(self) -> float:
        """Latency that is neither the model's work nor the transport's floor."""
        return self.p50_ms - self.inprocess_p50_ms - self.trivial_rpc_p50_ms

    @property
    def cpu_budget_ms(self) -> float:
        """The goal for server CPU per Recommend."""
        return (
            self.inprocess_cpu_ms_per_call
            + CPU_TRIVIAL_FACTOR * self.trivial_rpc_server_cpu_ms_per_call
        )

    def as_json(self) -> dict[str, Any]:
        """The recorded figures: measured values, derived ones and whether each goal is met."""
        return {
            **asdict(self),
            "own_code_ms_per_call": self.own_code_ms_per_call,
            "saturated_ratio": self.saturated_rps / self.inprocess_rps,
            "stream_ratio": self.stream_rps / self.inprocess_rps,
            "stream_over_unary": self.stream_rps / self.unary_rps_at_window,
            "cpu_budget_ms": self.cpu_budget_ms,
            "goals": {
                "own_code_ms_per_call": f"≤ {OWN_CODE_GOAL_MS}",
                "server_cpu_ms_per_call": (
                    f"≤ inprocess_cpu + {CPU_TRIVIAL_FACTOR} × trivial_rpc_server_cpu"
                ),
                "stream_ratio": f"≥ {STREAM_GOAL}",
            },
            "met": {
                "own_code_ms_per_call": self.own_code_ms_per_call <= OWN_CODE_GOAL_MS,
                "server_cpu_ms_per_call": self.server_cpu_ms_per_call <= self.cpu_budget_ms,
                "stream_ratio": self.stream_rps / self.inprocess_rps >= STREAM_GOAL,
            },
        }


def rows_of(result: dict[str, Any]) -> list[FloorRow]:
    """A recorded result as the table's rows."""
    r = result
    return [
        FloorRow("Recommend p50, concurrency 1 (ms)", r["p50_ms"], r["inprocess_p50_ms"], ""),
        FloorRow("trivial RPC p50 (health Check, ms)", r["trivial_rpc_p50_ms"], 0.0, ""),
        FloorRow(
            "our code per call (ms) = Recommend − in-process − trivial",
            r["own_code_ms_per_call"],
            0.0,
            f"≤ {OWN_CODE_GOAL_MS}",
        ),
        FloorRow(
            "server CPU per Recommend (ms) vs in-process CPU",
            r["server_cpu_ms_per_call"],
            r["inprocess_cpu_ms_per_call"],
            f"≤ {r['cpu_budget_ms']:.2f} ms",
        ),
        FloorRow(
            "server CPU per trivial RPC (ms)", r["trivial_rpc_server_cpu_ms_per_call"], 0.0, ""
        ),
        FloorRow(
            "saturated Recommend, 64 callers (req/s)", r["saturated_rps"], r["inprocess_rps"], ""
        ),
        FloorRow(
            "one RecommendStream, 64 in flight (users/s)",
            r["stream_rps"],
            r["inprocess_rps"],
            f"≥ {STREAM_GOAL}",
        ),
    ]


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
    """Queries per second through batches of `batch` (one model run each)."""
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


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def split_cores(cores: AbstractSet[int]) -> tuple[set[int], set[int]]:
    """(server's cores, load generator's cores): the first half and the rest; one core: both."""
    ordered = sorted(cores)
    if len(ordered) < 2:
        return set(ordered), set(ordered)
    half = len(ordered) // 2
    return set(ordered[:half]), set(ordered[half:])


def _pin(cores: set[int]) -> None:
    os.sched_setaffinity(0, cores)


@contextlib.contextmanager
def load_processes(cores: set[int] | None) -> Iterator[ProcessPoolExecutor]:
    """One child process (pinned to `cores`) that drives every load; its own callers fan out."""
    context = multiprocessing.get_context("spawn")
    if cores:
        pool = ProcessPoolExecutor(1, mp_context=context, initializer=_pin, initargs=(cores,))
    else:
        pool = ProcessPoolExecutor(1, mp_context=context)
    with pool:
        yield pool


def _served_block(pool: ProcessPoolExecutor, spec: LoadSpec, pid: int) -> tuple[LoadResult, float]:
    """Run one counted block (no warm-up, so every call counts); server CPU ms per call."""
    before = process_cpu_s(pid)
    result = pool.submit(run_load, spec).result()
    calls = result.ok + sum(result.errors.values())
    return result, (process_cpu_s(pid) - before) * 1e3 / max(calls, 1)


def measure(
    bundle: Path,
    seconds: float = 8.0,
    blocks: int = 6,
    block_size: int = 300,
    saturate: int = 64,
    processes: int = 2,
    window: int = 64,
    max_batch: int = ServerConfig.max_batch,
    history_length: int = 20,
    history: str = "ids",
    pin: bool = True,
) -> FloorResult:
    """All comparisons against one server; this process is pinned to the server's cores."""
    server_cores, client_cores = split_cores(os.sched_getaffinity(0))
    # ONNX Runtime's default (0) starts a thread per physical core and binds each to its
    # core, whatever this process's affinity: pinned, it gets one thread per core it has.
    threads = len(server_cores) if pin else 0
    if pin:
        _pin(server_cores)  # before the engine's ONNX threads exist: they inherit it
    config = ServerConfig(
        bundle=bundle, device="cpu", max_batch=max_batch, intra_op_threads=threads
    )
    engine = load_engine(bundle, config)
    item_ids = item_ids_from_bundle(bundle) if history == "ids" else ()
    with (
        tempfile.TemporaryDirectory() as tmp,
        load_processes(client_cores if pin else None) as pool,
    ):
        process, port = spawn_server(
            [
                *("--bundle", str(bundle), "--device", "cpu", "--max-batch", str(max_batch)),
                *("--threads", str(threads)),
            ],
            Path(tmp) / "port",
            stdout=open(Path(tmp) / "server.log", "w"),  # noqa: SIM115 (closed with tmp)
            cpus=server_cores if pin else None,
        )
        try:
            base = LoadSpec(
                target=f"127.0.0.1:{port}",
                item_ids=item_ids,
                history_length=history_length,
                warmup_s=0.0,
                duration_s=None,
                requests=block_size,
            )
            queries = _queries(base)
            # Warm both sides (first calls allocate, connections open).
            pool.submit(run_load, replace(base, requests=50)).result()
            pool.submit(run_load, replace(base, rpc="health", requests=50)).result()
            in_process_latency_ms(engine, queries[:50])
            # 1-2. Latency and CPU per call at concurrency 1, interleaved blocks.
            served_ms: list[float] = []
            trivial_ms: list[float] = []
            floor_ms: list[float] = []
            served_cpu: list[float] = []
            trivial_cpu: list[float] = []
            floor_cpu: list[float] = []
            for b in range(blocks):
                block = replace(base, seed=b)
                result, cpu = _served_block(pool, block, process.pid)
                served_ms.extend(result.latencies_ms.tolist())
                served_cpu.append(cpu)
                result, cpu = _served_block(pool, replace(block, rpc="health"), process.pid)
                trivial_ms.extend(result.latencies_ms.tolist())
                trivial_cpu.append(cpu)
                block_queries = _queries(block)[:block_size]
                cpu_before = time.process_time()
                floor_ms.extend(in_process_latency_ms(engine, block_queries))
                floor_cpu.append((time.process_time() - cpu_before) * 1e3 / len(block_queries))
            # 3. Throughput: saturated server vs in-process batches, alternated twice.
            served_rps: list[float] = []
            floor_qps: list[float] = []
            for _ in range(2):
                flood = replace(
                    base,
                    concurrency=saturate,
                    processes=processes,
                    duration_s=seconds,
                    requests=None,
                    warmup_s=0.5,
                )
                served_rps.append(pool.submit(run_load, flood).result().rps)
                floor_qps.append(in_process_throughput(engine, queries, max_batch, seconds))
            # 4. One stream with `window` in flight vs unary at the same concurrency.
            timed = replace(base, duration_s=seconds, requests=None, warmup_s=0.5)
            stream = replace(timed, rpc="recommend-stream", window=window)
            stream_rps = pool.submit(run_load, stream).result().rps
            unary = replace(timed, concurrency=window, processes=processes)
            unary_rps = pool.submit(run_load, unary).result().rps
        finally:
            process.terminate()
            process.wait(timeout=30)
    return FloorResult(
        p50_ms=statistics.median(served_ms),
        inprocess_p50_ms=statistics.median(floor_ms),
        trivial_rpc_p50_ms=statistics.median(trivial_ms),
        server_cpu_ms_per_call=statistics.median(served_cpu),
        inprocess_cpu_ms_per_call=statistics.median(floor_cpu),
        trivial_rpc_server_cpu_ms_per_call=statistics.median(trivial_cpu),
        saturated_rps=statistics.median(served_rps),
        inprocess_rps=statistics.median(floor_qps),
        stream_rps=stream_rps,
        unary_rps_at_window=unary_rps,
        history=(
            f"{history_length} item IDs" if history == "ids" else f"{history_length} free texts"
        ),
        pinned=pin,
    )


def format_rows(rows: Sequence[FloorRow]) -> str:
    """Markdown table (a floor of 0 means the row has none: its cells stay empty)."""
    lines = [
        "| measure | irec over gRPC | floor (in-process) | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        floor = f"{r.floor:.2f}" if r.floor else ""
        ratio = f"{r.ratio:.2f}" if r.floor else ""
        lines.append(f"| {r.measure} | {r.served:.2f} | {floor} | {ratio} | {r.goal} |")
    return "\n".join(lines)


def _default_name(bundle: Path, history: str) -> str:
    """`head` for ID histories on a sequence-head bundle; `minilm` when the encoder runs."""
    has_head = fmt.read_manifest(bundle).sequence_head is not None
    return "head" if has_head and history == "ids" else "minilm"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, measure, print the table and record it."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.floor", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument(
        "--history",
        choices=["ids", "texts"],
        default="ids",
        help="histories as item IDs (the head's work) or free texts (the encoder's)",
    )
    parser.add_argument("--name", help="entry in floor.json (default: head or minilm)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    parser.add_argument("--blocks", type=int, default=6, help="latency blocks per side")
    parser.add_argument("--block-size", type=int, default=300, help="requests per block")
    parser.add_argument("--saturate", type=int, default=64, help="callers for throughput")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=int, default=64, help="stream messages in flight")
    parser.add_argument(
        "--max-batch", type=int, default=ServerConfig.max_batch, help="server and floor batch"
    )
    parser.add_argument("--history-length", type=int, default=20, help="items per history")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--results-dir", type=Path, help="where floor.json goes")
    args = parser.parse_args(argv)
    np.random.seed(0)
    before = results.machine()
    result = measure(
        args.bundle,
        args.seconds,
        args.blocks,
        args.block_size,
        args.saturate,
        args.processes,
        args.window,
        args.max_batch,
        args.history_length,
        args.history,
        pin=not args.no_pin,
    )
    name = args.name or _default_name(args.bundle, args.history)
    figures = result.as_json()
    print(f"{name}: {args.bundle} ({figures['history']} per request)")
    print(format_rows(rows_of(figures)))
    path = results.record(
        "floor",
        "bundles",
        {name: {**figures, "bundle": str(args.bundle)}},
        before,
        args.results_dir,
        list(argv) if argv is not None else None,
    )
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
