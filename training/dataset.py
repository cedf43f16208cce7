"""The one shape every data source is loaded into: interactions plus their catalogue.

``interactions``: user_id, item_id, timestamp (sorted by user then time, ties kept in
file order); ``items``: item_id, title, year, categories, description. IDs are strings.
The loaders (training.data) and the demo generator (training.demo_data) both return it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Dataset:
    """Interactions plus the catalogue they refer to."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame

    def sequences(self) -> dict[str, list[str]]:
        """Each user's item IDs in time order."""
        grouped = self.interactions.groupby("user_id", sort=False)["item_id"]
        return {str(user): list(items) for user, items in grouped}
