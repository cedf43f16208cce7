"""The new-item setting is chosen on validation, within the warm budget."""

from __future__ import annotations

import numpy as np

from training import new_item_choice as choice


def test_choose_takes_the_best_cold_setting_the_warm_budget_allows() -> None:
    table = {
        # (neighbours, weight): (cold, warm)
        (5, 0.0): (0.10, 0.500),
        (5, 1.0): (0.20, 0.498),  # within 1% of 0.500
        (5, 2.0): (0.30, 0.480),  # best cold, but costs warm users 4%
        (20, 1.0): (0.25, 0.496),  # the answer
        (20, 2.0): (0.28, 0.470),
    }
    calls: list[tuple[int, float]] = []

    def measure(n: int, w: float) -> tuple[float, float]:
        calls.append((n, w))
        return table[(n, w)]

    best, tried = choice.choose(measure, neighbours=(5, 20), weights=(0.0, 1.0, 2.0))
    assert (best.neighbours, best.weight) == (20, 1.0)
    assert calls.count((5, 0.0)) == 1 and (20, 0.0) not in calls  # text alone once
    assert len(tried) == 5 and tried[0].weight == 0.0


def _catalogue(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Items in 8 groups; an item's ID part is its group's, so neighbours know it."""
    rng = np.random.default_rng(seed)
    groups, per_group, text_dim, dim = 8, 40, 12, 6
    centres = rng.standard_normal((groups, text_dim)) * 3
    group = np.repeat(np.arange(groups), per_group)
    item_text = (centres[group] + rng.standard_normal((len(group), text_dim)) * 0.3).astype(
        np.float32
    )
    projection = (rng.standard_normal((dim, text_dim)) * 0.05).astype(np.float32)
    id_parts = rng.standard_normal((groups, dim)).astype(np.float32) * 2
    item_vectors = item_text @ projection.T + id_parts[group]
    users = 400
    targets = [int(t) for t in rng.integers(0, len(group), size=users)]
    # Each user wants the target's whole vector (its group's ID part most of all).
    user_vectors = (item_vectors[targets] + rng.standard_normal((users, dim)) * 0.1).astype(
        np.float32
    )
    histories = [[(t + 1) % len(group)] for t in targets]  # one seen item, not the target
    return item_text, projection, item_vectors.astype(np.float32), user_vectors, histories, targets


def test_a_run_measures_stand_ins_as_the_server_would_serve_them() -> None:
    item_text, projection, vectors, users, histories, targets = _catalogue()
    chosen = choice.choose_for_run(item_text, projection, vectors, users, histories, targets)
    tried = {(t["neighbours"], t["weight"]): t for t in chosen["tried"]}
    text_alone = chosen["tried"][0]
    assert text_alone["weight"] == 0.0 and len(tried) == 17
    assert chosen["stand_in_items"] == round(choice.STAND_IN_SHARE * len(vectors))
    cold_users = chosen["validation_users"]["cold"]
    assert cold_users > 0 and cold_users + chosen["validation_users"]["warm"] == len(targets)
    # An item's ID part here is its group's, and its 5 nearest items by text are of its
    # group: borrowing at weight 1 rebuilds its trained vector exactly, so the stand-ins'
    # users rank as they do with the trained catalogue.
    rng = np.random.default_rng(29)
    stand_ins = set(
        rng.choice(np.unique(targets), size=chosen["stand_in_items"], replace=False).tolist()
    )
    cold = [u for u, t in enumerate(targets) if t in stand_ins]
    trained = choice.ndcg10(
        users[cold] @ vectors.T, [histories[u] for u in cold], [targets[u] for u in cold]
    )
    assert abs(tried[(5, 1.0)]["cold"] - trained) < 1e-9
    assert tried[(5, 1.0)]["cold"] > text_alone["cold"]  # text alone buries them
    # The choice keeps to the warm budget and is reproducible.
    pick = tried[(chosen["neighbours"], chosen["weight"])]
    assert pick["warm"] >= text_alone["warm"] * (1 - choice.MAX_WARM_LOSS)
    assert pick["cold"] == max(
        t["cold"]
        for t in chosen["tried"]
        if t["warm"] >= text_alone["warm"] * (1 - choice.MAX_WARM_LOSS)
    )
    again = choice.choose_for_run(item_text, projection, vectors, users, histories, targets)
    assert again == chosen
