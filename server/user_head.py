"""The optional sequence head: a history's item IDs and texts → the user vector (ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort


class UserHead:
    """Runs user_head.onnx on one right-aligned history."""

    def __init__(
        self,
        session: ort.InferenceSession,
        item_text: np.ndarray,
        max_length: int,
        trained_items: int | None = None,
    ) -> None:
        self.session = session
        self.item_text = item_text
        self.max_length = max_length
        self.trained_items = len(item_text) if not trained_items else trained_items

    def user_vector(self, rows: Sequence[int], free_text: np.ndarray | None = None) -> np.ndarray:
        """User vector for item rows (oldest first) followed by free-text embeddings."""
        # Items added after training have no ID embedding: they enter by text (ID 0).
        ids = [row + 1 if row < self.trained_items else 0 for row in rows]
        texts = [self.item_text[row] for row in rows]
        if free_text is not None:
            ids += [0] * len(free_text)
            texts += list(free_text)
        ids, texts = ids[-self.max_length :], texts[-self.max_length :]
        item_ids = np.zeros((1, self.max_length), dtype=np.int64)
        item_text = np.zeros((1, self.max_length, self.item_text.shape[1]), dtype=np.float32)
        if ids:
            item_ids[0, -len(ids) :] = ids
            item_text[0, -len(texts) :] = np.stack(texts)
        (user,) = self.session.run(["user"], {"item_ids": item_ids, "item_text": item_text})
        return np.asarray(user[0], dtype=np.float32)
