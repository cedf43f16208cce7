"""`irec train`: data → text → fine-tune → embed → cluster → evaluate, written as a run folder.

The run folder (the input of export) is written by training.run_folder.write_run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from transformers import PreTrainedTokenizerBase

from server.manifest import render_history
from training.cluster import Clustering, cluster_users, item_terms
from training.data import load_spec
from training.dataset import Dataset
from training.evaluate import popularity_scores, rank_metrics
from training.finetune import FinetuneConfig, finetune
from training.run_folder import write_run
from training.text import render_items
from training.torch_encoder import (
    DEFAULT_MODEL_NAME,
    MeanPoolEncoder,
    embed_texts,
    load_encoder,
    pick_device,
    resolve_model_dir,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `irec train` takes."""

    data: str
    out: Path
    model: str | None = None
    clusters: int | None = None
    seed: int = 0
    eval_users: int = 1000
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    progress: bool = True
    # "local": one process; "ray": Ray Train / Ray Data (training.ray_backend).
    backend: str = "local"
    ray_address: str | None = None
    ray_workers: int = 2


class StageTimer:
    """Wall time per named stage, printed as it goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage."""
        print(f"[train] {name} …", flush=True)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        print(f"[train] {name} done in {self.seconds[name]:.1f} s", flush=True)


class TrainingBackend(Protocol):
    """Where fine-tuning, embedding and clustering run: LocalBackend or ray_backend.RayBackend."""

    device: Any  # where the driver keeps the encoder (torch.device)

    def embed(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        max_length: int,
        desc: str,
    ) -> np.ndarray:
        """Embeddings [len(texts), dim] in text order."""

    def finetune(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        sequences: list[list[int]],
        config: FinetuneConfig,
    ) -> tuple[MeanPoolEncoder, list[float]]:
        """The fine-tuned encoder and the loss per step."""

    def cluster(
        self,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        user_items: list[list[int]],
        terms: list[list[str]],
        k: int | None,
        seed: int,
    ) -> Clustering:
        """Users' clusters."""


class LocalBackend:
    """Fine-tune, embed and cluster in this process (the default backend)."""

    def __init__(self, progress: bool) -> None:
        self.device = pick_device()
        self.progress = progress

    def embed(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        max_length: int,
        desc: str,
    ) -> np.ndarray:
        """Embeddings [len(texts), dim]."""
        return embed_texts(encoder, tokenizer, texts, max_length, desc=desc, progress=self.progress)

    def finetune(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        sequences: list[list[int]],
        config: FinetuneConfig,
    ) -> tuple[MeanPoolEncoder, list[float]]:
        """Fine-tune in place; the same encoder and the loss per step."""
        losses = finetune(
            encoder, tokenizer, texts, sequences, config, self.device, progress=self.progress
        )
        return encoder, losses

    cluster = staticmethod(cluster_users)


def _histories(texts: list[str], sequences: list[list[int]], max_items: int) -> list[str]:
    return [render_history([texts[r] for r in seq[-max_items:]]) for seq in sequences]


def train(config: TrainConfig) -> Path:
    """Run the whole training pipeline and write the run folder; return its path."""
    if config.backend == "ray":
        from training.ray_backend import RayBackend

        storage = config.out.with_name(config.out.name + ".ray")
        with RayBackend(
            config.ray_address, config.ray_workers, storage, config.progress
        ) as ray_backend:
            return _train(config, ray_backend)
    if config.backend != "local":
        raise ValueError(f"backend {config.backend!r}: expected 'local' or 'ray'")
    return _train(config, LocalBackend(config.progress))


def _train(config: TrainConfig, backend: TrainingBackend) -> Path:
    timer = StageTimer()
    ft = config.finetune
    with timer.stage("load data"):
        dataset: Dataset = load_spec(config.data)
        items = dataset.items.reset_index(drop=True)
        row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
        users, sequences = [], []
        for user, seq in dataset.sequences().items():
            users.append(user)
            sequences.append([row_of[i] for i in seq])
        texts = render_items(items)
        print(
            f"[train] {dataset.name}: {len(users)} users, {len(items)} items, "
            f"{sum(map(len, sequences))} interactions",
            flush=True,
        )

    # Leave-one-out: the last item of each user is held out of fine-tuning and
    # used as the evaluation target.
    rng = random.Random(config.seed)
    evaluable = [u for u, s in enumerate(sequences) if len(s) >= 3]
    eval_rows = sorted(rng.sample(evaluable, min(config.eval_users, len(evaluable))))
    eval_histories = [sequences[u][:-1] for u in eval_rows]
    eval_targets = [sequences[u][-1] for u in eval_rows]
    train_sequences = [s[:-1] if len(s) >= 3 else s for s in sequences]

    model_dir = resolve_model_dir(config.model)
    encoder, tokenizer = load_encoder(model_dir)
    encoder.to(backend.device)
    metrics: dict[str, dict[str, float]] = {}

    def evaluate(name: str, item_vectors: np.ndarray) -> None:
        queries = backend.embed(
            encoder,
            tokenizer,
            _histories(texts, eval_histories, ft.max_history_items),
            ft.history_max_length,
            desc=f"eval {name}",
        )
        metrics[name] = rank_metrics(queries @ item_vectors.T, eval_histories, eval_targets)

    with timer.stage("evaluate pretrained encoder"):
        pretrained_items = backend.embed(
            encoder, tokenizer, texts, ft.item_max_length, desc="items"
        )
        evaluate("pretrained encoder", pretrained_items)
        metrics["popularity"] = rank_metrics(
            popularity_scores(train_sequences, len(items), len(eval_rows)),
            eval_histories,
            eval_targets,
        )

    with timer.stage("fine-tune"):
        encoder, losses = backend.finetune(encoder, tokenizer, texts, train_sequences, ft)

    with timer.stage("embed items and users"):
        item_embeddings = backend.embed(encoder, tokenizer, texts, ft.item_max_length, desc="items")
        evaluate("fine-tuned encoder", item_embeddings)
        user_embeddings = backend.embed(
            encoder,
            tokenizer,
            _histories(texts, sequences, ft.max_history_items),
            ft.history_max_length,
            desc="users",
        )

    with timer.stage("cluster users"):
        terms = item_terms(list(items["categories"]), list(items["title"]))
        clustering = backend.cluster(
            user_embeddings, item_embeddings, sequences, terms, config.clusters, config.seed
        )
        print(
            f"[train] {len(clustering.centroids)} clusters, silhouette {clustering.silhouette:.3f}",
            flush=True,
        )

    with timer.stage("write run"):
        out = write_run(
            config.out,
            encoder,
            tokenizer,
            items,
            texts,
            users,
            item_embeddings,
            user_embeddings,
            clustering,
            {
                "model_name": DEFAULT_MODEL_NAME if config.model is None else model_dir.name,
                "base_model_dir": str(model_dir),
                "data": config.data,
                "seed": config.seed,
                "clusters": config.clusters,
                # The backend that trained (local | ray); run.json's key predates the name.
                "engine": config.backend,
                "finetune": asdict(config.finetune),
                "metrics": metrics,
                "loss": losses,
                "timings_s": timer.seconds,
                "dataset": dataset.name,
                "num_users": len(users),
                "num_items": len(items),
            },
        )
    _print_metrics(metrics)
    return out


def _print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    print("\n| model (leave-one-out, sample) | HR@10 | NDCG@10 | MRR |")
    print("|---|---|---|---|")
    for name, m in metrics.items():
        print(f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['mrr']:.4f} |")
    print(flush=True)
