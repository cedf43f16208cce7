"""Start `irec serve` as a child process on a free port and learn which port it got."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import IO, Any


class ServerStartError(RuntimeError):
    """The child server exited or did not report its port in time."""


def spawn_server(
    serve_args: Sequence[str],
    port_file: Path,
    stdout: IO[Any] | int | None = None,
    timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    cpus: AbstractSet[int] | None = None,
) -> tuple[subprocess.Popen[Any], int]:
    """Run `irec serve SERVE_ARGS --port 0 --port-file PORT_FILE`; return (process, port).

    The server writes the port only once it is serving, so no port is chosen in
    advance and nothing races for it. `cpus` pins the server (every thread it will
    start) to those cores, so a benchmark's load generator can run on others.
    """
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "irec.cli",
            "serve",
            *serve_args,
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if process.poll() is not None:
            raise ServerStartError(f"server exited with {process.returncode} before serving")
        if time.monotonic() > deadline:
            process.kill()
            raise ServerStartError(f"server did not start in {timeout_s:.0f} s")
        time.sleep(0.1)
    return process, int(port_file.read_text())
