"""Vectors for items that arrive after training: their text, plus a borrowed ID part.

A head bundle scores an item by text projection + ID part, and the ID part carries what
text cannot (how often items like it are taken). A new item has no ID part of its own,
so on text alone it is scored systematically below the trained items it competes with
and is buried. It borrows one instead: the mean ID part of the `neighbours` trained items
nearest to it by projected text, times a weight (0 = text alone). Export (items added at
export time), the server (AddItems) and `irec eval`'s cold-start track use this one
function, so what is measured is what is served.
"""

from __future__ import annotations

import numpy as np

from server.vectors import unit_rows

DEFAULT_NEIGHBOURS = 20
DEFAULT_ID_WEIGHT = 1.0


def borrowed_id_parts(
    new_text_vectors: np.ndarray,
    trained_text_vectors: np.ndarray,
    trained_id_parts: np.ndarray,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> np.ndarray:
    """Mean ID part of each new item's nearest trained items by projected text [new, dim].

    `new_text_vectors` [new, dim] and `trained_text_vectors` [trained, dim] are text
    projections (item vectors without ID parts); `trained_id_parts` [trained, dim] is
    each trained item's vector minus its text projection.
    """
    if not len(new_text_vectors) or not len(trained_text_vectors):
        return np.zeros_like(new_text_vectors)
    k = min(neighbours, len(trained_text_vectors))
    similarity = unit_rows(new_text_vectors) @ unit_rows(trained_text_vectors).T
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    return np.asarray(trained_id_parts[nearest].mean(axis=1), dtype=np.float32)


def new_item_vectors(
    text: np.ndarray,
    projection: np.ndarray,
    trained_text: np.ndarray,
    trained_vectors: np.ndarray,
    neighbours: int = DEFAULT_NEIGHBOURS,
    weight: float = DEFAULT_ID_WEIGHT,
) -> np.ndarray:
    """Item vectors [new, dim] of new items from their text embeddings [new, text_dim].

    `projection` [dim, text_dim] is the head's text → item map; `trained_text`
    [trained, text_dim] and `trained_vectors` [trained, dim] are the trained items' text
    embeddings and full item vectors.
    """
    text_vectors = np.asarray(text @ projection.T, dtype=np.float32)
    if weight == 0:
        return text_vectors
    trained_text_vectors = trained_text @ projection.T
    parts = borrowed_id_parts(
        text_vectors, trained_text_vectors, trained_vectors - trained_text_vectors, neighbours
    )
    return np.asarray(text_vectors + weight * parts, dtype=np.float32)
