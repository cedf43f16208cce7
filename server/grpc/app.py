"""Build and run the grpc.aio server: recsys.v1, KServe v2, health, reflection; graceful stop.

The servicers (server.grpc.recsys_v1, server.grpc.kserve_v2) sit on one Dispatcher
(server.core.dispatch), which owns the worker pool and the served bundle; the
interceptors are tracing, the bearer token (server.grpc.security) and malformed requests
(server.grpc.malformed_requests).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import ServerConfig
from server.core.batcher import MicroBatcher
from server.core.dispatch import Dispatcher
from server.core.engine import PreparedQuery, Recommendation, RecommenderEngine
from server.core.model_slot import ServingState
from server.generated.inference import grpc_service_pb2 as kpb
from server.generated.inference import grpc_service_pb2_grpc as kpb_grpc
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.grpc.kserve_v2 import InferenceServicer
from server.grpc.malformed_requests import MalformedRequestInterceptor
from server.grpc.recsys_v1 import RecommenderAdminServicer, RecommenderServicer
from server.grpc.security import BearerTokenInterceptor, server_credentials
from server.metrics import Metrics
from server.tracing import Tracing, setup_tracing

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderAdmin"].full_name
KSERVE_SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class RunningServer:
    """A started server, the port it got, and what it serves."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: health.aio.HealthServicer,
        dispatch: Dispatcher,
        tracing: Tracing | None = None,
    ) -> None:
        self.server = server
        self.tracing = tracing
        self.port = port
        self.health = health_servicer
        self.dispatch = dispatch
        self.metrics_port: int | None = None
        self.watcher: asyncio.Task[None] | None = None

    @property
    def state(self) -> ServingState:
        """What is served now, and how it is replaced."""
        return self.dispatch.state

    @property
    def engine(self) -> RecommenderEngine:
        """The engine of the bundle served now."""
        return self.state.current().engine

    @property
    def batcher(self) -> MicroBatcher[PreparedQuery, Recommendation]:
        """The batcher of the bundle served now."""
        return self.state.current().batcher

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, drain in-flight calls for grace_s, then close the pool."""
        if self.watcher is not None:
            self.watcher.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.dispatch.close()
        if self.tracing is not None:
            self.tracing.shutdown()


def _channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Server channel options: message size limits both ways, optional max connection age."""
    max_bytes = config.max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]
    if config.max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
        ]
    return options


async def start_server(config: ServerConfig, span_exporter: Any = None) -> RunningServer:
    """Bind and start, then load and warm the bundle; readiness follows the bundle.

    Health: the whole server ("") is SERVING as soon as it listens (liveness does not
    depend on the model); `recsys.v1.RecommenderService` is NOT_SERVING until the
    bundle is loaded and warmed, and again while draining. A bad bundle at start
    stops the server and raises BundleError. Binding port 0 picks a free port; the
    port the server got is returned, so tests never race on a port chosen in advance.
    """
    interceptors: list[Any] = []
    tracing = None
    if config.trace is not None:
        # Outermost, so refused calls (bad token) are traced too.
        tracing = setup_tracing(config.trace, span_exporter)
        interceptors.append(tracing.interceptor)
    if config.auth_token:
        interceptors.append(BearerTokenInterceptor(config.auth_token))
    # Innermost: requests that do not parse get INVALID_ARGUMENT (server.grpc.malformed_requests).
    interceptors.append(MalformedRequestInterceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=_channel_options(config),
    )
    metrics = Metrics()
    dispatch = Dispatcher(config, metrics, tracing.stages if tracing is not None else None)
    pb_grpc.add_RecommenderServiceServicer_to_server(RecommenderServicer(dispatch), server)
    pb_grpc.add_RecommenderAdminServicer_to_server(RecommenderAdminServicer(dispatch), server)
    kpb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dispatch), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            KSERVE_SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        port = server.add_secure_port(address, credentials)
    elif config.tls_cert is not None or config.tls_key is not None or config.tls_client_ca:
        raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, port, health_servicer, dispatch, tracing)
    if config.metrics_port is not None:
        running.metrics_port = metrics.serve_http(config.host, config.metrics_port)
    try:
        await dispatch.state.load(config.bundle)
    except BaseException:
        await server.stop(0)
        dispatch.executor.shutdown(wait=False, cancel_futures=True)
        raise
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    if config.watch_dir is not None:
        running.watcher = asyncio.get_running_loop().create_task(
            dispatch.state.watch(config.watch_dir, config.watch_interval_s)
        )
    return running


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    running = await start_server(config)
    manifest = running.engine.bundle.manifest
    log.info(
        "serving bundle %s on %s:%d (providers %s)",
        manifest.bundle_version,
        config.host,
        running.port,
        ",".join(running.engine.bundle.encoder.providers),
    )
    if config.port_file is not None:
        tmp = config.port_file.with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(config.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining for up to %.1f s", config.grace_s)
    await running.stop(config.grace_s)
    log.info("stopped")
