"""Zero-downtime reload through the admin RPC, under continuous load; a bad bundle is refused."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server
from tests.integration.conftest import ROOT


@pytest.fixture(scope="module")
def second_bundle(trained_run, tmp_path_factory):
    from export.bundle_writer import ExportOptions, export_run

    out = tmp_path_factory.mktemp("v2") / "bundle"
    export_run(trained_run, out, ExportOptions(version="v2", fp16=False))
    return out


def test_reload_under_load_drops_no_request_and_refuses_a_bad_bundle(
    bundle_dir, second_bundle, tmp_path
):
    broken = tmp_path / "broken"
    shutil.copytree(second_bundle, broken)
    (broken / "items.jsonl").write_text("tampered\n")
    with background_server(bundle_dir) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        admin = pb_grpc.RecommenderAdminStub(channel)
        first = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version
        versions, errors, stop = [], [], threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    r = stub.Recommend(
                        pb.RecommendRequest(history_item_ids=["1", "2"], k=3), timeout=30
                    )
                    versions.append(r.bundle_version)
                except grpc.RpcError as exc:  # any failure is a dropped request
                    errors.append(exc.code())

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        answer = admin.ReloadBundle(pb.ReloadBundleRequest(path=str(second_bundle)), timeout=30)
        assert answer.bundle_version == "v2" and answer.previous_bundle_version == first
        with pytest.raises(grpc.RpcError) as info:
            admin.ReloadBundle(pb.ReloadBundleRequest(path=str(broken)), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "items.jsonl" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            admin.ReloadBundle(pb.ReloadBundleRequest(path=""), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        count = len(versions)
        deadline = time.monotonic() + 60
        while len(versions) < count + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for w in workers:
            w.join()
        assert errors == []
        assert first in versions and "v2" in versions
        # The bad bundle did not replace the good one.
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version == "v2"


SERVICE = "recsys.v1.RecommenderService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def _until(condition, timeout_s: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _healthcheck(target: str, service: str = "") -> tuple[int, str]:
    """`python -m server.healthcheck`, as a Docker HEALTHCHECK or a probe runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "server.healthcheck", "--target", target, "--service", service],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def test_readiness_is_separate_from_liveness(bundle_dir, monkeypatch):
    """While the bundle loads, the server is live ("" SERVING) and not ready (NOT_SERVING)."""
    from server.config import ServerConfig
    from server.core.model_slot import ServingState
    from server.grpc.app import start_server

    gate = threading.Event()
    original_load = ServingState.load

    async def gated_load(self, path):  # type: ignore[no-untyped-def]
        while not gate.is_set():  # the bundle "loads" until the test lets it
            await asyncio.sleep(0.01)
        return await original_load(self, path)

    monkeypatch.setattr(ServingState, "load", gated_load)
    port = _free_port()
    config = ServerConfig(bundle=bundle_dir, host="127.0.0.1", port=port, device="cpu")
    target = f"127.0.0.1:{port}"
    with _event_loop_thread() as loop, grpc.insecure_channel(target) as channel:
        started = asyncio.run_coroutine_threadsafe(start_server(config), loop)
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.RecommenderServiceStub(channel)
        try:

            def check(service: str) -> int:
                request = health_pb2.HealthCheckRequest(service=service)
                return health.Check(request, timeout=30, wait_for_ready=True).status

            assert check("") == SERVING  # live: it listens
            assert check(SERVICE) == NOT_SERVING  # not ready: no bundle yet
            assert not started.done()
            with pytest.raises(grpc.RpcError) as info:
                stub.Recommend(pb.RecommendRequest(history_item_ids=["1"], k=2), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not ready" in info.value.details()
            # The probe's exit code follows the same split.
            assert _healthcheck(target) == (0, "SERVING")
            assert _healthcheck(target, SERVICE) == (1, "NOT_SERVING")
            gate.set()
            running = started.result(timeout=120)
            assert check(SERVICE) == SERVING and check("") == SERVING
            assert running.state.ready
            answer = stub.Recommend(pb.RecommendRequest(history_item_ids=["1"], k=2), timeout=30)
            assert len(answer.items) == 2
            assert _healthcheck(target, SERVICE) == (0, "SERVING")
        finally:
            gate.set()
            asyncio.run_coroutine_threadsafe(started.result(timeout=120).stop(1.0), loop).result(
                timeout=30
            )
    # Nothing listens any more: the probe says so and fails.
    code, said = _healthcheck(target)
    assert code == 1 and said.startswith("unhealthy: UNAVAILABLE"), said


def _refused(caplog: pytest.LogCaptureFixture, bundle: Path) -> bool:
    """Whether the watcher has logged that it refused `bundle`."""
    return any(r.getMessage().startswith(f"refused bundle {bundle}") for r in list(caplog.records))


IN_FLIGHT = 8


def test_drain_reports_not_serving_then_answers_every_call_in_flight(bundle_dir):
    """Stop with calls in flight: readiness goes NOT_SERVING, then every call is answered."""
    from server.config import ServerConfig
    from server.grpc.app import start_server

    # One run at a time, one request per run: the first call holds the encoder (gated),
    # the other IN_FLIGHT - 1 wait in the queue when the stop begins.
    config = ServerConfig(
        bundle=bundle_dir, host="127.0.0.1", port=0, device="cpu", workers=1, max_batch=1
    )
    with _event_loop_thread() as loop:
        running = asyncio.run_coroutine_threadsafe(start_server(config), loop).result(timeout=120)
        target = f"127.0.0.1:{running.port}"
        stopping = None
        gate, entered = threading.Event(), threading.Event()
        try:
            batcher = running.batcher
            run_batch = batcher.run_batch

            def gated(items):  # type: ignore[no-untyped-def]
                entered.set()
                assert gate.wait(60), "the test never opened the gate"
                return run_batch(items)

            batcher.run_batch = gated
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.RecommenderServiceStub(channel)
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=60
                )
                assert next(watch).status == SERVING
                calls = [
                    stub.Recommend.future(
                        pb.RecommendRequest(history_item_ids=[str(1 + i)], k=3), timeout=60
                    )
                    for i in range(IN_FLIGHT)
                ]
                _until(lambda: entered.is_set() and batcher.depth == IN_FLIGHT - 1, what="queue")
                stopping = asyncio.run_coroutine_threadsafe(running.stop(30.0), loop)
                assert next(watch).status == NOT_SERVING
                watch.cancel()  # an open Watch would hold the drain for the whole grace
                assert not any(c.done() for c in calls), "a call ended before the encoder ran"
                gate.set()
                answers = [c.result(timeout=60) for c in calls]
                assert [len(a.items) for a in answers] == [3] * IN_FLIGHT
                stopping.result(timeout=60)
        finally:
            gate.set()
            if stopping is None:
                asyncio.run_coroutine_threadsafe(running.stop(1.0), loop).result(timeout=30)


