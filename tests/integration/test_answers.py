"""Serving changes keep the answers: a fixed request set against a stored answer file.

The bundle is built here from seeded arrays and a sequence head with seeded weights (no
training, so it is the same on every machine): ID histories → head ONNX (fp32) → clusters
and HNSW (ef ≥ the catalogue: exact) → the response. The requests go through a real
server. `IREC_WRITE_ANSWERS=1 pytest tests/integration/test_answers.py` rewrites the file
(only when an answer is meant to change, and the commit says why).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from export.bundle_writer import (
    checksum_files,
    new_version,
    write_cluster_indexes,
    write_clusters,
    write_items,
)
from export.item_index import build_index, save_index
from export.onnx_head import export_head
from server.bundle import manifest as fmt
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server
from training.sequence_head import HeadConfig, SequenceHead

ANSWERS = Path(__file__).resolve().parent.parent / "data" / "answers.json"
ITEMS, DIM, CLUSTERS = 300, 16, 6
# Scores may differ in the last float bits between CPUs; items whose scores are this close
# may swap places.
TOLERANCE = 1e-4


def _fixed_bundle(source: Path, out: Path) -> Path:
    """A bundle whose every number comes from a seed (tokenizer/encoder copied from source)."""
    source_manifest = fmt.read_manifest(source)
    # The encoder is checked at load to give the head's text dimension.
    spec = source_manifest.sequence_head
    text_dim = spec.text_dimension if spec else source_manifest.dimension
    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    text = rng.standard_normal((ITEMS, text_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    # The architecture is pinned here, so a change of HeadConfig's defaults does not change
    # the stored answers (they were rewritten when the head became text + capped ID delta).
    config = HeadConfig(dim=DIM, max_length=12, dropout=0.0, heads=1, feedforward=4, delta_cap=1.0)
    head = SequenceHead(torch.from_numpy(text), config)
    out.mkdir(parents=True)
    for name in {fmt.TOKENIZER_FILE, *source_manifest.encoders.values()}:
        shutil.copy(source / name, out / name)
    export_head(head.eval(), out / fmt.USER_HEAD_FILE)
    np.save(out / fmt.ITEM_TEXT_EMBEDDINGS_FILE, text)
    projection = head.text_projection.weight.detach().numpy().astype(np.float32)
    np.save(out / fmt.ITEM_TEXT_PROJECTION_FILE, projection)
    vectors = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
    np.save(out / fmt.ITEM_EMBEDDINGS_FILE, vectors)
    centroids = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    np.save(out / fmt.CENTROIDS_FILE, centroids)
    write_items(
        out,
        [{"id": f"i{row}", "title": f"Item {row}", "text": f"item {row}"} for row in range(ITEMS)],
    )
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    nearest = np.argmax(unit @ centroids.T, axis=1)
    clusters = [
        {
            "id": c,
            "description": f"group {c}",
            "size": int((nearest == c).sum()),
            "item_rows": np.flatnonzero(nearest == c).tolist(),
            "top_items": np.flatnonzero(nearest == c)[:3].tolist(),
        }
        for c in range(CLUSTERS)
    ]
    write_clusters(out, clusters)
    hnsw = fmt.HnswParams(
        ef_search=ITEMS,  # ≥ the catalogue: the search is exact, the answer fixed
        mips_max_norm=float(np.linalg.norm(vectors, axis=1).max()) * 1.0001,
    )
    save_index(build_index(vectors, range(ITEMS), hnsw), out / fmt.ALL_ITEMS_INDEX_FILE)
    write_cluster_indexes(out, vectors, clusters, hnsw)
    files = checksum_files(out)
    manifest = replace(
        source_manifest,
        bundle_version=new_version(files),
        num_items=ITEMS,
        dimension=DIM,
        num_clusters=CLUSTERS,
        hnsw=hnsw,
        files=files,
        default_retrieval_mode="all_items",
        sequence_head=fmt.SequenceHeadSpec(
            file=fmt.USER_HEAD_FILE,
            text_embeddings=fmt.ITEM_TEXT_EMBEDDINGS_FILE,
            max_length=12,
            text_dimension=text_dim,
            parity_cosine_min=1.0,
            trained_items=ITEMS,
            projection=fmt.ITEM_TEXT_PROJECTION_FILE,
        ),
    )
    (out / fmt.MANIFEST_FILE).write_text(manifest.to_json())
    return out


def _requests() -> list[pb.RecommendRequest]:
    """Seeded ID histories, every retrieval mode, with and without several interests."""
    rng = np.random.default_rng(11)
    requests = []
    for i in range(48):
        history = [f"i{row}" for row in rng.choice(ITEMS, size=int(rng.integers(1, 20)))]
        requests.append(
            pb.RecommendRequest(
                request_id=str(i),
                history_item_ids=history,
                k=int(rng.integers(1, 15)),
                mode=(
                    pb.RETRIEVAL_MODE_UNSPECIFIED,
                    pb.RETRIEVAL_MODE_ALL_ITEMS,
                    pb.RETRIEVAL_MODE_CLUSTER,
                )[i % 3],
                num_interests=2 if i % 4 == 3 else 0,
            )
        )
    return requests


def _answer(response: pb.RecommendResponse) -> dict[str, object]:
    return {
        "items": [[s.item_id, round(s.score, 6)] for s in response.items],
        "clusters": [c.cluster_id for c in response.clusters],
        "interests": [[i.cluster_id, [s.item_id for s in i.items]] for i in response.interests],
    }


def _same_ranking(got: list[list[object]], want: list[list[object]]) -> bool:
    """Same items and scores, in the same order except among scores within TOLERANCE."""
    if len(got) != len(want):
        return False
    for (gid, gscore), (wid, wscore) in zip(got, want, strict=True):
        if abs(float(gscore) - float(wscore)) > TOLERANCE:  # type: ignore[arg-type]
            return False
        if gid != wid:
            tied = [w for w in want if abs(float(w[1]) - float(gscore)) <= TOLERANCE]  # type: ignore[arg-type]
            if gid not in {w[0] for w in tied}:
                return False
    return True


@pytest.fixture(scope="module")
def fixed_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fixed_bundle(bundle_dir, tmp_path_factory.mktemp("fixed") / "bundle")


# One at a time on a worker thread; one at a time on the event loop (--lone-requests
# loop); all at once, so they are batched and searched in one hnswlib call per batch.
WAYS = ("pool, one at a time", "loop, one at a time", "pool, all at once")


@pytest.fixture(scope="module", params=WAYS)
def answers(fixed_bundle: Path, request: pytest.FixtureRequest) -> list[dict[str, object]]:
    lone = "loop" if request.param.startswith("loop") else "pool"
    with (
        background_server(fixed_bundle, lone_requests=lone) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.RecommenderServiceStub(channel)
        if request.param.endswith("all at once"):
            calls = [stub.Recommend.future(r, timeout=30) for r in _requests()]
            got = [_answer(call.result()) for call in calls]
            assert server.running.batcher.stats.largest > 1
        else:
            got = [_answer(stub.Recommend(r, timeout=30)) for r in _requests()]
        inline = server.running.batcher.inline_runs
        assert (inline == len(got)) if lone == "loop" else (inline == 0)
        return got


def test_served_answers_equal_the_stored_ones(answers: list[dict[str, object]]) -> None:
    if os.environ.get("IREC_WRITE_ANSWERS") == "1":
        ANSWERS.parent.mkdir(parents=True, exist_ok=True)
        ANSWERS.write_text(json.dumps(answers, indent=1) + "\n")
    stored = json.loads(ANSWERS.read_text())
    assert len(answers) == len(stored) == 48
    assert any(a["interests"] for a in stored), "the set must exercise several interests"
    for i, (got, want) in enumerate(zip(answers, stored, strict=True)):
        assert _same_ranking(got["items"], want["items"]), f"request {i}: {got} != {want}"  # type: ignore[arg-type]
        assert got["clusters"] == want["clusters"], f"request {i}"
        assert got["interests"] == want["interests"], f"request {i}"


def test_a_changed_answer_is_caught(answers: list[dict[str, object]]) -> None:
    stored = json.loads(ANSWERS.read_text())
    items = stored[0]["items"]
    assert _same_ranking(items, items)
    swapped = [items[1], items[0], *items[2:]] if len(items) > 1 else items
    if len(items) > 1 and abs(items[0][1] - items[1][1]) > TOLERANCE:
        assert not _same_ranking(swapped, items)
    nudged = [[items[0][0], items[0][1] + 10 * TOLERANCE], *items[1:]]
    assert not _same_ranking(nudged, items)
