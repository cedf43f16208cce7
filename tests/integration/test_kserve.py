"""KServe v2 / Open Inference Protocol, called with the real tritonclient package.

tritonclient registers the same protobuf names as our generated code, so the client
runs in a child process, against the server in another.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from irec.server_process import spawn_server

ROOT = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url=sys.argv[1])
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("irec-recommender"),
        "metadata": client.get_model_metadata("irec-encoder", as_json=True),
    }
    text = tc.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"jazz quartet", b"haunted crypt"], dtype=object))
    emb = client.infer("irec-encoder", [text], outputs=[tc.InferRequestedOutput("EMBEDDING")])
    vectors = emb.as_numpy("EMBEDDING")
    out["embedding_shape"] = list(vectors.shape)
    out["norms"] = np.linalg.norm(vectors, axis=1).tolist()
    history = tc.InferInput("HISTORY_ITEM_IDS", [3], "BYTES")
    history.set_data_from_numpy(np.array([b"1", b"2", b"3"], dtype=object))
    k = tc.InferInput("K", [1], "INT32")
    k.set_data_from_numpy(np.array([4], dtype=np.int32))
    rec = client.infer("irec-recommender", [history, k])
    out["item_ids"] = [i.decode() for i in rec.as_numpy("ITEM_IDS")]
    out["scores"] = rec.as_numpy("SCORES").tolist()
    out["clusters"] = rec.as_numpy("CLUSTER_IDS").tolist()
    try:
        client.infer("no-such-model", [text])
    except InferenceServerException as exc:
        out["unknown_model"] = exc.status()
    print(json.dumps(out))
    """
)


def has_tritonclient() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import tritonclient.grpc"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not has_tritonclient(), reason="tritonclient not installed (make venv)")
def test_tritonclient_calls_encoder_and_recommender(bundle_dir, tmp_path):
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
