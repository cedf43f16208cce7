"""The one vector normalisation that the server, export, training and evaluation share."""

from __future__ import annotations

import numpy as np

# A row shorter than this is divided by it instead, so a zero row stays zero (never NaN).
MIN_NORM = 1e-12


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as a new array."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), MIN_NORM)
