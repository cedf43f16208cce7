"""Catalogue updates without retraining: add items by their text, remove items for good.

An added item is embedded by the served encoder (through the sequence head's text
projection, plus an ID part borrowed from its text neighbours, when the bundle has one:
server/bundle/new_items.py), assigned its nearest cluster and inserted into
the indexes; a removed item is marked deleted in every index and never returned again.
hnswlib's `knn_query` is not safe against a concurrent `add_items`, so searches take a
shared lock and updates an exclusive one. Updates are appended to a log that is
replayed when a bundle is loaded, so a restart (or a reload) keeps them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.bundle.loader import Bundle, Item
from server.errors import InvalidArgument, NotFound
from server.vectors import unit_rows


class ReadWriteLock:
    """Many readers or one writer (writers are not starved: new readers wait for them)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Shared section (searches)."""
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Exclusive section (index updates)."""
        with self._cond:
            self._waiting_writers += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class NewItem:
    """An item to add: ID, title and the text it is embedded from."""

    item_id: str
    title: str
    text: str


class Catalogue:
    """Live item set of one loaded bundle: sizes per index, removed rows, the update log."""

    def __init__(self, bundle: Bundle, log_path: Path | None = None) -> None:
        self.bundle = bundle
        self.lock = ReadWriteLock()
        self.removed: set[int] = set()
        self.live = {"all": len(bundle.items)} | {
            f"cluster_{c.cluster_id}": len(c.item_rows) for c in bundle.clusters
        }
        # Which clusters hold a row, for removals: the bundle's rows are looked up in each
        # cluster's sorted rows (sorted on the first removal, not at start-up: a dict of a
        # million rows cost seconds and hundreds of MiB); added rows are noted here.
        self._sorted_cluster_rows: list[np.ndarray] | None = None
        self._added_to_clusters: dict[int, list[int]] = {}
        self.log_path = log_path
        if log_path is not None and log_path.exists():
            self._replay(log_path)

    def _replay(self, path: Path) -> None:
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry["op"] == "add" and entry["item_id"] not in self.bundle.row_of_item:
                self._add([NewItem(entry["item_id"], entry["title"], entry["text"])])
            elif entry["op"] == "remove" and entry["item_id"] in self.bundle.row_of_item:
                self._remove([entry["item_id"]])

    def _log(self, entries: Sequence[dict[str, str]]) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry) + "\n")

    def add(self, items: Sequence[NewItem]) -> int:
        """Embed, index and log new items; returns how many were added."""
        for position, item in enumerate(items):
            if not item.item_id or not item.text.strip():
                raise InvalidArgument(f"items[{position}]", "item_id and text are required")
            if item.item_id in self.bundle.row_of_item:
                raise InvalidArgument(f"items[{position}].item_id", f"{item.item_id!r} exists")
        self._add(items)
        self._log(
            [{"op": "add", "item_id": i.item_id, "title": i.title, "text": i.text} for i in items]
        )
        return len(items)

    def remove(self, item_ids: Sequence[str]) -> int:
        """Never return these items again; returns how many were removed."""
        for position, item_id in enumerate(item_ids):
            if item_id not in self.bundle.row_of_item:
                raise NotFound(f"item_ids[{position}]: {item_id!r} is not in the catalogue")
        removed = self._remove(item_ids)
        self._log([{"op": "remove", "item_id": i} for i in item_ids])
        return removed

    def _add(self, items: Sequence[NewItem]) -> None:
        bundle = self.bundle
        text = bundle.encoder.encode([i.text for i in items])
        vectors = (
            text
            if bundle.head is None
            else bundle.head.new_item_vectors(text, bundle.item_embeddings)
        )
        nearest = np.argmax(unit_rows(vectors) @ bundle.centroids.T, axis=1)
        stored = bundle.manifest.hnsw.index_vectors(vectors.astype(np.float32))
        with self.lock.write():
            start = len(bundle.items)
            rows = np.arange(start, start + len(items))
            for item, row in zip(items, rows, strict=True):
                bundle.items.append(Item(item.item_id, item.title, item.text))
                bundle.row_of_item[item.item_id] = int(row)
            if bundle.head is not None:
                bundle.head.item_text = np.vstack([bundle.head.item_text, text])
            self._insert(bundle.all_items_index, "all", stored, rows)
            for c in np.unique(nearest):
                mask = nearest == c
                cluster = bundle.clusters[int(c)]
                self._insert(cluster.index, f"cluster_{int(c)}", stored[mask], rows[mask])
                for row in rows[mask]:
                    self._added_to_clusters.setdefault(int(row), []).append(int(c))

    def _insert(self, index: object, name: str, stored: np.ndarray, rows: np.ndarray) -> None:
        needed = index.get_current_count() + len(rows)  # type: ignore[attr-defined]
        if needed > index.get_max_elements():  # type: ignore[attr-defined]
            index.resize_index(max(needed, 2 * index.get_max_elements()))  # type: ignore[attr-defined]
        index.add_items(stored, rows)  # type: ignore[attr-defined]
        self.live[name] += len(rows)

    def clusters_of_row(self, row: int) -> list[int]:
        """IDs of the clusters whose index holds `row` (bundle rows and added ones)."""
        if row in self._added_to_clusters:
            return self._added_to_clusters[row]
        if self._sorted_cluster_rows is None:
            self._sorted_cluster_rows = [np.sort(c.item_rows) for c in self.bundle.clusters]
        out = []
        for cluster_id, rows in enumerate(self._sorted_cluster_rows):
            at = int(np.searchsorted(rows, row))
            if at < len(rows) and rows[at] == row:
                out.append(cluster_id)
        return out

    def _remove(self, item_ids: Sequence[str]) -> int:
        bundle = self.bundle
        count = 0
        with self.lock.write():
            for item_id in item_ids:
                row = bundle.row_of_item[item_id]
                if row in self.removed:
                    continue
                self.removed.add(row)
                bundle.all_items_index.mark_deleted(row)
                self.live["all"] -= 1
                for c in self.clusters_of_row(row):
                    bundle.clusters[c].index.mark_deleted(row)
                    self.live[f"cluster_{c}"] -= 1
                count += 1
        return count
