"""Optional OpenTelemetry tracing: a span per RPC and a child span per serving stage.

`--trace console|otlp` turns it on (the `tracing` extra installs the packages).
The gRPC instrumentation's aio interceptor opens one server span per call and
continues the caller's trace from the `traceparent` metadata; each Recommend
then adds children laid end to end from the request's arrival: queue, tokenize,
encode, search. The stage times are the ones the metrics and the response's
Timing report, so a trace, a histogram and a response never disagree. With
tracing off nothing here is imported and the request path pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from server.errors import IrecError


class TracingUnavailable(IrecError):
    """--trace was asked for but the OpenTelemetry packages are missing."""


class StageTracer:
    """Adds stage spans under the current (per-call) span."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def stages(
        self, arrived_ns: int, stages_ms: Sequence[tuple[str, float]], **attributes: Any
    ) -> None:
        """Children of the current span, one per (stage, ms), consecutive from arrived_ns."""
        from opentelemetry import trace

        parent = trace.get_current_span()
        parent.set_attributes({f"irec.{k}": v for k, v in attributes.items()})
        start = arrived_ns
        for name, ms in stages_ms:
            end = start + int(max(ms, 0.0) * 1e6)
            span = self._tracer.start_span(f"irec.{name}", start_time=start)
            span.set_attribute("irec.ms", float(ms))
            span.end(end_time=end)
            start = end


class Tracing:
    """What the server needs from tracing: its interceptor, the stage tracer, a shutdown."""

    def __init__(self, interceptor: Any, stages: StageTracer, provider: Any) -> None:
        self.interceptor = interceptor
        self.stages = stages
        self._provider = provider

    def shutdown(self) -> None:
        """Flush spans still buffered and stop the exporter."""
        self._provider.shutdown()


def setup_tracing(kind: str, exporter: Any = None) -> Tracing:
    """The server interceptor and a StageTracer for `kind` ("console" or "otlp").

    `exporter` overrides the span exporter (tests pass an in-memory one). The
    provider is private to the server, so tests can start several servers.
    """
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise TracingUnavailable(
            f"--trace {kind}: needs the tracing extra (missing {exc.name!r}): "
            "pip install 'irec[tracing]'"
        ) from exc
    service = os.environ.get("OTEL_SERVICE_NAME", "irec")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailable(
                "--trace otlp: needs opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'irec[tracing]')"
            ) from exc
        # Endpoint, headers and TLS come from the standard OTEL_EXPORTER_OTLP_* variables.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise TracingUnavailable(f"--trace: {kind!r} is not console or otlp")
    tracer = provider.get_tracer("irec.server")
    return Tracing(aio_server_interceptor(tracer_provider=provider), StageTracer(tracer), provider)
