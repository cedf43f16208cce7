"""Faults: a server killed mid-stream, restarted on its port; bundles corrupted on disk.

Already covered elsewhere, not repeated here:
- reload under continuous load drops no request, a tampered bundle (checksum mismatch) is
  refused by ReloadBundle and an empty path is INVALID_ARGUMENT:
  test_reload.py::test_reload_under_load_drops_no_request_and_refuses_a_bad_bundle;
- a newer bundle with a checksum mismatch in a --watch-dir is refused and the served one
  goes on: test_reload.py::test_watched_folder_serves_the_newest_good_bundle;
- `irec serve` refuses a bundle whose checksum does not match, naming the file:
  test_cli.py::test_serve_refuses_a_corrupt_bundle_with_a_clear_message;
- bad manifests, missing files, wrong shapes: tests/unit/server/test_manifest_and_bundle.py.

What this file adds: files that are corrupt although their checksums match the manifest
(an exporter bug, a manifest rewritten after the fact), refused the same clear way at
start, by ReloadBundle and by the watched folder, which keeps watching afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from irec.client import RecommenderClient, make_request
from server.bundle import manifest as fmt
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server
from tests.integration.conftest import ROOT, served_process

START_TIMEOUT_S = 120.0
RECOVERY_S = 15.0  # how long the loop below keeps trying: a bound on the test, not the claim
# The claim (README): the same client reconnects within ~1 s of the server listening again:
# max_reconnect_backoff is 1 s (±20% jitter), and a call's retries span 1.5 s. Measured
# from the restarted server's port file to the first answer; the margin over 1.2 s is for
# a busy 2-core machine (client, server and a training job on the same cores).
RECONNECT_S = 2.5


def _serve_on(bundle: Path, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """`irec serve` on a given port (the restart case); returns once it is serving."""
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log = (workdir / "restart.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "irec.cli", "serve", "--bundle", str(bundle)]
        + ["--device", "cpu", "--grace", "1", "--port", str(port), "--port-file", str(port_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        assert process.poll() is None, (workdir / "restart.log").read_text()
        assert time.monotonic() < deadline, "restarted server did not start"
        time.sleep(0.1)
    assert int(port_file.read_text()) == port
    return process


def test_kill_9_mid_stream_is_unavailable_and_the_client_recovers_after_a_restart(
    bundle_dir, tmp_path
):
    gate = threading.Event()

    def requests():
        yield make_request(["1", "2"], k=3, request_id="before-kill")
        gate.wait(30)  # the stream stays open while the server is killed
        yield make_request(["3"], k=3, request_id="after-kill")

    with served_process(bundle_dir, tmp_path / "first") as served:
        port = served.port
        with RecommenderClient(served.target, timeout_s=30) as client:
            stream = client.recommend_stream(requests())
            assert next(stream).request_id == "before-kill"
            os.kill(served.process.pid, signal.SIGKILL)
            assert served.process.wait(timeout=30) == -signal.SIGKILL
            with pytest.raises(grpc.RpcError) as info:
                next(stream)
            gate.set()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value

            # While nothing listens: UNAVAILABLE after the client's retries, promptly.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                client.recommend(make_request(["1"], k=2))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 10

            # Same port, same client and channel: answered again within RECOVERY_S, with no
            # new channel. The retry policy (UNAVAILABLE, 4 attempts, ≤ 0.7 s of backoff)
            # usually carries the first call over the channel's reconnect backoff, but not
            # always: gRPC's default reconnect backoff (1 s, × 1.6 per failed connect) can
            # be longer, so a first call may still fail, with UNAVAILABLE and nothing else.
            restarted = _serve_on(bundle_dir, port, tmp_path)
            try:
                codes, answer = [], None
                listening = time.monotonic()
                deadline = listening + RECOVERY_S
                while answer is None and time.monotonic() < deadline:
                    try:
                        answer = client.recommend(make_request(["1"], k=2))
                    except grpc.RpcError as exc:
                        codes.append(exc.code())
                reconnect_s = time.monotonic() - listening
                print(f"\nreconnected {reconnect_s:.2f} s after the restart listened; {codes}")
                assert answer is not None and len(answer.items) == 2, codes
                assert reconnect_s < RECONNECT_S, (reconnect_s, codes)
                assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
                responses = list(client.recommend_stream([make_request(["4"], request_id="s")]))
                assert [r.request_id for r in responses] == ["s"]
            finally:
                restarted.send_signal(signal.SIGTERM)
                assert restarted.wait(timeout=30) == 0


CORRUPTIONS = {
    "garbage": lambda data: b"\x93NUMPY\xff\xfe not what it claims to be " * 8,
    "truncated": lambda data: data[: len(data) // 2],
}
CORRUPTED_FILES = [
    fmt.CENTROIDS_FILE,
    fmt.ITEM_EMBEDDINGS_FILE,
    fmt.ITEMS_FILE,
    fmt.CLUSTERS_FILE,
    fmt.TOKENIZER_FILE,
    fmt.ENCODER_INT8_FILE,
    fmt.ALL_ITEMS_INDEX_FILE,
    fmt.cluster_index_file(0),
]


def corrupt_with_valid_checksum(
    source: Path, target: Path, name: str, how: str, version: str = ""
) -> Path:
    """A copy of `source` with file `name` corrupted and its sha256 updated in the manifest."""
    shutil.copytree(source, target)
    path = target / name
    path.write_bytes(CORRUPTIONS[how](path.read_bytes()))
    manifest_path = target / fmt.MANIFEST_FILE
    raw = json.loads(manifest_path.read_text())
    raw["files"][name] = fmt.sha256_file(path)
    if version:
        raw.update(bundle_version=version, created_at="2999-01-01T00:00:00Z")
    manifest_path.write_text(json.dumps(raw))
    return target


@pytest.fixture(scope="module")
def reload_server(bundle_dir):
    with background_server(bundle_dir) as server, grpc.insecure_channel(server.target) as channel:
        yield server, pb_grpc.RecommenderServiceStub(channel), pb_grpc.RecommenderAdminStub(channel)


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("name", CORRUPTED_FILES)
def test_reload_refuses_a_corrupt_file_with_a_valid_checksum(
    reload_server, bundle_dir, tmp_path, name, how
):
    _, stub, admin = reload_server
    served = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version
    bad = corrupt_with_valid_checksum(bundle_dir, tmp_path / "b", name, how)
    with pytest.raises(grpc.RpcError) as info:
        admin.ReloadBundle(pb.ReloadBundleRequest(path=str(bad)), timeout=60)
    # FAILED_PRECONDITION naming the file, never INTERNAL ("internal error; see the log").
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert Path(name).name in info.value.details()
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version == served
    assert len(stub.Recommend(make_request(["1", "2"], k=3), timeout=30).items) == 3


@pytest.mark.parametrize(
    ("name", "how"),
    [
        (fmt.CENTROIDS_FILE, "garbage"),
        (fmt.TOKENIZER_FILE, "truncated"),
        (fmt.CLUSTERS_FILE, "garbage"),
    ],
)
def test_serve_refuses_a_corrupt_file_with_a_valid_checksum_in_one_line(
    bundle_dir, tmp_path, name, how
):
    bad = corrupt_with_valid_checksum(bundle_dir, tmp_path / "b", name, how)
    result = subprocess.run(
        [sys.executable, "-m", "irec.cli", "serve", "--bundle", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("irec serve: error:") and name in last, last


def test_watch_refuses_a_corrupt_bundle_and_keeps_watching(bundle_dir, tmp_path, caplog):
    watched = tmp_path / "bundles"
    watched.mkdir()
    with background_server(bundle_dir, watch_dir=watched, watch_interval_s=0.2) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            served = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version
            corrupt_with_valid_checksum(
                bundle_dir, watched / "bad", fmt.CENTROIDS_FILE, "garbage", version="bad"
            )
            # Not a fixed sleep: wait until the watcher has tried the bad bundle and refused it.
            deadline = time.monotonic() + 30
            while not any(
                r.getMessage().startswith(f"refused bundle {watched / 'bad'}")
                for r in list(caplog.records)
            ):
                assert time.monotonic() < deadline, "the watcher never looked at the bad bundle"
                time.sleep(0.05)
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version == served
            assert server.running.watcher is not None and not server.running.watcher.done()
            # Repairing the bundle changes its manifest: the watcher tries it again.
            shutil.rmtree(watched / "bad")
            shutil.copytree(bundle_dir, watched / "bad")
            manifest = json.loads((watched / "bad" / fmt.MANIFEST_FILE).read_text())
            manifest.update(bundle_version="repaired", created_at="2999-01-02T00:00:00Z")
            (watched / "bad" / fmt.MANIFEST_FILE).write_text(json.dumps(manifest))
            deadline = time.monotonic() + 30
            version = served
            while version != "repaired" and time.monotonic() < deadline:
                time.sleep(0.1)
                version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version
            assert version == "repaired"
            assert len(stub.Recommend(make_request(["1"], k=2), timeout=30).items) == 2
