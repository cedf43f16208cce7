"""Per-interest answers: a history split by interest group, each part read by the head."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from server.bundle.loader import load_bundle
from server.core.engine import RecommenderEngine, RecommendQuery
from server.core.interests import group_history, merge_order, split_budget
from server.errors import InvalidArgument


def test_groups_follow_the_nearest_centroid_and_recency():
    centroids = np.eye(3, dtype=np.float32)
    items = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2]]  # rows 0,1 → group 0 ...
    # Oldest first: group 2 once, long ago; group 0 twice; group 1 twice, most recently.
    groups = group_history([4, 0, 1, 2, 3], items, centroids, max_interests=2, half_life=1.0)
    assert [g.cluster_id for g in groups] == [1, 0]
    assert groups[0].rows == (2, 3) and groups[1].rows == (0, 1)
    assert sum(g.weight for g in groups) == pytest.approx(1.0)
    assert groups[0].weight > groups[1].weight
    assert group_history([], items, centroids, 3) == []
    assert len(group_history([0, 2, 4], items, centroids, 5)) == 3


@pytest.mark.parametrize(
    ("weights", "k", "expected"),
    [([0.6, 0.4], 10, [6, 4]), ([0.9, 0.05, 0.05], 10, [7, 2, 1]), ([0.5, 0.5], 1, [1, 0])],
)
def test_budget_is_split_by_weight_with_one_slot_each(weights, k, expected):
    quotas = split_budget(weights, k)
    assert quotas == expected and sum(quotas) == k


@pytest.fixture(scope="module")
def engine(bundle_dir):
    return RecommenderEngine(load_bundle(bundle_dir, device="cpu"))


def _two_interest_history(engine):
    by_category: dict[str, list[str]] = {}
    for item in engine.bundle.items:
        category = item.text.split(". ")[1]
        by_category.setdefault(category, []).append(item.item_id)
    jazz, horror = by_category["Jazz"][:15], by_category["Horror"][:10]
    return jazz[:8] + horror + jazz[8:], set(jazz), set(horror)


def test_a_two_interest_user_is_served_both_and_told_why(engine):
    history, jazz, horror = _two_interest_history(engine)
    single = engine.recommend(RecommendQuery(history_item_ids=history, k=10))
    both = engine.recommend(RecommendQuery(history_item_ids=history, k=10, num_interests=2))
    assert len(both.interests) == 2 and len(both.items) == 10
    first, second = both.interests
    assert first.weight > second.weight and first.weight + second.weight == pytest.approx(1)
    # Each interest is explained by its own history items, and the two do not mix.
    assert set(first.because_item_ids) <= jazz and set(second.because_item_ids) <= horror
    assert "Jazz" in first.description and "Horror" in second.description
    merged = {i.item_id for i in both.items}
    # The merge: most slots from the whole history's vector, the rest from the interests
    # (each at least one).
    from_interests = {i.item_id for n in both.interests for i in n.items}
    assert from_interests <= merged and 2 <= len(from_interests) <= 5
    assert merged - from_interests <= {i.item_id for i in single.items}
    texts = {item.item_id: item.text for item in engine.bundle.items}
    categories = {texts[i].split(". ")[1] for i in merged}
    assert {"Jazz", "Horror"} <= categories
    assert not merged & set(history)
    assert len({texts[i.item_id].split(". ")[1] for i in single.items}) <= len(categories)


def test_num_interests_is_checked_and_needs_a_head(engine):
    history, _, _ = _two_interest_history(engine)
    for bad in (-1, 99):
        with pytest.raises(InvalidArgument) as info:
            engine.recommend(RecommendQuery(history_item_ids=history, num_interests=bad))
        assert info.value.field == "num_interests"
    text_only = RecommenderEngine(dataclasses.replace(engine.bundle, head=None))
    with pytest.raises(InvalidArgument, match="num_interests: this bundle has no sequence head"):
        text_only.prepare(RecommendQuery(history_item_ids=history, num_interests=2))


def test_a_stray_item_is_not_an_interest_and_the_merge_follows_the_weights():
    centroids = np.eye(2, dtype=np.float32)
    items = np.eye(2, dtype=np.float32)[[0] * 20 + [1, 1]]
    # One stray item, even the most recent, holds under 15% of the recency weight.
    groups = group_history([*range(20), 20], items, centroids, max_interests=2)
    assert [g.cluster_id for g in groups] == [0] and groups[0].weight == 1.0
    # Two recent ones are an interest.
    groups = group_history(list(range(22)), items, centroids, max_interests=2)
    assert sorted(g.cluster_id for g in groups) == [0, 1]
    order = merge_order([6, 3, 1])
    assert order[0] == (0, 0) and len(order) == 10
    assert [i for i, _ in order].count(1) == 3 and order.index((2, 0)) > order.index((1, 0))


@pytest.mark.parametrize("merge", ["quota", "score"])
def test_the_merged_list_follows_the_policy(engine, merge):
    policy = dataclasses.replace(engine.merge_policy, merge=merge)
    served = RecommenderEngine(engine.bundle)
    served.merge_policy = policy
    history, _, _ = _two_interest_history(engine)
    result = served.recommend(RecommendQuery(history_item_ids=history, k=10, num_interests=2))
    merged = [i.item_id for i in result.items]
    assert len(merged) == len(set(merged)) == 10
    if merge == "score":
        scores = [i.score for i in result.items]
        assert scores == sorted(scores, reverse=True)
        return
    # "quota": the whole history's list and each interest's, interleaved by weighted rank.
    interest_lists = [[i.item_id for i in n.items] for n in result.interests]
    in_interests = {i for items in interest_lists for i in items}
    lists = [[i for i in merged if i not in in_interests], *interest_lists]
    share = policy.whole_history_share
    weights = [share] + [(1 - share) * n.weight for n in result.interests]
    quotas = split_budget(weights, 10)
    assert [len(items) for items in lists] == quotas
    assert merged == [lists[i][rank] for i, rank in merge_order(quotas)]


def test_each_interest_names_its_ten_most_recent_history_items(engine):
    history, jazz, horror = _two_interest_history(engine)
    assert len(jazz & set(history)) == 15
    result = engine.recommend(RecommendQuery(history_item_ids=history, k=10, num_interests=2))
    by_group = {frozenset(n.because_item_ids) <= jazz: n.because_item_ids for n in result.interests}
    assert by_group[True] == [i for i in reversed(history) if i in jazz][:10]
    assert by_group[False] == [i for i in reversed(history) if i in horror][:10]
