"""`irec train --backend ray`: fine-tuning on Ray Train, embedding on Ray Data, streaming K-Means.

The same three operations as the local backend (training.run.LocalBackend), with the same code
underneath: the contrastive loop of training.finetune, embed_texts of training.torch_encoder and the
K selection and cluster descriptions of training.cluster. Only this module imports Ray.

- Fine-tuning: a TorchTrainer with N workers (DDP; gloo on CPU, NCCL on GPU). Each worker
  takes batch_size pairs per step (the same in-batch loss as local), so one step sees
  N × batch_size pairs and an epoch has N times fewer steps; the learning rate is not scaled.
  Rank 0 returns the encoder as a Hugging Face checkpoint, which the driver loads, so the run
  folder is written exactly as the local backend writes it.
- Embedding: a Ray Data dataset of (row, text) → map_batches on a pool of actors that each
  take the encoder from the object store once → embeddings put back in row order.
- Clustering: K is chosen exactly as locally (silhouette over 4..16 on the same seeded sample
  of at most 3,000 users); a K-Means on that sample seeds a MiniBatchKMeans refined with
  partial_fit over the dataset's batches, and labels are assigned batch by batch. Labels
  therefore differ a little from the local full-data K-Means (n_init=10).

Multi-node clusters (--address) need irec installed on every node and the run folder's
parent on storage every node can reach (Ray Train writes its checkpoint there).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import silhouette_score
from transformers import PreTrainedTokenizerBase

from training.cluster import SILHOUETTE_SAMPLE, Clustering, choose_k, describe_clustering
from training.finetune import (
    ContrastiveBatch,
    FinetuneConfig,
    PairEncoder,
    collate_pairs,
    make_optimizer,
    plan_steps,
    sample_pairs,
    train_steps,
)
from training.torch_encoder import MeanPoolEncoder, embed_texts, load_encoder, pick_device

# A fractional CPU per embedding actor: with 1 CPU each, an actor pool on a 2-core machine
# deadlocks Ray Data (REFERENCE.md §1). Each actor runs torch on one thread.
EMBED_ACTOR_CPUS = 0.5
TRAIN_WORKER_CPUS = 1.0
# Texts per actor call; embed_texts sorts each call's texts by length to pad little.
EMBED_BATCH = 256
ROWS_PER_BLOCK = 4096
# Users per MiniBatchKMeans.partial_fit call, and passes over the users.
KMEANS_BATCH = 4096
KMEANS_PASSES = 3
LOSSES_FILE = "losses.json"


class TextEmbedder:
    """A Ray Data actor: takes the encoder once, then embeds batches of (row, text)."""

    def __init__(self, model: Any, max_length: int) -> None:
        encoder, tokenizer = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        device = pick_device()
        if device.type == "cpu":
            torch.set_num_threads(1)
        self.encoder: MeanPoolEncoder = encoder.to(device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embeddings of one batch, with its row numbers."""
        texts = [str(t) for t in batch["text"]]
        vectors = embed_texts(self.encoder, self.tokenizer, texts, self.max_length, progress=False)
        return {"row": batch["row"], "embedding": vectors}


def text_dataset(texts: Sequence[str], blocks: int) -> ray.data.Dataset:
    """(row, text) in at least `blocks` blocks, so every actor of the pool gets work."""
    blocks = max(blocks, math.ceil(len(texts) / ROWS_PER_BLOCK), 1)
    size = max(1, math.ceil(len(texts) / blocks))
    frames = [
        pd.DataFrame({"row": np.arange(start, min(start + size, len(texts))), "text": chunk})
        for start in range(0, len(texts), size)
        for chunk in [list(texts[start : start + size])]
    ]
    return ray.data.from_pandas(frames)


def vector_dataset(vectors: np.ndarray, blocks: int) -> ray.data.Dataset:
    """(row, embedding) from an array already in memory."""
    blocks = max(blocks, math.ceil(len(vectors) / ROWS_PER_BLOCK), 1)
    size = max(1, math.ceil(len(vectors) / blocks))
    return ray.data.from_pandas(
        [
            pd.DataFrame({"row": np.arange(start, start + len(chunk)), "embedding": list(chunk)})
            for start in range(0, len(vectors), size)
            for chunk in [vectors[start : start + size]]
        ]
    )


def embed_dataset(
    texts: Sequence[str], model: Any, max_length: int, workers: int, gpus: int = 0
) -> ray.data.Dataset:
    """Batch inference: a materialized dataset of (row, embedding)."""
    pool = min(workers, gpus) if gpus else workers
    return (
        text_dataset(texts, blocks=2 * pool)
        .map_batches(
            TextEmbedder,
            fn_constructor_kwargs={"model": model, "max_length": max_length},
            batch_size=EMBED_BATCH,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=None if gpus else EMBED_ACTOR_CPUS,
            num_gpus=1 if gpus else None,
        )
        .materialize()
    )


