"""Render items as encoder text: title, year and categories (plus a short description)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

# Characters of description kept per item: a history packs many items into
# the encoder's token budget, so each item's text stays short.
DESCRIPTION_CHARS = 120


def render_item(
    title: str, year: Any = None, categories: Iterable[str] = (), description: str = ""
) -> str:
    """'Toy Story (1995). Animation, Children's, Comedy. <description>'."""
    text = title.strip()
    if year is not None and not pd.isna(year):
        text += f" ({int(year)})"
    cats = ", ".join(c for c in categories if c)
    if cats:
        text += f". {cats}"
    description = (description or "").strip()
    if description:
        text += f". {description[:DESCRIPTION_CHARS]}"
    return text


def render_items(items: pd.DataFrame) -> list[str]:
    """Texts of every row of an items table, in row order."""
    return [
        render_item(r.title, r.year, r.categories, r.description)
        for r in items.itertuples(index=False)
    ]


def render_titles(items: pd.DataFrame) -> list[str]:
    """Short texts of every row, as a person would type them: 'Toy Story (1995)'."""
    return [render_item(r.title, r.year) for r in items.itertuples(index=False)]
