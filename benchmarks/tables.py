"""The README's benchmark tables, rendered from `benchmarks/results/*.json`.

    python -m benchmarks.tables           print the tables
    python -m benchmarks.tables --write   rewrite them in README.md
    python -m benchmarks.tables --check   exit 1 if README.md differs from the results

Each table sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in the README,
so a figure there is always one a benchmark recorded (with its command, commit and load
average), never one typed by hand. A test runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import results

README = Path(__file__).resolve().parent.parent / "README.md"


def _yes(met: bool) -> str:
    return "met" if met else "not met"


def _load(run: dict[str, Any]) -> str:
    return f"{run['loadavg_before'][0]:.1f}"


def floor_table(data: dict[str, Any]) -> str:
    """One row per bundle: latency split, CPU per call and throughput ratios, with the goals."""
    lines = [
        "| bundle | Recommend p50 ms | in-process p50 ms | trivial RPC p50 ms "
        "| **our code per call ms** (≤ 0.25) | server CPU per call ms | CPU goal ms "
        "(in-process + 1.3 × trivial) | saturated ÷ in-process | **one stream ÷ in-process** "
        "(≥ 0.80) | commit, load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in sorted(data.get("bundles", {}).items()):
        met = r["met"]
        lines.append(
            f"| `{name}` ({r['history']}) | {r['p50_ms']:.2f} | {r['inprocess_p50_ms']:.2f} "
            f"| {r['trivial_rpc_p50_ms']:.2f} "
            f"| {r['own_code_ms_per_call']:.2f} ({_yes(met['own_code_ms_per_call'])}) "
            f"| {r['server_cpu_ms_per_call']:.2f} ({_yes(met['server_cpu_ms_per_call'])}) "
            f"| {r['cpu_budget_ms']:.2f} | {r['saturated_ratio']:.2f} "
            f"| {r['stream_ratio']:.2f} ({_yes(met['stream_ratio'])}) "
            f"| {r['run']['commit']}, {_load(r['run'])} |"
        )
    return "\n".join(lines)


def startup_table(data: dict[str, Any]) -> str:
    """One row per catalogue size: time to SERVING and memory, with the goals."""
    lines = [
        "| items | bundle MiB | start → SERVING s | goal s | RSS MiB | goal MiB | peak RSS MiB "
        "| commit, load avg |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    sizes = sorted(data.get("sizes", {}).values(), key=lambda r: int(r["items"]))
    for r in sizes:
        goal_s = f"≤ {r['goal_s']:g}" if r.get("goal_s") else ""
        goal_rss = f"≤ {r['goal_rss_mib']:,.0f}" if r.get("goal_rss_mib") else ""
        label = " (real ML-1M)" if r.get("source") else ""
        lines.append(
            f"| {int(r['items']):,}{label} | {r['bundle_mib']:,.0f} "
            f"| {r['seconds_to_serving']:.2f} | {goal_s} | {r['rss_mib']:,.0f} | {goal_rss} "
            f"| {r['peak_rss_mib']:,.0f} | {r['run']['commit']}, {_load(r['run'])} |"
        )
    for r in sizes:
        if "reload_s" in r:
            lines.append(
                f"\nHot reload of the {int(r['items']):,}-item bundle into a server serving it "
                f"(both held while the new one loads): {r['reload_s']:.1f} s, peak RSS "
                f"{r['peak_rss_during_reload_mib']:,.0f} MiB, RSS after "
                f"{r['rss_after_reload_mib']:,.0f} MiB."
            )
    return "\n".join(lines)


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "floor": ("bundles", floor_table),
    "startup": ("sizes", startup_table),
}


def render(name: str, results_dir: Path | None = None) -> str:
    """The table NAME as the recorded results give it."""
    section, table = TABLES[name]
    return table(results.load(name, section, results_dir))


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- results:{name} -->\n)(.*?)(<!-- /results:{name} -->)", flags=re.DOTALL
    )


def rewrite(text: str, results_dir: Path | None = None) -> str:
    """README text with every results block replaced by its rendered table."""
    for name in TABLES:
        table = render(name, results_dir) + "\n"

        def replaced(match: re.Match[str], table: str = table) -> str:
            return match.group(1) + table + match.group(3)

        text = _block(name).sub(replaced, text)
    return text


def stale(readme: Path = README, results_dir: Path | None = None) -> list[str]:
    """Names of the blocks whose README text differs from the results (or are missing)."""
    text = readme.read_text(encoding="utf-8")
    out = []
    for name in TABLES:
        match = _block(name).search(text)
        if match is None or match.group(2) != render(name, results_dir) + "\n":
            out.append(name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the README's results tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tables")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the blocks in README.md")
    action.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(rewrite(README.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    if args.check:
        names = stale()
        for name in names:
            print(
                f"README.md: the {name} table differs from benchmarks/results/{name}.json "
                "(run `python -m benchmarks.tables --write`)",
                file=sys.stderr,
            )
        return 1 if names else 0
    for name in TABLES:
        print(f"{name}:\n{render(name)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
