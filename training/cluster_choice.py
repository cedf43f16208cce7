"""Which clustering of users, and how many groups: compared by measure, not by habit.

K-Means, a Gaussian mixture and Ward's hierarchical clustering, each for several K, on
the same unit user vectors, scored on: silhouette (cosine; higher = tighter, better
separated), Davies–Bouldin (lower = better), stability (adjusted Rand index between the
clusterings of two overlapping 80% subsamples fitted with different seeds, on the users
they share; 1 = the same groups every time) and, where a known label exists (a user's
dominant genre), agreement with it (NMI). The chosen configuration is the one with the
best silhouette among those stable enough to serve (ARI ≥ MIN_STABILITY, or within
STABILITY_SLACK of the most stable one when none is): a grouping that changes with the
seed cannot be named or explained to anyone. Serving assigns a
user to the nearest centroid, so every method's groups become centroids (their means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.mixture import GaussianMixture

METHODS = ("k-means", "gaussian mixture", "ward (hierarchical)")
MIN_STABILITY = 0.75
STABILITY_SLACK = 0.05  # where none reaches MIN_STABILITY: within this of the most stable
SUBSAMPLE = 0.8
MAX_USERS = 4000  # Ward needs memory quadratic in users: compare on a sample


@dataclass(frozen=True)
class ClusteringScore:
    """One (method, K) on the measures of the module docstring."""

    method: str
    k: int
    silhouette: float
    davies_bouldin: float
    stability_ari: float
    nmi_known: float | None


def fit_labels(method: str, vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels [users] of one method."""
    if method == "k-means":
        return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vectors)
    if method == "gaussian mixture":
        mixture = GaussianMixture(
            n_components=k, covariance_type="diag", random_state=seed, reg_covar=1e-4
        )
        return mixture.fit(vectors).predict(vectors)
    if method == "ward (hierarchical)":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(vectors)
    raise ValueError(f"unknown clustering method {method!r}; choose from {METHODS}")


def _stability(method: str, vectors: np.ndarray, k: int, seed: int) -> float:
    """ARI on the users shared by two 80% subsamples, each clustered with its own seed."""
    rng = np.random.default_rng(seed)
    size = int(SUBSAMPLE * len(vectors))
    first = np.sort(rng.choice(len(vectors), size, replace=False))
    second = np.sort(rng.choice(len(vectors), size, replace=False))
    shared = np.intersect1d(first, second)
    labels_a = fit_labels(method, vectors[first], k, seed)
    labels_b = fit_labels(method, vectors[second], k, seed + 1)
    a = labels_a[np.searchsorted(first, shared)]
    b = labels_b[np.searchsorted(second, shared)]
    return float(adjusted_rand_score(a, b))


def compare_clusterings(
    vectors: np.ndarray,
    ks: Sequence[int],
    seed: int,
    known: np.ndarray | None = None,
    methods: Sequence[str] = METHODS,
) -> list[ClusteringScore]:
    """Every method × K on unit `vectors` [users, dim]; `known` labels give NMI."""
    rng = np.random.default_rng(seed)
    if len(vectors) > MAX_USERS:
        sample = np.sort(rng.choice(len(vectors), MAX_USERS, replace=False))
        vectors = vectors[sample]
        known = known[sample] if known is not None else None
    scores = []
    for method in methods:
        for k in ks:
            labels = fit_labels(method, vectors, k, seed)
            single = len(set(labels.tolist())) < 2
            scores.append(
                ClusteringScore(
                    method=method,
                    k=k,
                    silhouette=(
                        0.0 if single else float(silhouette_score(vectors, labels, metric="cosine"))
                    ),
                    davies_bouldin=(
                        float("inf") if single else float(davies_bouldin_score(vectors, labels))
                    ),
                    stability_ari=_stability(method, vectors, k, seed),
                    nmi_known=(
                        float(normalized_mutual_info_score(known, labels))
                        if known is not None
                        else None
                    ),
                )
            )
    return scores


def choose(scores: Sequence[ClusteringScore]) -> tuple[ClusteringScore, str]:
    """The configuration to serve and why (see the module docstring)."""
    most_stable = max(s.stability_ari for s in scores)
    floor = min(MIN_STABILITY, most_stable - STABILITY_SLACK)
    stable = [s for s in scores if s.stability_ari >= floor]
    best = max(stable, key=lambda s: (s.silhouette, -s.davies_bouldin))
    reason = (
        f"{best.method}, K={best.k}: the best silhouette ({best.silhouette:.3f}) among the "
        f"{len(stable)} of {len(scores)} configurations stable across seeds (ARI ≥ {floor:.2f}"
        + (
            ")"
            if floor == MIN_STABILITY
            else f"; none reached {MIN_STABILITY}, the most stable {most_stable:.2f})"
        )
    )
    return best, reason


def as_rows(scores: Sequence[ClusteringScore]) -> list[dict[str, object]]:
    """JSON-ready rows."""
    return [asdict(s) for s in scores]
