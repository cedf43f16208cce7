"""Retrieval modes at one candidate budget: one user vector, the user's cluster, several interests.

Multi-interest follows PinnerSage (KDD 2020): cluster the user's recent items (Ward), use
each cluster's medoid as a query, weigh clusters by Σ exp(-λ·age), and split the budget
across interests by weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import AgglomerativeClustering

RECENT_ITEMS = 50
MAX_INTERESTS = 3
AGE_DECAY = 0.1  # λ in exp(-λ·age), age counted in items back from the most recent


def interest_queries(
    item_vectors: np.ndarray, history: Sequence[int], max_interests: int = MAX_INTERESTS
) -> list[tuple[np.ndarray, float]]:
    """(medoid vector, importance) per interest, most important first."""
    recent = np.asarray(list(history)[-RECENT_ITEMS:])
    vectors = item_vectors[recent]
    ages = np.arange(len(recent))[::-1]
    n = min(max_interests, len(recent))
    labels = (
        np.zeros(len(recent), dtype=int)
        if n < 2
        else AgglomerativeClustering(n_clusters=n, linkage="ward").fit_predict(vectors)
    )
    queries = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        sub = vectors[members]
        distances = ((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1).sum(1)
        medoid = sub[int(np.argmin(distances))]
        queries.append((medoid, float(np.exp(-AGE_DECAY * ages[members]).sum())))
    return sorted(queries, key=lambda q: -q[1])


def split_budget(weights: Sequence[float], k: int) -> list[int]:
    """Largest-remainder split of k slots by weight (every interest gets at least one)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = w / w.sum() * k
    slots = np.maximum(np.floor(raw).astype(int), 1)
    while slots.sum() > k:
        slots[int(np.argmax(slots))] -= 1
    order = np.argsort(-(raw - np.floor(raw)))
    i = 0
    while slots.sum() < k:
        slots[order[i % len(order)]] += 1
        i += 1
    return slots.tolist()


def merge_queries(
    queries: Sequence[tuple[np.ndarray, float]],
    item_vectors: np.ndarray,
    seen: set[int],
    k: int,
    allowed: np.ndarray | None = None,
) -> list[int]:
    """Fill k slots from several queries by budget share; no duplicates, no seen items."""
    chosen: list[int] = []
    taken = set(seen)
    for (vector, _), slots in zip(queries, split_budget([q[1] for q in queries], k), strict=True):
        scores = item_vectors @ vector
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        for row in np.argsort(-scores):
            if len(chosen) >= k or slots == 0 or not np.isfinite(scores[row]):
                break
            if int(row) not in taken:
                chosen.append(int(row))
                taken.add(int(row))
                slots -= 1
    return chosen


def hits_from_lists(lists: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """0-based rank of each target within its list; len(list) + huge when absent."""
    ranks = np.full(len(targets), 10**9, dtype=np.int64)
    for u, (items, target) in enumerate(zip(lists, targets, strict=True)):
        if target in items:
            ranks[u] = list(items).index(target)
    return ranks
