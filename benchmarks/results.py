"""Benchmark results as data: `benchmarks/results/NAME.json`, committed, compared across commits.

Every benchmark prints its table and also records it here, with what one needs to judge a
figure later: the command line, the commit, the date, the machine's cores and its load
average before and after the run (a busy machine explains a slow figure). A file holds one
entry per measured subject (a bundle, a catalogue size), so running the benchmark on one
subject updates that entry and keeps the others (floor.json: `bundles`; startup.json:
`sizes`, keyed by item count). The README's tables are rendered from
these files (`benchmarks.tables`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Cores this process may use and the load average now (1, 5, 15 minutes)."""
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=RESULTS_DIR.parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def path_of(name: str, results_dir: Path | None = None) -> Path:
    """Where the results named `name` live."""
    return (results_dir or RESULTS_DIR) / f"{name}.json"


def load(name: str, section: str, results_dir: Path | None = None) -> dict[str, Any]:
    """The recorded results, or an empty record when there are none yet."""
    path = path_of(name, results_dir)
    data: dict[str, Any] = {"benchmark": name}
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault(section, {})
    return data


def record(
    name: str,
    section: str,
    entries: Mapping[str, Mapping[str, Any]],
    before: Mapping[str, Any],
    results_dir: Path | None = None,
    argv: list[str] | None = None,
) -> Path:
    """Merge `entries` (subject → figures) into NAME.json[section], each with its run's context.

    `before` is `machine()` taken when the run started, so the load average the
    figures were measured under is on record, not only the one after.
    """
    data = load(name, section, results_dir)
    context = {
        "command": " ".join(["python", "-m", f"benchmarks.{name}", *(argv or sys.argv[1:])]),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": before["cpus"],
        "loadavg_before": before["loadavg"],
        "loadavg_after": machine()["loadavg"],
    }
    for subject, figures in entries.items():
        data[section][subject] = {**figures, "run": context}
    path = path_of(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def record_table(
    name: str,
    subject: str,
    table: str,
    before: Mapping[str, Any],
    rows: Any = None,
    argv: list[str] | None = None,
) -> Path:
    """Record a benchmark's printed table (and its rows as data, when it has them).

    For the benchmarks whose tables the README quotes as text: NAME.json → `runs` →
    `subject` (the bundle or the configuration measured).
    """
    figures: dict[str, Any] = {"table": table}
    if rows is not None:
        figures["rows"] = rows
    return record(name, "runs", {subject: figures}, before, argv=argv)
