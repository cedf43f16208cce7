"""Baselines under the same protocol: popularity, recency ItemKNN, EASE, frozen text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ItemKNN recency weight per step back (REFERENCE.md §3: 0.6 was the best measured here).
ITEMKNN_DECAY = 0.6
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
FROZEN_TEXT_LAST = 5


def interaction_matrix(sequences: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
    """Binary user × item matrix (float32)."""
    x = np.zeros((len(sequences), num_items), dtype=np.float32)
    for u, seq in enumerate(sequences):
        x[u, list(seq)] = 1.0
    return x


def recency_matrix(histories: Sequence[Sequence[int]], num_items: int, decay: float) -> np.ndarray:
    """Per user, decay**age for each history item (age 0 = most recent)."""
    w = np.zeros((len(histories), num_items), dtype=np.float32)
    for u, seq in enumerate(histories):
        for age, row in enumerate(reversed(list(seq)[-50:])):
            w[u, row] = max(w[u, row], decay**age)
    return w


def itemknn_scores(
    train: Sequence[Sequence[int]],
    histories: Sequence[Sequence[int]],
    num_items: int,
    decay: float = ITEMKNN_DECAY,
) -> np.ndarray:
    """Cosine item-item similarity from co-occurrence; users weigh recent items more."""
    x = interaction_matrix(train, num_items)
    co = x.T @ x
    norms = np.sqrt(np.diag(co)) + 1e-9
    sim = co / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    return recency_matrix(histories, num_items, decay) @ sim


def ease_weights(train: Sequence[Sequence[int]], num_items: int, lam: float) -> np.ndarray:
    """EASE item-item weights (Steck, WWW 2019): closed form with a zero diagonal."""
    x = interaction_matrix(train, num_items).astype(np.float64)
    gram = x.T @ x
    gram[np.diag_indices(num_items)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def ease_scores(weights: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """User scores from EASE weights and binary histories."""
    return interaction_matrix(histories, weights.shape[0]).astype(np.float64) @ weights


def frozen_text_scores(
    text_embeddings: np.ndarray, histories: Sequence[Sequence[int]]
) -> np.ndarray:
    """The pretrained encoder without fine-tuning: user = mean of the last item texts."""
    users = np.stack([text_embeddings[list(h)[-FROZEN_TEXT_LAST:]].mean(axis=0) for h in histories])
    users /= np.linalg.norm(users, axis=1, keepdims=True) + 1e-12
    return users @ text_embeddings.T
