"""server/metrics.py on its own: units, buckets, labels, the one served bundle, the queue gauge.

The live-server counts are in tests/integration/test_metrics.py; these read the registry
directly, so each property is checked exactly and in milliseconds.
"""

from __future__ import annotations

import math
import urllib.request

import pytest

from server.config import ServerConfig
from server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS_S, Metrics


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def _le(edge: float) -> str:
    return str(float(edge))


def test_stage_milliseconds_are_recorded_in_seconds_in_the_right_bucket():
    m = Metrics()
    m.observe_stages("Recommend", queue=0.3, encode=3.0, total=1500.0)
    # 0.3 ms: first bucket (0.5 ms); 3 ms: the 5 ms bucket, not the 2 ms one; 1.5 s: 2 s.
    assert _value(m, "irec_request_seconds_sum", rpc="Recommend", stage="queue") == pytest.approx(
        0.0003
    )
    assert _value(m, "irec_request_seconds_sum", rpc="Recommend", stage="encode") == pytest.approx(
        0.003
    )
    assert _value(m, "irec_request_seconds_sum", rpc="Recommend", stage="total") == pytest.approx(
        1.5
    )
    encode = {
        le: _value(m, "irec_request_seconds_bucket", rpc="Recommend", stage="encode", le=le)
        for le in ("0.002", "0.005", "+Inf")
    }
    assert encode == {"0.002": 0.0, "0.005": 1.0, "+Inf": 1.0}
    assert _value(m, "irec_request_seconds_bucket", rpc="Recommend", stage="total", le="1.0") == 0
    assert _value(m, "irec_request_seconds_bucket", rpc="Recommend", stage="total", le="2.0") == 1
    # Stages not given are not invented; another RPC is its own series.
    assert _value(m, "irec_request_seconds_count", rpc="Recommend", stage="search") is None
    m.observe_stages("Embed", encode=1.0)
    assert _value(m, "irec_request_seconds_count", rpc="Embed", stage="encode") == 1
    assert _value(m, "irec_request_seconds_count", rpc="Recommend", stage="encode") == 1


def test_latency_buckets_are_distinct_1_2_5_steps_from_half_a_millisecond_to_two_seconds():
    # p95 of stage="total" drives autoscaling (deploy/kubernetes/base/hpa.yaml): the edges
    # must be increasing, distinct, and span sub-millisecond searches to slow encodes.
    edges = list(LATENCY_BUCKETS_S)
    assert edges == sorted(set(edges))
    assert edges[0] == 0.0005 and edges[-1] == 2.0
    for edge in edges:
        mantissa = edge / 10 ** math.floor(math.log10(edge))
        assert min(abs(mantissa - s) for s in (1, 2, 5)) < 1e-9, edge
    # Each edge is its own bucket: a value exactly on an edge counts there, not below.
    m = Metrics()
    for edge in edges:
        m.observe_stages("Recommend", total=edge * 1e3)
    for i, edge in enumerate(edges):
        count = _value(
            m, "irec_request_seconds_bucket", rpc="Recommend", stage="total", le=_le(edge)
        )
        assert count == i + 1, edge


def test_batch_sizes_up_to_the_largest_batch_land_in_power_of_two_buckets():
    edges = list(BATCH_BUCKETS)
    assert edges == [2**i for i in range(len(edges))]
    assert edges[-1] >= ServerConfig.max_batch  # the default batch never lands only in +Inf
    m = Metrics()
    for size in (1, 3, 16, 17, 128):
        m.batch_size.observe(size)
    counts = {e: _value(m, "irec_batch_size_bucket", le=_le(e)) for e in edges}
    assert counts == {1: 1, 2: 1, 4: 2, 8: 2, 16: 3, 32: 4, 64: 4, 128: 5}
    assert _value(m, "irec_batch_size_sum") == 1 + 3 + 16 + 17 + 128


def test_only_the_served_bundle_is_marked():
    m = Metrics()
    m.serving("v1")
    assert _value(m, "irec_bundle_info", version="v1") == 1
    m.serving("v2")
    assert _value(m, "irec_bundle_info", version="v2") == 1
    assert _value(m, "irec_bundle_info", version="v1") is None


def test_queue_depth_is_read_at_scrape_time_and_requests_count_by_rpc_and_code():
    m = Metrics()
    depth = [0]
    m.watch_queue(lambda: depth[0])
    assert _value(m, "irec_queue_depth") == 0
    depth[0] = 7
    assert _value(m, "irec_queue_depth") == 7
    m.requests.labels(rpc="Recommend", code="OK").inc()
    m.requests.labels(rpc="Recommend", code="OK").inc()
    m.requests.labels(rpc="Embed", code="INVALID_ARGUMENT").inc()
    assert _value(m, "irec_requests_total", rpc="Recommend", code="OK") == 2
    assert _value(m, "irec_requests_total", rpc="Embed", code="INVALID_ARGUMENT") == 1
    assert _value(m, "irec_requests_total", rpc="Embed", code="OK") is None


def test_each_server_has_its_own_registry_served_over_http():
    a, b = Metrics(), Metrics()
    a.serving("only-a")
    assert _value(b, "irec_bundle_info", version="only-a") is None
    port = a.serve_http("127.0.0.1", 0)
    assert port > 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'irec_bundle_info{version="only-a"} 1.0' in text
