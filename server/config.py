"""Serve settings: one frozen dataclass, the one source of their defaults.

`irec serve` builds its options from these fields (flag, help, type, choices, default;
each with an IREC_SERVE_* twin) and the config from the parsed options, with no copy in
between (irec.options). The batcher, the engine's limits, batch inference, the
benchmarks and the Kubernetes manifests (a test checks them) take their defaults from
here. Resolved in main() from flags and environment, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def option(
    help: str,  # noqa: A002
    flag: str | None = None,
    choices: Sequence[str] = (),
    short: str | None = None,
) -> dict[str, Any]:
    """Field metadata that makes a field a command-line option (default flag: --field-name)."""
    return {"help": help, "flag": flag, "choices": tuple(choices), "short": short}


@dataclass(frozen=True)
class ServerConfig:
    """How to load the bundle, where to listen, and how much work to take at once."""

    bundle: Path = field(metadata=option("bundle folder"))
    host: str = field(
        default="127.0.0.1", metadata=option("address to bind (0.0.0.0 for all interfaces)")
    )
    port: int = field(default=50051, metadata=option("port to bind; 0 picks a free one"))
    port_file: Path | None = field(
        default=None, metadata=option("write the bound port here once serving")
    )
    device: str = field(
        default="auto", metadata=option("ONNX Runtime device", choices=("auto", "cpu", "cuda"))
    )
    intra_op_threads: int = field(
        default=0, metadata=option("ONNX Runtime intra-op threads (0 = per core)", "--threads")
    )
    workers: int = field(default=4, metadata=option("threads running encode and search"))
    lone_requests: str = field(
        default="pool",
        metadata=option(
            "where a lone ID-history request on a sequence-head bundle runs when the server "
            "is idle: on the event loop (no thread hop) or on a worker thread",
            choices=("loop", "pool"),
        ),
    )
    max_k: int = field(default=1000, metadata=option("largest k a request may ask for"))
    grace_s: float = field(
        default=5.0, metadata=option("seconds to drain in-flight calls on stop", "--grace")
    )
    max_batch: int = field(default=32, metadata=option("requests gathered into one encoder run"))
    max_wait_ms: float = field(default=2.0, metadata=option("how long a batch waits to fill"))
    max_queue: int = field(
        default=1024, metadata=option("waiting requests before RESOURCE_EXHAUSTED")
    )
    max_streams: int = field(
        default=256, metadata=option("concurrent streams before RESOURCE_EXHAUSTED")
    )
    max_message_mb: int = field(default=16, metadata=option("largest message either way, MiB"))
    metrics_port: int | None = field(
        default=None, metadata=option("serve Prometheus /metrics on this port (0 = any)")
    )
    tls_cert: Path | None = field(
        default=None, metadata=option("server certificate (PEM); with --tls-key turns TLS on")
    )
    tls_key: Path | None = field(default=None, metadata=option("server private key (PEM)"))
    tls_client_ca: Path | None = field(
        default=None, metadata=option("CA of client certificates: mutual TLS")
    )
    catalogue_log: Path | None = field(
        default=None, metadata=option("log of AddItems/RemoveItems, replayed at load")
    )
    watch_dir: Path | None = field(
        default=None, metadata=option("serve the newest bundle that appears in this folder")
    )
    watch_interval_s: float = field(
        default=2.0, metadata=option("seconds between --watch-dir scans", "--watch-interval")
    )
    auth_token: str | None = field(
        default=None, metadata=option("bearer token every non-health call must carry")
    )
    # Close client connections after this age (None = never) so clients re-resolve DNS and
    # spread over new replicas; calls on an aged connection get the grace to finish.
    max_connection_age_s: float | None = field(
        default=None,
        metadata=option(
            "close each client connection after this many seconds so clients re-resolve "
            "DNS and rebalance over replicas (default: never)",
            "--max-connection-age",
        ),
    )
    max_connection_age_grace_s: float = field(
        default=30.0,
        metadata=option(
            "seconds calls on an aged connection get to finish", "--max-connection-age-grace"
        ),
    )
    trace: str | None = field(
        default=None,
        metadata=option(
            "OpenTelemetry traces: a span per call with queue/tokenize/encode/search "
            "children, printed (console) or sent to OTEL_EXPORTER_OTLP_ENDPOINT (otlp)",
            choices=("console", "otlp"),
        ),
    )
    # Not an option: messages of one stream processed at once (they batch with each other
    # and with unary calls); more wait, and gRPC flow control pushes back on the client.
    stream_in_flight: int = 64


def default_target() -> str:
    """HOST:PORT of a server started with the default host and port."""
    return f"{ServerConfig.host}:{ServerConfig.port}"
