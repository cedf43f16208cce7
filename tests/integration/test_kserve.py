"""KServe v2 / Open Inference Protocol: the real tritonclient, and overload through dispatch.

tritonclient registers the same protobuf names as our generated code, so that client
runs in a child process, against the server in another; the overload test sends raw
ModelInfer requests with the generated code itself.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import grpc
import pytest

from irec.server_process import spawn_server
from server.generated.inference import grpc_service_pb2 as kpb
from tests.conftest import background_server
from tests.integration.test_metrics import scrape
from tests.optional import missing, module_present

ROOT = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url=sys.argv[1])
    out = {
        "live": client.is_server_live(client_timeout=30),
        "ready": client.is_server_ready(client_timeout=30),
        "model_ready": client.is_model_ready("irec-recommender", client_timeout=30),
        "metadata": client.get_model_metadata("irec-encoder", as_json=True, client_timeout=30),
    }
    text = tc.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"jazz quartet", b"haunted crypt"], dtype=object))
    emb = client.infer("irec-encoder", [text], outputs=[tc.InferRequestedOutput("EMBEDDING")],
        client_timeout=30)
    vectors = emb.as_numpy("EMBEDDING")
    out["embedding_shape"] = list(vectors.shape)
    out["norms"] = np.linalg.norm(vectors, axis=1).tolist()
    history = tc.InferInput("HISTORY_ITEM_IDS", [3], "BYTES")
    history.set_data_from_numpy(np.array([b"1", b"2", b"3"], dtype=object))
    k = tc.InferInput("K", [1], "INT32")
    k.set_data_from_numpy(np.array([4], dtype=np.int32))
    rec = client.infer("irec-recommender", [history, k], client_timeout=30)
    out["item_ids"] = [i.decode() for i in rec.as_numpy("ITEM_IDS")]
    out["scores"] = rec.as_numpy("SCORES").tolist()
    out["clusters"] = rec.as_numpy("CLUSTER_IDS").tolist()
    try:
        client.infer("no-such-model", [text], client_timeout=30)
    except InferenceServerException as exc:
        out["unknown_model"] = exc.status()
    print(json.dumps(out))
    """
)


def require_tritonclient() -> None:
    """Absent: skipped locally, a failure in CI. Present but broken: always a failure.

    The import is tried in a child process: tritonclient goes in without its dependencies
    (make venv), and a half-working install must not break this process's protobuf.
    """
    if not module_present("tritonclient"):
        missing("tritonclient (make venv)")
    probe = subprocess.run(
        [sys.executable, "-c", "import tritonclient.grpc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, f"tritonclient is installed but does not import:\n{probe.stderr}"


def test_tritonclient_calls_encoder_and_recommender(bundle_dir, tmp_path):
    require_tritonclient()
    process, port = spawn_server(
        ["--bundle", str(bundle_dir)], tmp_path / "port", subprocess.PIPE, 60, cwd=ROOT
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", CLIENT, f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["metadata"]["outputs"][0]["name"] == "EMBEDDING"
    assert out["embedding_shape"] == [2, 32]
    assert all(abs(n - 1) < 1e-2 for n in out["norms"])
    assert len(out["item_ids"]) == 4 and not {"1", "2", "3"} & set(out["item_ids"])
    assert out["scores"] == sorted(out["scores"], reverse=True)
    assert len(out["clusters"]) == 3
    assert out["unknown_model"] == "StatusCode.NOT_FOUND"


MAX_QUEUE = 4
BURST = 400
CHANNELS = 8


def _infer_request(i: int, model: str) -> kpb.ModelInferRequest:
    """One raw-tensor ModelInfer request, as tritonclient sends it."""
    request = kpb.ModelInferRequest(model_name=model, id=f"r{i}")
    if model == "irec-encoder":
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
        values = [f"a long free text about jazz and horror number {i} ".encode() * 8]
    else:
        request.inputs.add(name="HISTORY_ITEM_IDS", datatype="BYTES", shape=[40])
        values = [str(1 + (i * 13 + j) % 360).encode() for j in range(40)]
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in values))
    return request


async def _burst(target: str, model: str) -> list[tuple[str, str]]:
    """BURST concurrent ModelInfer calls; (status code name, details) of each."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]

    async def call(i: int) -> tuple[str, str]:
        infer = channels[i % CHANNELS].unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=kpb.ModelInferRequest.SerializeToString,
            response_deserializer=kpb.ModelInferResponse.FromString,
        )
        try:
            answer = await infer(_infer_request(i, model), timeout=60)
            return ("OK" if answer.raw_output_contents else "EMPTY"), ""
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""

    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        return await asyncio.gather(*(call(i) for i in range(BURST)))
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.parametrize("model", ["irec-recommender", "irec-encoder"])
def test_model_infer_is_admitted_batched_and_counted_like_recsys(bundle_dir, model):
    # ModelInfer goes through the same dispatch as recsys.v1: past --max-queue waiting
    # requests it is refused at once, accepted calls share encoder runs, and /metrics
    # counts every call under rpc="ModelInfer".
    options = {"max_queue": MAX_QUEUE, "max_batch": 4, "workers": 1, "metrics_port": 0}
    with background_server(bundle_dir, **options) as server:
        outcomes = asyncio.run(_burst(server.target, model))
        metrics = scrape(server.running.metrics_port)
    codes = Counter(code for code, _ in outcomes)
    print(f"\n{model}: {BURST} concurrent calls against --max-queue {MAX_QUEUE}: {dict(codes)}")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= MAX_QUEUE and codes["RESOURCE_EXHAUSTED"] >= 1
    assert all(d.startswith("server overloaded") for c, d in outcomes if c != "OK")
    for code, count in codes.items():
        assert metrics[f'irec_requests_total{{code="{code}",rpc="ModelInfer"}}'] == count
    queued = metrics['irec_request_seconds_count{rpc="ModelInfer",stage="queue"}']
    assert queued == codes["OK"]
    assert metrics["irec_batch_size_sum"] == codes["OK"]  # one batcher item per call
    assert metrics["irec_batch_size_count"] < metrics["irec_batch_size_sum"]  # some batch > 1
