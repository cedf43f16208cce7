"""Render a user's history as one encoder input: most recent first.

Training and serving both call :func:`render_history`, so the text the server
encodes is exactly the text the encoder was fine-tuned on. Most-recent-first
(Recformer, KDD 2023) means truncation to the encoder's token budget drops the
oldest items, which matter least for what comes next.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.manifest import HISTORY_SEPARATOR


def render_history(texts_oldest_first: Sequence[str], separator: str = HISTORY_SEPARATOR) -> str:
    """Join item or free texts, given oldest first, into one most-recent-first string."""
    return separator.join(text.strip() for text in reversed(texts_oldest_first) if text.strip())
