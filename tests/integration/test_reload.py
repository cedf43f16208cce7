"""Zero-downtime reload through the admin RPC, under continuous load; a bad bundle is refused."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server


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


def test_readiness_is_separate_from_liveness(bundle_dir):
    with background_server(bundle_dir) as server, grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recsys.v1.RecommenderService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert server.running.state.ready


def test_watched_folder_serves_the_newest_good_bundle(bundle_dir, second_bundle, tmp_path):
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
            time.sleep(1.5)
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).bundle_version == "v2"
            assert stub.Recommend(
                pb.RecommendRequest(history_item_ids=["1"], k=2), timeout=30
            ).items
