"""Mutation check of the serving core with cosmic-ray: do the tests notice a broken line?

`make mutation` (or `python -m tests.mutation.run`) mutates one module at a time, in
place, and runs only the test files that exercise it; a mutant the tests still pass
"survived". Bounded: a seeded random sample of each module's mutants (the same sample on
every run of the same source), a per-mutant timeout, and the tiny test bundle built once
(IREC_TEST_BUNDLE_CACHE) instead of per mutant. A mutant that runs past its timeout counts
as killed (cosmic-ray's rule: an infinite loop is noticed).

Each module's session (SQLite) and a text summary with the survivors' diffs are left in
--out (default .mutation/). The source file is restored after every mutant; if the run is
interrupted, `git checkout server/` puts it back.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """A module to mutate and the tests that exercise it."""

    module: str
    tests: tuple[str, ...]
    timeout_s: float


TARGETS = {
    "engine": Target(
        "server/core/engine.py",
        ("tests/unit/server/test_engine.py", "tests/unit/server/test_interests.py"),
        180.0,
    ),
    "metrics": Target(
        "server/metrics.py",
        ("tests/unit/server/test_metrics.py", "tests/integration/test_metrics.py"),
        180.0,
    ),
}


def _config(target: Target) -> str:
    tests = " ".join(target.tests)
    # -x: the first failure kills the mutant.
    command = (
        f"{sys.executable} -m pytest -x -q -p no:cacheprovider "
        f"--timeout {int(target.timeout_s)} {tests}"
    )
    return (
        "[cosmic-ray]\n"
        f'module-path = "{target.module}"\n'
        f"timeout = {target.timeout_s}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _sample(session: Path, size: int, seed: int) -> tuple[int, int]:
    """Mark all but a seeded sample of the pending mutants as skipped; (kept, total)."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session)) as db:
        items = sorted(
            db.pending_work_items,
            key=lambda w: [(m.operator_name, m.occurrence, m.start_pos) for m in w.mutations],
        )
        total = len(items)
        if size <= 0 or size >= total:
            return total, total
        keep = set(random.Random(seed).sample(range(total), size))
        skipped = [w.job_id for i, w in enumerate(items) if i not in keep]
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        return size, total


def _reopen_survivors(session: Path) -> int:
    """Forget the survivors' results, so `exec` runs them again; return how many.

    Tests are only ever added between runs, so a killed mutant stays killed: after new
    tests, rerunning the survivors measures the same sample as a full run would.
    """
    import sqlite3

    with sqlite3.connect(session) as db:
        cursor = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
        return cursor.rowcount


def _summary(session: Path, module: str) -> tuple[int, int, str]:
    """(killed, run, text): the counts and every survivor's diff."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed = run = 0
    survivors: list[str] = []
    with use_db(str(session)) as db:
        for item, result in sorted(
            db.completed_work_items,
            key=lambda pair: [(m.operator_name, m.occurrence) for m in pair[0].mutations],
        ):
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            run += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                (m,) = item.mutations
                survivors.append(
                    f"--- survived: {m.operator_name} #{m.occurrence} at line {m.start_pos[0]}\n"
                    f"{result.diff}"
                )
            else:
                killed += 1
    head = f"{module}: {killed}/{run} mutants killed ({run - killed} survived)\n"
    return killed, run, head + "\n".join(survivors)


def main(argv: list[str] | None = None) -> int:
    """Run the mutation check of the chosen modules; print and save the summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--sample", type=int, default=50, help="mutants per module (0 = all)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=ROOT / ".mutation")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="rerun only the survivors of the last run's sample (in --out), e.g. after new tests",
    )
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    # The test commands inherit this: the tiny bundle is trained once, not per mutant.
    os.environ["IREC_TEST_BUNDLE_CACHE"] = str((args.out / "bundle-cache").resolve())
    os.chdir(ROOT)
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    for name in args.modules:
        target = TARGETS[name]
        config = args.out / f"{name}.toml"
        session = args.out / f"{name}.sqlite"
        config.write_text(_config(target))
        if args.survivors:
            again = _reopen_survivors(session)
            print(f"[mutation] {target.module}: the {again} survivors again")
        else:
            session.unlink(missing_ok=True)
            subprocess.run([*cosmic, "init", str(config), str(session)], check=True)
            kept, total = _sample(session, args.sample, args.seed)
            print(f"[mutation] {target.module}: {kept} of {total} mutants (seed {args.seed})")
        # The unmutated tests must pass (this also fills the bundle cache).
        subprocess.run([*cosmic, "baseline", str(config)], check=True)
        subprocess.run([*cosmic, "exec", str(config), str(session)], check=True)
        killed, run, text = _summary(session, target.module)
        (args.out / f"{name}.txt").write_text(text)
        print(text.splitlines()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
