"""Integration-only helpers: a spawned `irec serve` child, RSS readings, the soak option."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from irec.server_process import spawn_server

ROOT = Path(__file__).resolve().parents[2]
SOAK_SECONDS = 600.0


def pytest_addoption(parser: pytest.Parser) -> None:
    # Only seen when this folder is on the command line (pytest tests/integration/...);
    # IREC_SOAK_SECONDS works from anywhere.
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help=f"also run the {SOAK_SECONDS:.0f} s soak variant of the load test",
    )


def soak_seconds(config: pytest.Config) -> float:
    """Seconds of the soak run: --soak gives 600, IREC_SOAK_SECONDS any; 0 = skip."""
    if os.environ.get("IREC_SOAK_SECONDS"):
        return float(os.environ["IREC_SOAK_SECONDS"])
    return SOAK_SECONDS if config.getoption("soak", default=False) else 0.0


@dataclass
class ServedProcess:
    """An `irec serve` child process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def served_process(bundle: Path, workdir: Path, *serve_args: str) -> Iterator[ServedProcess]:
    """`irec serve --bundle BUNDLE --device cpu SERVE_ARGS` on 127.0.0.1:0; stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process, port = spawn_server(
            ["--bundle", str(bundle), "--device", "cpu", "--grace", "1", *serve_args],
            workdir / "port",
            out,
            timeout_s=120,
            cwd=ROOT,
        )
    served = ServedProcess(process, port, log)
    try:
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
