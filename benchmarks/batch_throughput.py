"""Batch inference throughput: `irec score` local backend vs Ray with 1 and 2 workers.

`python -m benchmarks.batch_throughput --bundle DIR --users 100000` writes seeded synthetic
users (histories drawn from the bundle's items) to a temporary Parquet file, scores it
with each backend into a fresh output folder and prints a markdown table of users/s.
Each time is the whole run as a user sees it (bundle load, actor start-up, read, score,
write); Ray is started once beforehand and its start-up is reported separately.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import results
from irec.batch_inference import ScoreOptions, ScoreSummary, score
from irec.loadgen import item_ids_from_bundle

MIN_HISTORY = 5
MAX_HISTORY = 100
ROW_GROUP_USERS = 8192


def write_users(
    item_ids: Sequence[str], users: int, path: Path, seed: int = 0, unknown_every: int = 0
) -> Path:
    """Seeded users with histories of MIN_HISTORY..MAX_HISTORY bundle items → Parquet.

    With `unknown_every` > 0, every such user has only unknown item IDs (an error row).
    """
    rng = np.random.default_rng(seed)
    ids = np.asarray(item_ids, dtype=object)
    lengths = rng.integers(MIN_HISTORY, MAX_HISTORY + 1, size=users)
    histories = []
    for user, length in enumerate(lengths):
        if unknown_every and user % unknown_every == unknown_every - 1:
            histories.append([f"unknown-{user}"])
        else:
            histories.append(list(ids[rng.integers(0, len(ids), size=int(length))]))
    table = pa.table(
        {
            "user_id": [f"u{user:07d}" for user in range(users)],
            "history_item_ids": pa.array(histories, type=pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path, row_group_size=ROW_GROUP_USERS)
    return path


@dataclass(frozen=True)
class BenchRow:
    """One backend's run."""

    backend: str
    workers: int
    summary: ScoreSummary

    def markdown(self) -> str:
        """A table row."""
        s = self.summary
        return (
            f"| {self.backend} | {self.workers} | {s.rows:,} | {s.errors:,} | {s.seconds:.1f} | "
            f"{s.users_per_s:,.0f} |"
        )


def run(bundle: Path, users: int, batch_size: int, seed: int, workdir: Path) -> list[BenchRow]:
    """Score the same synthetic users with local, ray ×1 and ray ×2."""
    import ray

    source = write_users(item_ids_from_bundle(bundle), users, workdir / "users.parquet", seed)
    base = ScoreOptions(
        bundle=bundle, input=source, output=workdir, batch_size=batch_size, progress=False
    )
    rows = [BenchRow("local", 1, score(replace(base, output=workdir / "local")))]
    started = time.perf_counter()
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
    print(f"ray.init: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        for workers in (1, 2):
            options = replace(
                base, backend="ray", workers=workers, output=workdir / f"ray-{workers}"
            )
            rows.append(BenchRow("ray", workers, score(options)))
    finally:
        ray.shutdown()
    return rows


def format_table(rows: Sequence[BenchRow], cores: int) -> str:
    """The markdown table."""
    lines = [
        f"machine: {cores} cores; whole runs (load + read + score + write)",
        "",
        "| backend | workers | users | error rows | seconds | users/s |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join([*lines, *(r.markdown() for r in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the three backends, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument("--users", type=int, default=100_000, help="synthetic users")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic users")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    before = results.machine()
    with tempfile.TemporaryDirectory(prefix="irec-score-bench-") as tmp:
        rows = run(args.bundle, args.users, args.batch_size, args.seed, Path(tmp))
    table = format_table(rows, os.cpu_count() or 1)
    print(table)
    subject = f"{args.bundle.name} {args.users} users"
    print(f"recorded in {results.record_table('batch_throughput', subject, table, before)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
