from __future__ import annotations

import numpy as np
import pytest
import torch

from training.cluster import characteristic, cluster_users, describe, item_terms
from training.evaluate import rank_metrics
from training.finetune import in_batch_loss


def blobs(k=4, per=50, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    points = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), np.repeat(np.arange(k), per)


def test_auto_k_finds_the_blobs_and_describes_them():
    users, truth = blobs()
    items = users[::10]
    user_items = [[int(t) * 5] for t in truth]  # each blob consumes "its" item
    terms = [[f"topic-{r // 5}"] for r in range(len(items))]
    result = cluster_users(users, items, user_items, terms, k=None, seed=0)
    assert len(result.centroids) == 4
    # Clusters coincide with the blobs (up to relabelling).
    for blob in range(4):
        assert len(set(result.labels[truth == blob])) == 1
    assert result.silhouette > 0.5
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, rtol=1e-5)
    for c in range(4):
        blob = int(truth[result.labels == c][0])
        assert result.descriptions[c] == f"topic-{blob}"
        assert blob * 5 in result.item_rows[c]


def test_describe_prefers_characteristic_terms():
    labels = np.array([0, 0, 1, 1])
    user_items = [[0, 1], [0, 2], [1, 3], [1, 3]]
    terms = [["jazz"], ["common"], ["jazz"], ["horror"]]
    assert describe(labels, user_items, terms, 2, top=1) == ["jazz", "horror"]


def test_a_term_common_everywhere_never_describes_a_cluster():
    # "drama" is the most frequent term in both clusters but has no lift in either.
    labels = np.array([0, 0, 1, 1])
    user_items = [[0, 1], [0, 1], [0, 2], [0, 2]]
    terms = [["drama"], ["war"], ["romance"]]
    ranked = characteristic(labels, user_items, lambda r: terms[r], 2, top=3)
    assert [[t for t, _, _ in c] for c in ranked] == [["war"], ["romance"]]
    assert describe(labels, user_items, terms, 2) == ["war", "romance"]


def test_clusters_with_the_same_terms_are_told_apart_by_their_titles():
    # Clusters 0 and 1 both read "jazz"; their characteristic items differ.
    labels = np.array([0, 0, 1, 1, 2, 2])
    user_items = [[0, 1], [0, 1], [2, 3], [2, 3], [4], [4]]
    terms = [["jazz"], ["jazz"], ["jazz"], ["jazz"], ["horror"]]
    titles = ["Blue Train", "Kind of Blue", "Time Out", "Take Five", "Psycho"]
    top = [[r for r, _, _ in c] for c in characteristic(labels, user_items, lambda r: (r,), 3, 5)]
    assert sorted(top[0]) == [0, 1] and sorted(top[1]) == [2, 3] and top[2] == [4]
    lines = describe(labels, user_items, terms, 3, titles=titles, top_items=top)
    assert len(set(lines)) == 3
    assert lines[0].startswith("jazz: ") and "Blue Train" in lines[0] and "Time Out" in lines[1]
    # Without titles, the repeated description gets the cluster's number.
    assert describe(labels, user_items, terms, 3) == ["jazz (#0)", "jazz (#1)", "horror"]


def test_item_terms_add_decades_when_years_are_known():
    terms = item_terms([["Drama"], ["Comedy"], []], ["A", "B", "C"], [1994, None, 1955])
    assert terms == [["Drama", "1990s"], ["Comedy"], ["before 1970"]]
    assert item_terms([[], []], ["The Blue Train", "Kind of Blue"]) == [
        ["blue", "train"],
        ["kind", "blue"],
    ]


def test_rank_metrics_by_hand():
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    # user 0: item 0 seen, target 3 ranks second after item 1; user 1: target 3 ranks first.
    metrics = rank_metrics(scores, histories=[[0], []], targets=[3, 3], k=1)
    assert metrics["hr@1"] == pytest.approx(0.5)
    assert metrics["mrr"] == pytest.approx((0.5 + 1.0) / 2)


def test_in_batch_loss_masks_duplicate_targets():
    users = torch.nn.functional.normalize(torch.eye(3), dim=1)
    items = users.clone()
    distinct = in_batch_loss(users, items, torch.tensor([0, 1, 2]), 0.05)
    # Rows 0 and 1 share a target: the duplicate column must not count as a negative.
    items_dup = torch.stack([items[0], items[0], items[2]])
    dup = in_batch_loss(
        torch.stack([users[0], users[0], users[2]]), items_dup, torch.tensor([7, 7, 2]), 0.05
    )
    assert dup.item() == pytest.approx(distinct.item(), abs=1e-4)
    assert distinct.item() < 1e-3
