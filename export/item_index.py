"""HNSW indexes (hnswlib, inner product on unit vectors = cosine) and their recall check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hnswlib
import numpy as np

from server.bundle.manifest import HnswParams


def build_index(
    vectors: np.ndarray, labels: Sequence[int], params: HnswParams, seed: int = 0
) -> hnswlib.Index:
    """Index rows of `vectors` under the given labels (global item rows)."""
    stored = params.index_vectors(vectors)
    index = hnswlib.Index(space=params.space, dim=stored.shape[1])
    index.init_index(
        max_elements=max(1, len(labels)),
        ef_construction=params.ef_construction,
        M=params.m,
        random_seed=seed,
    )
    if len(labels):
        index.add_items(stored[list(labels)], np.asarray(labels, dtype=np.int64))
    index.set_ef(params.ef_search)
    return index


def save_index(index: hnswlib.Index, path: Path) -> None:
    """Write an index file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save_index(str(path))


def recall_at_k(
    index: hnswlib.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    params: HnswParams,
    k: int = 10,
) -> float:
    """Mean fraction of the exact top-k (by dot product) that the index returns."""
    k = min(k, len(vectors))
    labels, _ = index.knn_query(np.stack([params.query_vector(q) for q in queries]), k=k)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(labels, exact, strict=True)]
    return float(np.mean(hits)) / k
