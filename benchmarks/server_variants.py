"""Server variants side by side: the same bundle, servers started with different options.

    python -m benchmarks.server_variants --bundle B \
        --variant pool="--lone-requests pool" --variant loop="--lone-requests loop" \
        [--variant poll="--lone-requests loop" --env poll=GRPC_POLL_STRATEGY=poll]

Every variant's server runs at once, pinned to the first half of the cores with one ONNX
thread per core (an idle server costs nothing); the load generator runs in its own process
on the other half. Rounds alternate the variants, each round measuring one caller, 64
callers and one stream with 64 messages in flight, so machine noise falls on all of them
alike; the table gives medians over rounds and each variant's ratio to the first, and
`benchmarks/results/server_variants.json` records it (with every round, so a reader can
pair them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import results
from benchmarks.floor import load_processes, split_cores
from irec.loadgen import LoadSpec, item_ids_from_bundle, run_load
from irec.server_process import spawn_server

LOADS = ("1 caller", "64 callers", "one stream")


def _spec(load: str, base: LoadSpec) -> LoadSpec:
    if load == "1 caller":
        return base
    if load == "64 callers":
        return replace(base, concurrency=64)
    return replace(base, rpc="recommend-stream", window=64)


def measure(
    bundle: Path,
    variants: dict[str, list[str]],
    env: dict[str, dict[str, str]],
    rounds: int,
    seconds: float,
) -> dict[str, dict[str, Any]]:
    """Per variant and load: requests/s and p50 ms of every round."""
    server_cores, client_cores = split_cores(os.sched_getaffinity(0))
    threads = str(len(server_cores))
    out: dict[str, dict[str, Any]] = {
        name: {load: {"rps": [], "p50_ms": []} for load in LOADS} for name in variants
    }
    with tempfile.TemporaryDirectory() as tmp, load_processes(client_cores) as pool:
        servers = {}
        try:
            for name, args in variants.items():
                servers[name] = spawn_server(
                    [*("--bundle", str(bundle), "--device", "cpu", "--threads", threads), *args],
                    Path(tmp) / f"{name}.port",
                    stdout=open(Path(tmp) / f"{name}.log", "w"),  # noqa: SIM115 (closed with tmp)
                    env=env.get(name),
                    cpus=server_cores,
                )
            ids = item_ids_from_bundle(bundle)
            for round_ in range(rounds):
                for name, (_, port) in servers.items():
                    base = LoadSpec(
                        target=f"127.0.0.1:{port}",
                        item_ids=ids,
                        duration_s=seconds,
                        warmup_s=1.0,
                        seed=round_,
                    )
                    for load in LOADS:
                        result = pool.submit(run_load, _spec(load, base)).result()
                        out[name][load]["rps"].append(result.rps)
                        out[name][load]["p50_ms"].append(result.percentile(50))
                        print(
                            f"round {round_ + 1} {name:>8} {load:>10}: {result.rps:7.1f} req/s",
                            flush=True,
                        )
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    return out


def format_table(figures: dict[str, dict[str, Any]]) -> str:
    """Medians over rounds, and the ratio of each variant's req/s to the first variant's."""
    names = list(figures)
    header = "| variant | " + " | ".join(f"{load} req/s (× {names[0]}), p50 ms" for load in LOADS)
    lines = [header + " |", "| --- |" + " ---: |" * len(LOADS)]
    for name in names:
        cells = []
        for load in LOADS:
            rps = statistics.median(figures[name][load]["rps"])
            first = statistics.median(figures[names[0]][load]["rps"])
            p50 = statistics.median(figures[name][load]["p50_ms"])
            cells.append(f"{rps:.0f} ({rps / first:.2f}), {p50:.2f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _named(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"{what} {value!r}: expected NAME=...")
        pairs.append((name, rest))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, measure, print the table, record the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help='NAME="irec serve options" (repeat; the first is the reference)',
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VAR=VALUE: environment of a variant"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--seconds", type=float, default=6.0, help="per load and round")
    args = parser.parse_args(argv)
    variants = {name: shlex.split(rest) for name, rest in _named(args.variant, "--variant")}
    env: dict[str, dict[str, str]] = {}
    for name, rest in _named(args.env, "--env"):
        if name not in variants:
            raise SystemExit(f"--env {name}=…: no --variant named {name!r}")
        var, sep, value = rest.partition("=")
        if not sep:
            raise SystemExit(f"--env {name}={rest!r}: expected NAME=VAR=VALUE")
        env.setdefault(name, {})[var] = value
    before = results.machine()
    figures = measure(args.bundle, variants, env, args.rounds, args.seconds)
    table = format_table(figures)
    print(table)
    subject = " vs ".join(variants)
    rows = {"variants": variants, "env": env, "figures": figures}
    path = results.record_table(
        "server_variants", subject, table, before, rows=rows, argv=list(argv) if argv else None
    )
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