def collect_rows(dataset: ray.data.Dataset, column: str, count: int) -> np.ndarray:
    """A column back in row order (each batch carries its rows; rows index the result)."""
    out: np.ndarray | None = None
    seen = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        values = np.asarray(batch[column])
        if out is None:
            out = np.empty((count, *values.shape[1:]), dtype=values.dtype)
        out[batch["row"]] = values
        seen += len(values)
    if seen != count:
        raise RuntimeError(f"Ray dataset returned {seen} rows, expected {count}")
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _sample_rows(count: int, seed: int) -> np.ndarray:
    """The rows choose_k samples when it sees all `count` users (same generator, same order)."""
    if count <= SILHOUETTE_SAMPLE:
        return np.arange(count)
    return np.random.default_rng(seed).choice(count, SILHOUETTE_SAMPLE, replace=False)


def _take_rows(dataset: ray.data.Dataset, rows: np.ndarray) -> np.ndarray:
    """Embeddings of the given rows, in the order given."""
    wanted = set(rows.tolist())
    position = {row: i for i, row in enumerate(rows.tolist())}
    out: np.ndarray | None = None
    for batch in dataset.iter_batches(batch_size=KMEANS_BATCH, batch_format="numpy"):
        for row, vector in zip(batch["row"].tolist(), batch["embedding"], strict=True):
            if row in wanted:
                if out is None:
                    out = np.empty((len(rows), len(vector)), dtype=np.float32)
                out[position[row]] = vector
    assert out is not None
    return out


def _assign(batch: dict[str, Any], model: MiniBatchKMeans) -> dict[str, Any]:
    return {"row": batch["row"], "label": model.predict(np.asarray(batch["embedding"]))}


def cluster_dataset(
    users: ray.data.Dataset,
    item_embeddings: np.ndarray,
    user_items: Sequence[Sequence[int]],
    terms: Sequence[Sequence[str]],
    k: int | None,
    seed: int,
    titles: Sequence[str] | None = None,
) -> Clustering:
    """Streaming K-Means over a (row, embedding) dataset; see the module docstring."""
    count = users.count()
    rows = _sample_rows(count, seed)
    sample = _take_rows(users, rows)
    k_scores: dict[int, float] = {}
    if k is None:
        k_scores = choose_k(sample, seed)
        if not k_scores:
            raise ValueError("too few users to choose K automatically; pass --clusters")
        k = max(k_scores, key=lambda c: k_scores[c])
    if k < 1 or k > count:
        raise ValueError(f"--clusters {k}: need 1..{count} (number of users)")
    start = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(sample).cluster_centers_
    model = MiniBatchKMeans(n_clusters=k, init=start, n_init=1, random_state=seed)
    for _ in range(KMEANS_PASSES):
        for batch in users.iter_batches(batch_size=KMEANS_BATCH, batch_format="numpy"):
            if len(batch["row"]) >= k:  # partial_fit needs at least K rows
                model.partial_fit(np.asarray(batch["embedding"]))
    labels = collect_rows(
        users.map_batches(partial(_assign, model=model), batch_format="numpy"),
        "label",
        count,
    ).astype(np.int64)
    silhouette = (
        float(silhouette_score(sample, labels[rows], metric="cosine"))
        if 1 < k < len(sample) and len(set(labels[rows].tolist())) > 1
        else 0.0
    )
    return describe_clustering(
        model.cluster_centers_,
        labels,
        item_embeddings,
        user_items,
        terms,
        silhouette,
        k_scores,
        titles,
    )


def _worker_batches(
    sequences: Sequence[Sequence[int]],
    item_texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    config: FinetuneConfig,
    world_size: int,
) -> Iterator[ContrastiveBatch]:
    """Endless batches for one worker.

    Every rank samples the same pairs with the same seed; the DistributedSampler that
    prepare_data_loader adds gives each rank its own share of them.
    """
    import ray.train.torch
    from torch.utils.data import DataLoader

    rng = random.Random(config.seed)
    while True:
        pairs = sample_pairs(sequences, config.samples_per_user, config.max_history_items, rng)
        per_worker = len(pairs) // world_size
        if per_worker < 2:
            raise ValueError("fine-tuning needs at least two pairs per Ray Train worker")
        loader: DataLoader[Any] = DataLoader(
            pairs,  # type: ignore[arg-type]
            batch_size=min(config.batch_size, per_worker),
            drop_last=True,
            collate_fn=partial(
                collate_pairs, tokenizer=tokenizer, item_texts=item_texts, config=config
            ),
        )
        yield from ray.train.torch.prepare_data_loader(loader)


