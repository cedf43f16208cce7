"""How a new item (known by its text alone) is served, chosen on validation.

A new item's vector is its text projection plus the mean ID part of its nearest trained
items, times a weight (server/bundle/new_items.py). More weight ranks new items higher, for the
users who want them and for everyone else. The setting is chosen the same way by `irec
eval` (items truly held out of training) and `irec train` (items that stand in for new
ones, see :func:`choose_for_run`): the best NDCG@10 for users whose validation item is
"new", among the settings that cost users whose validation item is known at most
MAX_WARM_LOSS of their NDCG@10 (boosting new items must not buy their hits with misses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from server.bundle.new_items import new_item_vectors
from training.evaluate import mean_ndcg, target_ranks

WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
NEIGHBOURS = (5, 20)
MAX_WARM_LOSS = 0.01
# `irec train`: this share of items (those that are some validation user's next item)
# stands in for new items.
STAND_IN_SHARE = 0.1


@dataclass(frozen=True)
class Tried:
    """One setting and its validation NDCG@10 for users of new and of known items."""

    neighbours: int
    weight: float
    cold: float
    warm: float


def choose(
    measure: Callable[[int, float], tuple[float, float]],
    neighbours: Sequence[int] = NEIGHBOURS,
    weights: Sequence[float] = WEIGHTS,
    max_warm_loss: float = MAX_WARM_LOSS,
) -> tuple[Tried, list[Tried]]:
    """(the chosen setting, every setting tried); measure(n, w) → (cold, warm) NDCG@10.

    Weight 0 (text alone) is tried once and is the warm reference.
    """
    tried: list[Tried] = []
    for n in neighbours:
        for w in weights:
            if w == 0 and tried:
                continue  # no borrowed part: the same for every neighbour count
            cold, warm = measure(n, w)
            tried.append(Tried(n, w, cold, warm))
    floor = tried[0].warm * (1 - max_warm_loss)
    best = max((t for t in tried if t.warm >= floor), key=lambda t: (t.cold, t.warm))
    return best, tried


def served_as_new(
    item_vectors: np.ndarray,
    item_text: np.ndarray,
    projection: np.ndarray,
    new_rows: Iterable[int],
    neighbours: int,
    weight: float,
) -> np.ndarray:
    """Every item's vector, the `new_rows` rebuilt as the server adds a new item."""
    rows = sorted(set(new_rows))
    taken = set(rows)
    known = [r for r in range(len(item_vectors)) if r not in taken]
    out = item_vectors.copy()
    out[rows] = new_item_vectors(
        item_text[rows], projection, item_text[known], item_vectors[known], neighbours, weight
    )
    return out


def ndcg10(scores: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int]) -> float:
    """Mean NDCG@10 of each target among the items not in its history."""
    if not len(targets):
        return 0.0
    ranks = target_ranks(scores, histories, targets)
    return mean_ndcg(ranks)


def choose_for_run(
    item_text: np.ndarray,
    projection: np.ndarray,
    item_vectors: np.ndarray,
    user_vectors: np.ndarray,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    seed: int = 0,
) -> dict[str, Any]:
    """`irec train`'s choice, on its validation users (their held-out next items).

    No item is untrained there, so a seeded share of the validation targets stands in for
    new items: their trained vectors are replaced by what the server would build from their
    text, with the rest as the trained catalogue. Their own ID embedding is never used; the
    text projection did learn from them, so the cold figure is an optimistic proxy, and the
    warm side (every stand-in competing with known items) is measured exactly.
    """
    rng = np.random.default_rng(seed + 29)
    candidates = np.unique(np.asarray(targets))
    count = max(1, int(round(STAND_IN_SHARE * len(item_vectors))))
    stand_ins = np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))
    new = set(stand_ins.tolist())
    cold_users = [u for u, t in enumerate(targets) if t in new]
    warm_users = [u for u, t in enumerate(targets) if t not in new]

    def measure(neighbours: int, weight: float) -> tuple[float, float]:
        vectors = served_as_new(item_vectors, item_text, projection, new, neighbours, weight)
        out = []
        for users in (cold_users, warm_users):
            scores = user_vectors[users] @ vectors.T
            out.append(ndcg10(scores, [histories[u] for u in users], [targets[u] for u in users]))
        return out[0], out[1]

    best, tried = choose(measure)
    return {
        "neighbours": best.neighbours,
        "weight": best.weight,
        "max_warm_loss": MAX_WARM_LOSS,
        "stand_in_items": len(stand_ins),
        "validation_users": {"cold": len(cold_users), "warm": len(warm_users)},
        "tried": [asdict(t) for t in tried],
        "how": (
            "validation users' next items standing in for new ones (their vectors rebuilt "
            "from text + the nearest trained items' ID parts, as the server adds an item)"
        ),
    }
