"""The text-history track of `irec eval`: histories written as titles, over a live server.

The served path for free texts: each test user's last titles (no item IDs) go to a real
`irec serve` on loopback; its int8 encoder, ONNX head and HNSW answer.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from irec.protocol import EvalConfig, Split
from training.evaluate import summarise
from training.multi_interest import hits_from_lists

log = logging.getLogger(__name__)

# The server takes at most 64 texts per request (server.core.engine.Limits.max_texts): a
# written history is its most recent titles.
TEXT_HISTORY_ITEMS = 50


def text_history_track(
    config: EvalConfig,
    split: Split,
    titles: list[str],
    row_of: dict[str, int],
    bundle: Path,
) -> dict[str, Any]:
    """Each test user's history as titles (no IDs) through a live `irec serve`.

    The served path for free texts and new items: the bundle's int8 encoder reads the
    titles, the ONNX head makes the user, HNSW finds the items. A text request names no
    item IDs, so the server cannot drop seen items: the client asks for enough items
    and drops the user's history itself, as the protocol does for every row.
    """
    import grpc

    from irec.client import RecommenderClient
    from irec.server_process import spawn_server
    from server.generated.recsys.v1 import recommender_pb2 as pb

    cfg, s = config, split
    users = list(range(len(s.test_histories)))
    if cfg.text_history_users is not None and cfg.text_history_users < len(users):
        users = sorted(random.Random(cfg.seed).sample(users, cfg.text_history_users))
    server_log = (cfg.out / "text-history-server.log").open("w")
    process, port = spawn_server(
        ["--bundle", str(bundle), "--device", "cpu"], cfg.out / "text-history.port", server_log
    )
    lists: list[list[int]] = []
    started = time.perf_counter()
    try:
        requests = (
            pb.RecommendRequest(
                request_id=str(u),
                history_texts=[titles[r] for r in s.test_histories[u][-TEXT_HISTORY_ITEMS:]],
                k=min(1000, 10 + len(set(s.test_histories[u]))),
            )
            for u in users
        )
        with RecommenderClient(f"127.0.0.1:{port}", timeout_s=3600) as client:
            answers = {}
            for response in client.recommend_stream(requests):
                if response.HasField("error"):
                    raise RuntimeError(
                        f"text history {response.request_id}: {response.error.message}"
                    )
                answers[int(response.request_id)] = response
        for u in users:
            seen = set(s.test_histories[u])
            rows = [row_of[i.item_id] for i in answers[u].items]
            lists.append([r for r in rows if r not in seen][:10])
    except grpc.RpcError as exc:
        raise RuntimeError(f"text-history track: {exc.code().name}: {exc.details()}") from exc
    finally:
        process.terminate()
        process.wait(timeout=30)
        server_log.close()
    seconds = time.perf_counter() - started
    targets = [s.test_targets[u] for u in users]
    ranks = hits_from_lists(lists, targets)
    metrics = summarise(np.minimum(ranks, 10**6), seed=cfg.seed, ks=(10,))
    metrics.pop("mrr")
    result = {
        "ndcg10": metrics["ndcg@10"]["mean"],
        "metrics": metrics,
        "users": len(users),
        "titles_per_user": TEXT_HISTORY_ITEMS,
        "path": "titles → int8 ONNX encoder → ONNX head → HNSW, over gRPC (RecommendStream)",
        "seconds": seconds,
    }
    log.info(
        "text-history track (%d users, last %d titles, live server): NDCG@10 %.4f",
        len(users),
        TEXT_HISTORY_ITEMS,
        metrics["ndcg@10"]["mean"],
    )
    return result