def finetune_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: the local contrastive loop under DDP."""
    import ray.train
    import ray.train.torch

    config: FinetuneConfig = loop_config["finetune"]
    encoder, tokenizer = ray.get(loop_config["model"])
    item_texts, sequences = ray.get(loop_config["data"])
    context = ray.train.get_context()
    torch.manual_seed(config.seed)
    # The encoder's pooler is computed but unused by mean pooling: DDP must allow that.
    model = ray.train.torch.prepare_model(
        PairEncoder(encoder), parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    total_steps, warmup = plan_steps(sequences, config, context.get_world_size())
    optimizer, scheduler = make_optimizer(model, config, total_steps, warmup)
    batches = _worker_batches(sequences, item_texts, tokenizer, config, context.get_world_size())
    device = ray.train.torch.get_device()
    losses = train_steps(
        model, batches, optimizer, scheduler, total_steps, config, device, progress=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if context.get_world_rank() == 0:
            encoder.transformer.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (Path(tmp) / LOSSES_FILE).write_text(json.dumps(losses))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"loss": losses[-1], "steps": len(losses)}, checkpoint=checkpoint)


class RayBackend:
    """Fine-tune, embed and cluster on a Ray cluster (local when address is None)."""

    device = torch.device("cpu")  # the driver only holds the encoder; workers compute

    def __init__(self, address: str | None, workers: int, storage: Path, progress: bool) -> None:
        if workers < 1:
            raise ValueError(f"--ray-workers {workers}: need at least 1")
        self.address = address
        self.workers = workers
        self.storage = storage
        self.progress = progress
        self.gpus = 0
        self._started = False
        self._model: tuple[MeanPoolEncoder, Any] | None = None
        self._last: tuple[np.ndarray, ray.data.Dataset] | None = None

    def __enter__(self) -> RayBackend:
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False)
            self._started = True
        ray.data.DataContext.get_current().enable_progress_bars = self.progress
        self.gpus = int(ray.cluster_resources().get("GPU", 0))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._model = self._last = None
        shutil.rmtree(self.storage, ignore_errors=True)
        if self._started:
            ray.shutdown()

    def _model_ref(self, encoder: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase) -> Any:
        """The encoder in the object store, put once per set of weights."""
        if self._model is None or self._model[0] is not encoder:
            self._model = (encoder, ray.put((encoder, tokenizer)))
        return self._model[1]

    def embed(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_length: int,
        desc: str,
    ) -> np.ndarray:
        """Embeddings [len(texts), dim], equal to embed_texts' up to float rounding."""
        model = self._model_ref(encoder, tokenizer)
        dataset = embed_dataset(texts, model, max_length, self.workers, self.gpus)
        vectors = collect_rows(dataset, "embedding", len(texts)).astype(np.float32)
        self._last = (vectors, dataset)
        return vectors

    def finetune(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        sequences: Sequence[Sequence[int]],
        config: FinetuneConfig,
    ) -> tuple[MeanPoolEncoder, list[float]]:
        """TorchTrainer over N workers; the fine-tuned encoder (rank 0's) and its losses."""
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        resources = {"CPU": TRAIN_WORKER_CPUS, **({"GPU": 1.0} if self.gpus else {})}
        trainer = TorchTrainer(
            finetune_worker,
            train_loop_config={
                "finetune": config,
                "model": self._model_ref(encoder, tokenizer),
                "data": ray.put((list(texts), [list(s) for s in sequences])),
            },
            scaling_config=ScalingConfig(
                num_workers=self.workers,
                use_gpu=self.gpus > 0,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(name="finetune", storage_path=str(self.storage.resolve())),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint from rank 0")
        with result.checkpoint.as_directory() as folder:
            tuned, _ = load_encoder(Path(folder))
            losses = json.loads((Path(folder) / LOSSES_FILE).read_text())
        return tuned, losses

    def cluster(
        self,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        user_items: Sequence[Sequence[int]],
        terms: Sequence[Sequence[str]],
        k: int | None,
        seed: int,
        titles: Sequence[str] | None = None,
    ) -> Clustering:
        """Streaming clustering over the users' Ray dataset (the one embed just made)."""
        if self._last is not None and self._last[0] is user_embeddings:
            users = self._last[1]
        else:
            users = vector_dataset(user_embeddings, blocks=2 * self.workers)
        return cluster_dataset(users, item_embeddings, user_items, terms, k, seed, titles)
