"""Build and run the grpc.aio server: recommender service, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.batcher import MicroBatcher
from server.bundle import load_bundle
from server.config import ServerConfig
from server.engine import Limits, PreparedQuery, RecommenderEngine
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.service import RecommenderServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


class RunningServer:
    """A started server, the port it got, and what must be closed with it."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: health.aio.HealthServicer,
        executor: ThreadPoolExecutor,
        engine: RecommenderEngine,
        batcher: MicroBatcher[PreparedQuery],
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.executor = executor
        self.engine = engine
        self.batcher = batcher

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, drain in-flight calls for grace_s, then close the pool."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.batcher.close()
        self.executor.shutdown(wait=True, cancel_futures=True)


async def start_server(config: ServerConfig) -> RunningServer:
    """Load the bundle (refusing a bad one before binding), then bind and start.

    Binding port 0 picks a free port; the port the server got is returned, so
    tests never race on a port chosen in advance.
    """
    bundle = load_bundle(config.bundle, config.device, config.intra_op_threads)
    engine = RecommenderEngine(bundle, Limits(max_k=config.max_k))
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="irec-engine")
    max_bytes = config.max_message_mb * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ]
    )
    batcher = MicroBatcher(
        engine.user_vectors,
        lambda q: q.cost,
        executor,
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
    )
    pb_grpc.add_RecommenderServiceServicer_to_server(
        RecommenderServicer(engine, executor, batcher, config.stream_in_flight), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, executor, engine, batcher)


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
