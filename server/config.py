"""Server settings as one frozen dataclass, resolved in main() from flags and IREC_* env vars."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    """How to load the bundle and where to listen."""

    bundle: Path
    host: str = "127.0.0.1"
    port: int = 50051
    device: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 0  # 0 = onnxruntime's default (physical cores)
    workers: int = 4  # threads running encode + search
    max_k: int = 1000
    max_message_mb: int = 16
    grace_s: float = 5.0  # drain time on SIGTERM / SIGINT
    port_file: Path | None = None  # written with the bound port once serving
    max_batch: int = 32  # requests per encoder run
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_queue: int = 1024  # waiting requests before RESOURCE_EXHAUSTED
    stream_in_flight: int = 64  # messages of one stream processed at once
    max_streams: int = 256  # concurrent RecommendStream calls before RESOURCE_EXHAUSTED
    metrics_port: int | None = None  # Prometheus /metrics side port (None = off, 0 = any)
    tls_cert: Path | None = None  # server certificate (PEM): TLS on
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # CA that signs client certificates: mutual TLS
    catalogue_log: Path | None = None  # AddItems/RemoveItems log, replayed on every load
    watch_dir: Path | None = None  # serve the newest bundle that appears in this folder
    watch_interval_s: float = 2.0
    auth_token: str | None = None  # bearer token required on every non-health call
    # Close client connections after this age (None = never) so clients re-resolve DNS and
    # spread over new replicas; calls on an aged connection get the grace to finish.
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float = 30.0
    trace: str | None = None  # OpenTelemetry exporter: None (off) | "console" | "otlp"
