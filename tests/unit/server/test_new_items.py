"""A new item's vector: its text projection plus an ID part borrowed from text neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from server.bundle.new_items import borrowed_id_parts, new_item_vectors


def _catalogue(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(8, 16)).astype(np.float32)
    text = rng.normal(size=(30, 16)).astype(np.float32)
    id_parts = rng.normal(size=(30, 8)).astype(np.float32)
    return projection, text, text @ projection.T + id_parts


def test_an_item_reading_like_a_trained_one_borrows_its_id_part():
    projection, text, vectors = _catalogue()
    new = new_item_vectors(text[[7]], projection, text, vectors, neighbours=1, weight=1.0)
    np.testing.assert_allclose(new[0], vectors[7], rtol=1e-5, atol=1e-5)


def test_weight_zero_is_text_alone_and_the_part_is_a_neighbour_mean():
    projection, text, vectors = _catalogue(1)
    alone = new_item_vectors(text[:3], projection, text, vectors, weight=0.0)
    np.testing.assert_allclose(alone, text[:3] @ projection.T, rtol=1e-5, atol=1e-5)
    text_vectors = text @ projection.T
    parts = borrowed_id_parts(text_vectors[[4]], text_vectors, vectors - text_vectors, 3)
    cosine = (text_vectors / np.linalg.norm(text_vectors, axis=1, keepdims=True)) @ (
        text_vectors[4] / np.linalg.norm(text_vectors[4])
    )
    nearest = np.argsort(-cosine)[:3]
    np.testing.assert_allclose(
        parts[0], (vectors - text_vectors)[nearest].mean(axis=0), rtol=1e-5, atol=1e-5
    )
    half = new_item_vectors(text[[4]], projection, text, vectors, neighbours=3, weight=0.5)
    assert half[0] == pytest.approx(text_vectors[4] + 0.5 * parts[0], abs=1e-5)


def test_more_neighbours_than_trained_items_and_no_new_items():
    projection, text, vectors = _catalogue(2)
    many = new_item_vectors(text[:2], projection, text[:4], vectors[:4], neighbours=50)
    assert many.shape == (2, 8) and np.all(np.isfinite(many))
    none = new_item_vectors(text[:0], projection, text, vectors)
    assert none.shape == (0, 8)
