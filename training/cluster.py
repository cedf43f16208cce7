"""Group users into interest clusters (K-Means on unit embeddings) and describe each cluster."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

# Range searched when K is chosen automatically, and the users sampled to score it.
AUTO_K_RANGE = range(4, 17)
SILHOUETTE_SAMPLE = 3000
# Items consumed most by a cluster's members join its index (besides the items
# nearest its centroid), so cluster search covers what the cluster really takes.
POPULAR_ITEMS_PER_CLUSTER = 100
# A secondary term joins a cluster's description only above this share of the
# cluster's interactions (else a one-interest cluster gets noise for terms 2-3).
MIN_TERM_SHARE = 0.15
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_STOPWORDS = {"the", "and", "of", "for", "with", "from", "into", "a", "an", "in", "on"}


@dataclass(frozen=True)
class Clustering:
    """Cluster centroids (unit rows), each user's cluster, descriptions and item sets."""

    centroids: np.ndarray
    labels: np.ndarray
    descriptions: list[str]
    item_rows: list[list[int]]
    silhouette: float
    k_scores: dict[int, float]

    @property
    def sizes(self) -> list[int]:
        """Users per cluster."""
        return np.bincount(self.labels, minlength=len(self.centroids)).tolist()


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def choose_k(
    embeddings: np.ndarray, seed: int, candidates: Sequence[int] = AUTO_K_RANGE
) -> dict[int, float]:
    """Silhouette (cosine) of K-Means for each candidate K on a sample of users."""
    rng = np.random.default_rng(seed)
    sample = embeddings
    if len(embeddings) > SILHOUETTE_SAMPLE:
        sample = embeddings[rng.choice(len(embeddings), SILHOUETTE_SAMPLE, replace=False)]
    scores = {}
    for k in candidates:
        if k >= len(sample):
            break
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels, metric="cosine"))
    return scores


def describe(
    labels: np.ndarray,
    user_items: Sequence[Sequence[int]],
    item_terms: Sequence[Sequence[str]],
    num_clusters: int,
    top: int = 3,
) -> list[str]:
    """Each cluster's most characteristic terms: share within the cluster × lift over all users."""
    overall: dict[str, float] = {}
    per_cluster: list[dict[str, float]] = [{} for _ in range(num_clusters)]
    for label, items in zip(labels, user_items, strict=True):
        if not items:
            continue
        weight = 1.0 / len(items)
        for row in items:
            for term in item_terms[row]:
                counts = per_cluster[int(label)]
                counts[term] = counts.get(term, 0.0) + weight
                overall[term] = overall.get(term, 0.0) + weight
    total = sum(overall.values()) or 1.0
    descriptions = []
    for counts in per_cluster:
        mass = sum(counts.values()) or 1.0
        scored = sorted(
            counts,
            key=lambda t: -(counts[t] / mass) * (counts[t] / mass) / (overall[t] / total),
        )
        # The top term always; others only if they carry a real share of the cluster.
        kept = [
            t for i, t in enumerate(scored[:top]) if i == 0 or counts[t] / mass >= MIN_TERM_SHARE
        ]
        descriptions.append(", ".join(kept) if kept else "(empty)")
    return descriptions


def item_terms(categories: Sequence[Sequence[str]], titles: Sequence[str]) -> list[list[str]]:
    """Categories where the catalogue has them, else content words of the title."""
    if any(categories):
        return [list(c) for c in categories]
    return [[w.lower() for w in _WORD.findall(t) if w.lower() not in _STOPWORDS] for t in titles]


def cluster_users(
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    user_items: Sequence[Sequence[int]],
    terms: Sequence[Sequence[str]],
    k: int | None,
    seed: int,
) -> Clustering:
    """K-Means on unit user embeddings (K given or by silhouette), descriptions, item sets."""
    k_scores: dict[int, float] = {}
    if k is None:
        k_scores = choose_k(user_embeddings, seed)
        if not k_scores:
            raise ValueError("too few users to choose K automatically; pass --clusters")
        k = max(k_scores, key=lambda c: k_scores[c])
    if k < 1 or k > len(user_embeddings):
        raise ValueError(f"--clusters {k}: need 1..{len(user_embeddings)} (number of users)")
    model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(user_embeddings)
    labels = model.labels_.astype(np.int64)
    silhouette = (
        float(
            silhouette_score(
                user_embeddings,
                labels,
                metric="cosine",
                sample_size=min(len(labels), SILHOUETTE_SAMPLE),
                random_state=seed,
            )
        )
        if 1 < k < len(user_embeddings)
        else 0.0
    )
    return describe_clustering(
        model.cluster_centers_, labels, item_embeddings, user_items, terms, silhouette, k_scores
    )


def describe_clustering(
    centers: np.ndarray,
    labels: np.ndarray,
    item_embeddings: np.ndarray,
    user_items: Sequence[Sequence[int]],
    terms: Sequence[Sequence[str]],
    silhouette: float,
    k_scores: dict[int, float],
) -> Clustering:
    """Unit centroids, each cluster's item set and description, from a fitted clustering."""
    k = len(centers)
    centroids = _normalise(centers.astype(np.float32))
    nearest = np.argmax(item_embeddings @ centroids.T, axis=1)
    item_rows = []
    for c in range(k):
        counts: Counter[int] = Counter()
        for label, items in zip(labels, user_items, strict=True):
            if label == c:
                counts.update(items)
        popular = {row for row, _ in counts.most_common(POPULAR_ITEMS_PER_CLUSTER)}
        item_rows.append(sorted(popular | set(np.flatnonzero(nearest == c).tolist())))
    return Clustering(
        centroids=centroids,
        labels=labels,
        descriptions=describe(labels, user_items, terms, k),
        item_rows=item_rows,
        silhouette=silhouette,
        k_scores=k_scores,
    )
