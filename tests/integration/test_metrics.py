"""Prometheus metrics on the side port reflect real traffic."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_requests_stages_batches_and_bundle(bundle_dir):
    with (
        background_server(bundle_dir, metrics_port=0) as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        stub = pb_grpc.RecommenderServiceStub(ch)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: stub.Recommend(
                        pb.RecommendRequest(history_item_ids=[str(1 + i)], k=3), timeout=30
                    ),
                    range(48),
                )
            )
        with pytest.raises(grpc.RpcError):
            stub.Recommend(pb.RecommendRequest(history_item_ids=[], k=3), timeout=30)
        list(
            stub.RecommendStream(
                iter([pb.RecommendRequest(request_id="a", history_item_ids=["1"])]), timeout=30
            )
        )
        metrics = scrape(server.running.metrics_port)
    assert metrics['irec_requests_total{code="OK",rpc="Recommend"}'] == 48
    assert metrics['irec_requests_total{code="INVALID_ARGUMENT",rpc="Recommend"}'] == 1
    assert metrics['irec_requests_total{code="OK",rpc="RecommendStream"}'] == 1
    for stage in ("queue", "encode", "search", "total"):
        assert metrics[f'irec_request_seconds_count{{rpc="Recommend",stage="{stage}"}}'] == 48
    assert metrics["irec_batch_size_count"] < metrics["irec_batch_size_sum"]  # some batch > 1
    assert "irec_queue_depth" in metrics
    version = server.running.engine.bundle.version
    assert metrics[f'irec_bundle_info{{version="{version}"}}'] == 1
