from __future__ import annotations

import numpy as np

from export.item_index import build_index, recall_at_k, save_index
from server.bundle.loader import load_index
from server.bundle.manifest import HnswParams


def unit(rng, n, dim=32):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hnsw_recall_against_exact_search_and_save_load_identity(tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng, 3000), unit(rng, 200)
    params = HnswParams()
    index = build_index(vectors, list(range(len(vectors))), params)
    assert recall_at_k(index, vectors, queries, params, k=10) >= 0.95
    save_index(index, tmp_path / "i" / "all.hnsw")
    loaded = load_index(tmp_path / "i" / "all.hnsw", 32, len(vectors), params)
    a, da = index.knn_query(queries, k=10)
    b, db = loaded.knn_query(queries, k=10)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(da, db)


def test_unnormalised_vectors_are_searched_by_exact_inner_product():
    rng = np.random.default_rng(2)
    vectors = unit(rng, 2000) * rng.uniform(0.2, 3.0, size=(2000, 1)).astype(np.float32)
    queries = unit(rng, 100) * 2
    params = HnswParams(mips_max_norm=float(np.linalg.norm(vectors, axis=1).max()) * 1.0001)
    index = build_index(vectors, list(range(len(vectors))), params)
    assert recall_at_k(index, vectors, queries, params, k=10) >= 0.95
    labels, distances = index.knn_query(params.query_vector(queries[0])[None, :], k=5)
    np.testing.assert_allclose(1 - distances[0], vectors[labels[0]] @ queries[0], rtol=1e-4)


def test_subset_index_uses_global_labels():
    rng = np.random.default_rng(1)
    vectors = unit(rng, 100)
    rows = [3, 17, 42, 99]
    index = build_index(vectors, rows, HnswParams())
    labels, distances = index.knn_query(vectors[42][None, :], k=4)
    assert set(labels[0].tolist()) == set(rows)
    assert labels[0][0] == 42
    assert distances[0][0] < 1e-5
