"""Several interests per user: a history split by interest group, each part read by the model.

A history mixing Jazz ×15 and Horror ×10 has one user vector, and it ranks one interest
first: the other is never served. Here each history item is mapped to its interest group
(the centroid nearest its item vector), the groups are weighted by recency (PinnerSage,
KDD 2020: Σ exp(−λ·age), age counted in items from the end), and the strongest
`max_interests` holding at least MIN_INTEREST_WEIGHT of it become interests. Each
interest's items, in history order, are read by the sequence head itself (its ONNX, in
the same batch as the user vectors), so an interest vector is what the model predicts
after that part of the history, not a medoid item. The candidate budget k is split
across interests by weight (largest remainder, at least one each) and the lists are
interleaved by weighted rank (`merge_order`): the merge policy `irec eval` measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.bundle.manifest import SequenceHeadSpec

MAX_INTERESTS = 5
HALF_LIFE_ITEMS = 10.0  # an item 10 places from the end counts half as much
# A group with less of the history's recency weight is not an interest (one stray item
# in a long history): served, it would take a top slot from a real one.
MIN_INTEREST_WEIGHT = 0.15


@dataclass(frozen=True)
class MergePolicy:
    """How per-interest lists become one list of k.

    `whole_history_share` of the slots go to the whole history's user vector (it alone
    knows what the latest items lead to), the rest to the interests by weight. "quota"
    interleaves the lists by weighted rank (`merge_order`); "score" keeps each list's
    slots but orders the merged items by their own vector's score.
    """

    # Defaults: the manifest's (the demo's validation winner, irec eval).
    merge: str = SequenceHeadSpec.interest_merge
    whole_history_share: float = SequenceHeadSpec.interest_history_share

    @classmethod
    def of(cls, spec: SequenceHeadSpec | None) -> MergePolicy:
        """The bundle's policy (its sequence head's manifest entry), else the default."""
        if spec is None:
            return cls()
        return cls(spec.interest_merge, spec.interest_history_share)


@dataclass(frozen=True)
class InterestGroup:
    """One interest of a history: its group, recency weight (groups sum to 1), its rows."""

    cluster_id: int
    weight: float
    rows: tuple[int, ...]  # history rows of this interest, oldest first


def group_history(
    rows: Sequence[int],
    item_unit: np.ndarray,
    centroids: np.ndarray,
    max_interests: int,
    half_life: float = HALF_LIFE_ITEMS,
) -> list[InterestGroup]:
    """The history's strongest interests, strongest first.

    `item_unit` [items, dim] holds unit item vectors and `centroids` [K, dim] unit
    cluster centroids; rows beyond `item_unit` (none in practice) are skipped.
    """
    known = [r for r in rows if 0 <= r < len(item_unit)]
    if not known or max_interests < 1:
        return []
    nearest = np.argmax(item_unit[known] @ centroids.T, axis=1)
    decay = math.log(2) / half_life
    ages = np.arange(len(known) - 1, -1, -1, dtype=np.float64)
    recency = np.exp(-decay * ages)
    weights: dict[int, float] = {}
    for c, w in zip(nearest.tolist(), recency.tolist(), strict=True):
        weights[c] = weights.get(c, 0.0) + w
    everything = sum(weights.values())
    ranked = sorted(weights, key=lambda c: -weights[c])
    strongest = [c for c in ranked if weights[c] >= MIN_INTEREST_WEIGHT * everything]
    strongest = (strongest or ranked[:1])[:max_interests]
    total = sum(weights[c] for c in strongest)
    return [
        InterestGroup(
            cluster_id=int(c),
            weight=weights[c] / total,
            rows=tuple(r for r, n in zip(known, nearest.tolist(), strict=True) if n == c),
        )
        for c in strongest
    ]


def split_budget(weights: Sequence[float], k: int) -> list[int]:
    """K slots split by weight: largest remainder, each interest at least one (while k lasts)."""
    if not weights:
        return []
    n = len(weights)
    if k <= n:
        return [1 if i < k else 0 for i in range(n)]
    total = sum(weights) or 1.0
    spare = k - n
    exact = [spare * w / total for w in weights]
    quotas = [1 + int(e) for e in exact]
    by_remainder = sorted(range(n), key=lambda i: -(exact[i] - int(exact[i])))
    for i in by_remainder[: k - sum(quotas)]:
        quotas[i] += 1
    return quotas


def merge_order(quotas: Sequence[int]) -> list[tuple[int, int]]:
    """(interest, rank) pairs in merged order.

    The j-th item of interest i sits at (j + ½) / quota_i, so each interest's items are
    spread over the list in proportion to its share and the strongest interest leads.
    """
    slots = [(i, j) for i, q in enumerate(quotas) for j in range(q)]
    return sorted(slots, key=lambda s: ((s[1] + 0.5) / quotas[s[0]], s[0]))
