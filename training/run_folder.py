"""The run folder: the one contract between training (writer) and export (reader).

A run folder::

    run.json             model name, data spec, seed, backend ("engine": local | ray),
                         fine-tuning config, metrics, loss curve, stage timings
    model/               the fine-tuned transformer + tokenizer (Hugging Face format)
    items.jsonl          id, title, text, categories per item (row = embedding row)
    item_embeddings.npy  float32 [items, dim]
    user_embeddings.npy  float32 [users, dim] (full histories), optional for export
    users.json           user IDs in row order, and each user's cluster
    centroids.npy        float32 [K, dim], unit rows
    clusters.json        silhouette, K scores, and per cluster: id, description, size, item rows,
                         top items (rows of the items that set it apart)
    head.pt, head.json   optional sequence head: weights and HeadConfig
    tensorboard/         optional: training curves as TensorBoard event files

`irec train` and `irec eval` write it with :func:`write_run`; `irec export` and the
benchmarks read it through :class:`RunFolder`. Nothing else spells these file names.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.sequence_head import HeadConfig, SequenceHead

log = logging.getLogger(__name__)

RUN_INFO_FILE = "run.json"
MODEL_DIR = "model"
ITEMS_FILE = "items.jsonl"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
USER_EMBEDDINGS_FILE = "user_embeddings.npy"
USERS_FILE = "users.json"
CENTROIDS_FILE = "centroids.npy"
CLUSTERS_FILE = "clusters.json"
HEAD_FILE = "head.pt"
HEAD_CONFIG_FILE = "head.json"
TENSORBOARD_DIR = "tensorboard"  # loss and validation curves (TensorBoard event files)
# What export cannot do without (user embeddings only sharpen its HNSW recall check).
REQUIRED = (MODEL_DIR, ITEMS_FILE, ITEM_EMBEDDINGS_FILE, CENTROIDS_FILE, CLUSTERS_FILE)


class RunFolderError(ValueError):
    """A run folder is missing or incomplete; the message names the missing path."""


@dataclass(frozen=True)
class RunFolder:
    """Read access to a run folder written by :func:`write_run`."""

    path: Path

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """The run folder at `path`, checked for every required file."""
        info = path / RUN_INFO_FILE
        if not info.is_file():
            raise RunFolderError(f"{info}: missing (is {path} a run folder from `irec train`?)")
        for name in REQUIRED:
            if not (path / name).exists():
                raise RunFolderError(f"{path / name}: missing from the run folder")
        return cls(path)

    @property
    def model_dir(self) -> Path:
        """The fine-tuned encoder (Hugging Face folder with its tokenizer)."""
        return self.path / MODEL_DIR

    def info(self) -> dict[str, Any]:
        """run.json: config, model name, data spec, seed, metrics, loss, timings."""
        return dict(json.loads((self.path / RUN_INFO_FILE).read_text()))

    def items(self) -> list[dict[str, Any]]:
        """items.jsonl records ({id, title, text, categories}) in row order."""
        lines = (self.path / ITEMS_FILE).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def item_embeddings(self) -> np.ndarray:
        """float32 [items, dim]."""
        return np.load(self.path / ITEM_EMBEDDINGS_FILE).astype(np.float32)

    def user_embeddings(self) -> np.ndarray | None:
        """float32 [users, dim], or None when the run has none."""
        path = self.path / USER_EMBEDDINGS_FILE
        return np.load(path).astype(np.float32) if path.exists() else None

    def centroids(self) -> np.ndarray:
        """float32 [K, dim]."""
        return np.load(self.path / CENTROIDS_FILE).astype(np.float32)

    def clusters(self) -> list[dict[str, Any]]:
        """Per cluster: id, description, size, item_rows, top_items (rows; may be absent)."""
        return list(json.loads((self.path / CLUSTERS_FILE).read_text())["clusters"])

    @property
    def has_head(self) -> bool:
        """Whether the run holds a sequence head."""
        return (self.path / HEAD_FILE).exists()

    def load_head(self) -> SequenceHead:
        """The sequence head saved by write_run, in eval mode."""
        return load_head(self.path)


def save_head(head: SequenceHead, run: Path) -> None:
    """Write the head's weights and config into a run folder."""
    torch.save(head.state_dict(), run / HEAD_FILE)
    (run / HEAD_CONFIG_FILE).write_text(json.dumps(asdict(head.config), indent=1))


def load_head(run: Path) -> SequenceHead:
    """Rebuild a head saved by save_head."""
    config = HeadConfig(**json.loads((run / HEAD_CONFIG_FILE).read_text()))
    state = torch.load(run / HEAD_FILE, map_location="cpu", weights_only=True)
    head = SequenceHead(state["item_text"][1:], config)
    head.load_state_dict(state)
    return head.eval()


def write_run(
    out: Path,
    encoder: Any,
    tokenizer: Any,
    items: Any,
    texts: list[str],
    users: list[str],
    item_embeddings: np.ndarray,
    user_embeddings: np.ndarray,
    clustering: Any,
    run_info: dict[str, Any],
    head: SequenceHead | None = None,
    tensorboard: Path | None = None,
) -> Path:
    """Write a run folder (the input of export) into a temporary sibling, then swap it in."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    encoder.transformer.save_pretrained(tmp / MODEL_DIR)
    tokenizer.save_pretrained(tmp / MODEL_DIR)
    with (tmp / ITEMS_FILE).open("w", encoding="utf-8") as handle:
        for record, text in zip(items.to_dict("records"), texts, strict=True):
            handle.write(
                json.dumps(
                    {
                        "id": record["item_id"],
                        "title": record["title"],
                        "text": text,
                        "categories": list(record["categories"]),
                    }
                )
                + "\n"
            )
    np.save(tmp / ITEM_EMBEDDINGS_FILE, item_embeddings.astype(np.float32))
    np.save(tmp / USER_EMBEDDINGS_FILE, user_embeddings.astype(np.float32))
    np.save(tmp / CENTROIDS_FILE, clustering.centroids.astype(np.float32))
    (tmp / USERS_FILE).write_text(
        json.dumps({"user_ids": users, "cluster": clustering.labels.tolist()})
    )
    (tmp / CLUSTERS_FILE).write_text(
        json.dumps(
            {
                "silhouette": clustering.silhouette,
                "k_scores": clustering.k_scores,
                "clusters": [
                    {
                        "id": c,
                        "description": d,
                        "size": s,
                        "item_rows": rows,
                        "top_items": clustering.top_items[c] if clustering.top_items else [],
                    }
                    for c, (d, s, rows) in enumerate(
                        zip(
                            clustering.descriptions,
                            clustering.sizes,
                            clustering.item_rows,
                            strict=True,
                        )
                    )
                ],
            },
            indent=1,
        )
    )
    if head is not None:
        save_head(head, tmp)
    if tensorboard is not None and tensorboard.is_dir():
        shutil.copytree(tensorboard, tmp / TENSORBOARD_DIR)
    run = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **run_info}
    (tmp / RUN_INFO_FILE).write_text(json.dumps(run, indent=1, default=float))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %s", out)
    return out
