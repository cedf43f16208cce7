"""Clusterings compared by measure: the planted groups win, unstable ones are not served."""

from __future__ import annotations

import numpy as np
import pytest

from training.cluster_choice import METHODS, ClusteringScore, choose, compare_clusterings


def blobs(k: int = 4, per: int = 60, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    points = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    return points / np.linalg.norm(points, axis=1, keepdims=True), np.repeat(np.arange(k), per)


def test_every_method_finds_planted_groups_and_the_right_k_is_chosen():
    vectors, truth = blobs()
    scores = compare_clusterings(vectors, [2, 4, 7], seed=0, known=truth)
    assert {(s.method, s.k) for s in scores} == {(m, k) for m in METHODS for k in (2, 4, 7)}
    at_four = [s for s in scores if s.k == 4]
    for s in at_four:
        assert s.nmi_known == pytest.approx(1.0) and s.stability_ari == pytest.approx(1.0)
        assert s.silhouette > 0.5
    best, reason = choose(scores)
    assert best.k == 4 and "K=4" in reason
    # K=4 beats the others on silhouette and on Davies-Bouldin for the same method.
    for method in METHODS:
        mine = {s.k: s for s in scores if s.method == method}
        assert mine[4].silhouette > max(mine[2].silhouette, mine[7].silhouette)
        assert mine[4].davies_bouldin < min(mine[2].davies_bouldin, mine[7].davies_bouldin)


def test_an_unstable_configuration_is_not_served_however_tight():
    def score(method: str, k: int, silhouette: float, ari: float) -> ClusteringScore:
        return ClusteringScore(method, k, silhouette, 1.0, ari, None)

    scores = [score("k-means", 8, 0.30, 0.9), score("ward (hierarchical)", 12, 0.45, 0.3)]
    best, reason = choose(scores)
    assert (best.method, best.k) == ("k-means", 8) and "1 of 2" in reason
    # None stable: the tightest among those near the most stable.
    shaky = [
        score("k-means", 8, 0.30, 0.60),
        score("k-means", 9, 0.35, 0.57),
        score("x", 3, 0.9, 0.2),
    ]
    best, reason = choose(shaky)
    assert best.k == 9 and "none reached" in reason
