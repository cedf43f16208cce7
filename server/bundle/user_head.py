"""The optional sequence head: a history's item IDs and texts → the user vector (ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from server.bundle.new_items import DEFAULT_NEIGHBOURS, new_item_vectors
from server.errors import Unavailable


class UserHead:
    """Runs user_head.onnx on one right-aligned history."""

    def __init__(
        self,
        session: ort.InferenceSession,
        item_text: np.ndarray,
        max_length: int,
        trained_items: int | None = None,
        projection: np.ndarray | None = None,
        new_item_neighbours: int = DEFAULT_NEIGHBOURS,
        new_item_id_weight: float = 0.0,
    ) -> None:
        self.session = session
        self.item_text = item_text
        self.max_length = max_length
        self.trained_items = len(item_text) if not trained_items else trained_items
        self.projection = projection  # [dim, text_dim]: the head's text → item vector map
        self.new_item_neighbours = new_item_neighbours
        self.new_item_id_weight = new_item_id_weight

    def new_item_vectors(self, text: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        """Item vectors of items known by text alone, given every item's vector so far.

        Text projection plus an ID part borrowed from the nearest trained items
        (server/bundle/new_items.py), with the bundle's neighbour count and weight.
        """
        if self.projection is None:
            raise Unavailable("this bundle has no text projection; re-export it to add items")
        trained = self.trained_items
        return new_item_vectors(
            text,
            self.projection,
            self.item_text[:trained],
            item_vectors[:trained],
            self.new_item_neighbours,
            self.new_item_id_weight,
        )

    def user_vector(self, rows: Sequence[int], free_text: np.ndarray | None = None) -> np.ndarray:
        """User vector for item rows (oldest first) followed by free-text embeddings."""
        return self.user_vectors([(rows, free_text)])[0]

    def user_vectors(
        self, histories: Sequence[tuple[Sequence[int], np.ndarray | None]]
    ) -> np.ndarray:
        """User vectors [len(histories), dim] in one ONNX run."""
        batch = len(histories)
        item_ids = np.zeros((batch, self.max_length), dtype=np.int64)
        item_text = np.zeros((batch, self.max_length, self.item_text.shape[1]), dtype=np.float32)
        for b, (rows, free_text) in enumerate(histories):
            # Items added after training have no ID embedding: they enter by text (ID 0).
            ids = [row + 1 if row < self.trained_items else 0 for row in rows]
            texts = [self.item_text[row] for row in rows]
            if free_text is not None:
                ids += [0] * len(free_text)
                texts += list(free_text)
            ids, texts = ids[-self.max_length :], texts[-self.max_length :]
            if ids:
                item_ids[b, -len(ids) :] = ids
                item_text[b, -len(texts) :] = np.stack(texts)
        (users,) = self.session.run(["user"], {"item_ids": item_ids, "item_text": item_text})
        return np.asarray(users, dtype=np.float32)
