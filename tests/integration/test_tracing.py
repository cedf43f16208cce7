"""OpenTelemetry: a span per call, stage children, the caller's trace continued."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from server.config import ServerConfig
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server
from tests.optional import require_module

require_module("opentelemetry.sdk", "the tracing extra")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_recommend_is_traced_with_stage_spans_under_the_callers_trace(bundle_dir: Path) -> None:
    exporter = InMemorySpanExporter()
    with background_server(bundle_dir, span_exporter=exporter, trace="console") as live:
        with grpc.insecure_channel(live.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            request = pb.RecommendRequest(request_id="r1", history_item_ids=["1", "2"], k=3)
            response = stub.Recommend(request, metadata=[("traceparent", PARENT)], timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.Recommend(pb.RecommendRequest(k=3), timeout=30)  # empty history
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "/recsys.v1.RecommenderService/Recommend"]
    (call,) = [s for s in calls if s.attributes.get("irec.request_id") == "r1"]
    assert format(call.context.trace_id, "032x") == TRACE_ID  # continues the caller's trace
    assert call.attributes["irec.request_id"] == "r1"
    assert call.attributes["irec.bundle_version"] == response.bundle_version
    stages = [s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id]
    assert [s.name for s in stages] == ["irec.queue", "irec.tokenize", "irec.encode", "irec.search"]
    # Laid end to end inside the call, and as long as the response's own timing says.
    for before, after in zip(stages, stages[1:], strict=False):
        assert before.end_time == after.start_time
    assert call.start_time <= stages[0].start_time and stages[-1].end_time <= call.end_time + 10**6
    encode = next(s for s in stages if s.name == "irec.encode")
    assert encode.attributes["irec.ms"] == pytest.approx(response.timing.encode_ms, rel=1e-3)
    assert call.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    # The refused call is traced too, with its status code.
    (failed,) = [s for s in calls if s is not call]
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_tracing_off_by_default_and_unknown_kind_refused(bundle_dir: Path) -> None:
    assert ServerConfig(bundle=bundle_dir).trace is None
    from server.tracing import TracingUnavailable, setup_tracing

    with pytest.raises(TracingUnavailable, match="--trace"):
        setup_tracing("zipkin")
