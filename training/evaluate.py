"""Leave-one-out ranking metrics: each user's last item is the target; seen items excluded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_metrics(
    scores: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int], k: int = 10
) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of full-catalogue scores [users, items]."""
    scores = scores.astype(np.float64, copy=True)
    for u, history in enumerate(histories):
        scores[u, list(history)] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets]
    ranks = (scores > target_scores[:, None]).sum(axis=1)  # 0 = best
    hits = ranks < k
    return {
        f"hr@{k}": float(hits.mean()),
        f"ndcg@{k}": float(np.where(hits, 1.0 / np.log2(ranks + 2), 0.0).mean()),
        "mrr": float((1.0 / (ranks + 1)).mean()),
        "users": float(len(targets)),
    }


def popularity_scores(
    sequences: Sequence[Sequence[int]], num_items: int, num_users: int
) -> np.ndarray:
    """Every user gets the same scores: interaction counts over the training sequences."""
    counts = np.bincount([r for s in sequences for r in s], minlength=num_items).astype(np.float64)
    return np.broadcast_to(counts, (num_users, num_items))
