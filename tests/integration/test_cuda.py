"""The CUDA path: fp16 encoder on CUDAExecutionProvider, checked against the CPU int8 path.

Skipped unless onnxruntime's CUDA provider really starts (a GPU and onnxruntime-gpu).
On a GPU machine without the training stack, point IREC_GPU_BUNDLE at an exported
bundle; otherwise the session's tiny bundle is used. Prints a latency table.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from server.bundle.text_encoder import CUDA

pytestmark = pytest.mark.gpu


def cuda_runs() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


@pytest.fixture(scope="module")
def gpu_bundle(request):  # type: ignore[no-untyped-def]
    if not cuda_runs():
        pytest.skip("onnxruntime has no CUDA provider here")
    env = os.environ.get("IREC_GPU_BUNDLE")
    return Path(env) if env else request.getfixturevalue("bundle_dir")


def median_ms(fn, repeats: int = 30) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def test_cuda_fp16_matches_cpu_int8_and_recommends_alike(gpu_bundle):
    from server.bundle.loader import load_bundle
    from server.core.engine import RecommenderEngine, RecommendQuery

    gpu = load_bundle(gpu_bundle, device="cuda")
    cpu = load_bundle(gpu_bundle, device="cpu")
    assert gpu.encoder.providers[0] == CUDA
    assert gpu.encoder.variant == "fp16"
    assert cpu.encoder.variant == "int8"

    texts = [item.text for item in gpu.items[:64]]
    on_gpu, on_cpu = gpu.encoder.encode(texts), cpu.encoder.encode(texts)
    gpu_vs_torch = (on_gpu * gpu.item_embeddings[:64]).sum(axis=1)
    gpu_vs_cpu = (on_gpu * on_cpu).sum(axis=1)
    assert gpu_vs_torch.mean() > 0.99, gpu_vs_torch.min()
    assert gpu_vs_cpu.mean() > 0.98

    overlaps = []
    for row in range(0, 40, 4):
        history = [gpu.items[r].item_id for r in (row, row + 1, row + 2)]
        a = RecommenderEngine(gpu).recommend(RecommendQuery(history_item_ids=history, k=10))
        b = RecommenderEngine(cpu).recommend(RecommendQuery(history_item_ids=history, k=10))
        overlaps.append(len({i.item_id for i in a.items} & {i.item_id for i in b.items}))
    assert np.mean(overlaps) >= 8, overlaps

    history_text = " | ".join(texts[:20])
    print("\n| encoder | 1 short text | 1 history | 32 histories |")
    print("|---|---|---|---|")
    for name, b in (("CUDA fp16", gpu), ("CPU int8", cpu)):
        cells = [
            median_ms(lambda b=b: b.encoder.encode(["space opera"])),
            median_ms(lambda b=b: b.encoder.encode([history_text])),
            median_ms(lambda b=b: b.encoder.encode([history_text] * 32), repeats=10),
        ]
        print(f"| {name} | " + " | ".join(f"{c:.2f} ms" for c in cells) + " |")


def test_server_reports_cuda(gpu_bundle):
    import asyncio

    import grpc

    from server.config import ServerConfig
    from server.generated.recsys.v1 import recommender_pb2 as pb
    from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from server.grpc.app import start_server

    async def scenario() -> None:
        running = await start_server(ServerConfig(bundle=gpu_bundle, port=0, device="cuda"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.RecommenderServiceStub(channel)
                info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
                assert info.providers[0] == CUDA and info.encoder_variant == "fp16"
                response = await stub.Recommend(
                    pb.RecommendRequest(
                        history_item_ids=[running.engine.bundle.items[0].item_id], k=5
                    ),
                    timeout=30,
                )
                assert len(response.items) == 5
        finally:
            await running.stop(1.0)

    asyncio.run(scenario())