def test_watched_folder_serves_the_newest_good_bundle(bundle_dir, second_bundle, tmp_path, caplog):
    import json
    import time

    watched = tmp_path / "bundles"
    watched.mkdir()
    with background_server(bundle_dir, watch_dir=watched, watch_interval_s=0.2) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)

            def version_soon(expected: str) -> str:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version
                    if version == expected:
                        return version
                    time.sleep(0.1)
                return version

            shutil.copytree(second_bundle, watched / "v2")
            assert version_soon("v2") == "v2"
            # A newer but corrupt bundle is refused; v2 keeps serving.
            shutil.copytree(second_bundle, watched / "v3")
            manifest = json.loads((watched / "v3" / "manifest.json").read_text())
            manifest.update(bundle_version="v3", created_at="2999-01-01T00:00:00Z")
            (watched / "v3" / "manifest.json").write_text(json.dumps(manifest))
            (watched / "v3" / "centroids.npy").write_bytes(b"corrupt")
            # Not a fixed sleep: wait until the watcher has tried v3 and refused it.
            _until(lambda: _refused(caplog, watched / "v3"), what="the watcher to refuse v3")
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version == "v2"
            assert stub.Recommend(
                pb.RecommendRequest(history_item_ids=["1"], k=2), timeout=30
            ).items
