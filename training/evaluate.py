"""Leave-one-out ranking metrics over the full catalogue (seen items excluded), with intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 1000


def mask_seen(scores: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """A float64 copy of scores with every user's history set to -inf."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    for u, history in enumerate(histories):
        if len(history):
            scores[u, list(history)] = -np.inf
    return scores


def target_ranks(
    scores: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int]
) -> np.ndarray:
    """0-based rank of each user's target among unseen items (ties count against it)."""
    masked = mask_seen(scores, histories)
    target_scores = masked[np.arange(len(targets)), list(targets)]
    return (masked >= target_scores[:, None]).sum(axis=1) - 1


def top_k(scores: np.ndarray, histories: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """Indices of each user's top-k unseen items [users, k], best first."""
    masked = mask_seen(scores, histories)
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(masked, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def hits_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k (1.0 or 0.0) from 0-based ranks of each user's one target."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k from 0-based ranks of each user's one target: 1/log2(rank + 2) if < k."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2), 0.0)


def mean_ndcg(ranks: np.ndarray, k: int = 10) -> float:
    """NDCG@k over users (the validation measure that chooses models and settings)."""
    return float(ndcg_at(ranks, k).mean())


def per_user(ranks: np.ndarray, ks: Sequence[int] = (10, 50)) -> dict[str, np.ndarray]:
    """Per-user HR@k, NDCG@k and reciprocal rank from 0-based ranks (rank ≥ big = miss)."""
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hr@{k}"] = hits_at(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at(ranks, k)
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def summarise(
    ranks: np.ndarray, seed: int = 0, ks: Sequence[int] = (10, 50), samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, dict[str, float]]:
    """Mean and 95% bootstrap interval (over users, seeded) of each metric."""
    rng = np.random.default_rng(seed)
    values = per_user(np.asarray(ranks), ks)
    draws = rng.integers(0, len(ranks), size=(samples, len(ranks)))
    result = {}
    for name, v in values.items():
        means = v[draws].mean(axis=1)
        result[name] = {
            "mean": float(v.mean()),
            "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)),
        }
    return result


def coverage(top: np.ndarray, num_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top list."""
    return float(len(np.unique(top)) / num_items)


def rank_metrics(
    scores: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int], k: int = 10
) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of full-catalogue scores [users, items] (point estimates)."""
    ranks = target_ranks(scores, histories, targets)
    values = per_user(ranks, (k,))
    return {name: float(v.mean()) for name, v in values.items()} | {"users": float(len(targets))}


def popularity_scores(
    sequences: Sequence[Sequence[int]], num_items: int, num_users: int
) -> np.ndarray:
    """Every user gets the same scores: interaction counts over the training sequences."""
    counts = np.bincount([r for s in sequences for r in s], minlength=num_items).astype(np.float64)
    return np.broadcast_to(counts, (num_users, num_items))
