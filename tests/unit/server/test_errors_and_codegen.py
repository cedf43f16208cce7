from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc

from server.errors import (
    INTERNAL_MESSAGE,
    BundleError,
    InvalidArgument,
    NotFound,
    Unavailable,
    grpc_status_for,
)

ROOT = Path(__file__).resolve().parents[3]


def test_error_mapping_table():
    assert grpc_status_for(InvalidArgument("k", "bad")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "k: bad",
    )
    assert grpc_status_for(NotFound("x"))[0] == grpc.StatusCode.NOT_FOUND
    assert grpc_status_for(Unavailable("draining"))[0] == grpc.StatusCode.UNAVAILABLE
    assert grpc_status_for(BundleError("bad"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    # Unknown exceptions never leak their text.
    assert grpc_status_for(RuntimeError("secret path /etc")) == (
        grpc.StatusCode.INTERNAL,
        INTERNAL_MESSAGE,
    )


def test_generated_code_is_in_sync_with_protos():
    result = subprocess.run(
        [sys.executable, "protos/codegen.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_server_imports_no_torch_transformers_or_training():
    code = (
        "import sys, server.grpc.app, irec.cli, irec.client, server.bundle.loader;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'training', 'export', 'optimum', 'sklearn', 'pandas'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_logs_are_one_object_per_line(capsys):
    import json
    import logging

    from server.logs import configure

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure("INFO", "json")
        logging.getLogger("irec.test").info("hello %s", "world")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert (
        record["msg"] == "hello world"
        and record["level"] == "INFO"
        and record["logger"] == "irec.test"
    )
    configure("WARNING", "text")
