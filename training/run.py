"""`irec train`: the one training pipeline; `irec eval` runs the protocol around the same code.

data → item texts → encoder (frozen, fine-tuned with the head on the next-item objective,
or a contrastive stage first) → sequence head → kept only if it beats what it started
from on validation → user clusters → run folder (training.run_folder.write_run).

:func:`fit` is the model: it takes training sequences and a validation slice (each
validation user's next item) and returns a :class:`TrainedModel`. :func:`train` is
`irec train`: it holds out each sampled user's last item for validation, fits, clusters
and writes the run folder. `irec eval` (irec.quality) calls :func:`fit` with the
papers' split and the same :class:`TrainConfig`.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from server.bundle.manifest import render_history
from server.vectors import unit_rows
from training import baselines
from training.cluster import Clustering, cluster_users, item_terms
from training.data import DataError, load_spec
from training.evaluate import mean_ndcg, popularity_scores, target_ranks
from training.finetune import FinetuneConfig, finetune
from training.item_tower import EncoderTuning, ItemTextTower
from training.new_item_choice import choose_for_run as choose_new_items
from training.run_folder import TENSORBOARD_DIR, write_run
from training.sequence_head import HeadConfig, SequenceHead, score_users, train_head
from training.text import render_items, render_titles
from training.torch_encoder import (
    DEFAULT_MODEL_NAME,
    MeanPoolEncoder,
    embed_texts,
    load_encoder,
    pick_device,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

ENCODER_TREATMENTS = ("frozen", "finetune", "contrastive")
QUICK_USERS = 300


class TrainConfigError(ValueError):
    """An option value that cannot work; the message names the option."""


@dataclass(frozen=True)
class EncoderConfig:
    """How the language model is treated.

    frozen: item texts are encoded once by the pretrained encoder.
    finetune: the encoder's top `trainable_layers` are trained with the head on the
        next-item objective (training.item_tower) for `epochs` epochs after
        `warmup_epochs` head epochs on the pretrained table (the item table refreshed
        every `refresh_every` steps); then the head alone trains on the tuned table.
    contrastive: a stage before the head pulls a rendered history toward its next
        item's text (training.finetune; runs on Ray Train with --backend ray); kept only
        if the encoder's own recommendations improve on validation.
    """

    # Field metadata makes a field an option of `irec train` and `irec eval` (irec.options).
    treatment: str = field(
        default="finetune",
        metadata={
            "flag": "--encoder",
            "choices": ENCODER_TREATMENTS,
            "help": "frozen: item texts encoded once; finetune: the encoder's top layers "
            "trained with the sequence head on the next-item objective (kept only if better "
            "on validation); contrastive: a history→next-item contrastive stage before the head",
        },
    )
    trainable_layers: int = field(
        default=2, metadata={"flag": "--encoder-layers", "help": "top encoder layers fine-tuned"}
    )
    learning_rate: float = field(
        default=5e-5,
        metadata={"flag": "--encoder-lr", "help": "AdamW learning rate of the encoder"},
    )
    refresh_every: int = field(default=16, metadata={"help": "head steps per encoder update"})
    warmup_epochs: int = 1
    # Joint encoder + head epochs (each costs a few head epochs on a CPU).
    epochs: int = field(
        default=3,
        metadata={
            "flag": "--encoder-epochs",
            "help": "epochs of joint encoder + head training (after one head epoch); the head "
            "then trains alone on the tuned item table",
        },
    )
    item_max_length: int = 48
    contrastive: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `irec train` takes; `irec eval` adds only its protocol options."""

    data: str
    out: Path
    # Field metadata makes a field an option of `irec train` and `irec eval` (irec.options).
    model: str | None = field(
        default=None,
        metadata={"help": "Hugging Face encoder folder (default: packaged all-MiniLM-L6-v2)"},
    )
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    minutes: float = field(default=30.0, metadata={"help": "time budget of head (+ encoder)"})
    clusters: int | None = field(
        default=None, metadata={"help": "K, or 'auto' (silhouette, 4..16)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    validation_users: int = field(
        default=1000,
        metadata={
            "help": "users whose next item validates (model, mode and new-item choices); all "
            "of them when this is at least the number of users"
        },
    )
    users: int | None = field(
        default=None, metadata={"help": "use a seeded sample of this many users"}
    )
    quick: bool = field(
        default=False, metadata={"help": "a tiny BERT built on the fly, small head"}
    )
    progress: bool = True  # progress bars, drawn only when stderr is a terminal
    backend: str = field(
        default="local",
        metadata={
            "choices": ("local", "ray"),
            "help": "local: one process; ray: Ray Data embedding, Ray Train for --encoder "
            "contrastive, mini-batch K-Means (needs the `ray` extra)",
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "flag": "--address",
            "help": "Ray cluster address for --backend ray (default: a local Ray)",
        },
    )
    ray_workers: int = field(default=2, metadata={"help": "Ray Train workers and embedding actors"})

    def check(self) -> None:
        """Raise ValueError naming the option when a value cannot work."""
        if self.encoder.treatment not in ENCODER_TREATMENTS:
            raise TrainConfigError(
                f"--encoder {self.encoder.treatment!r}: choose {', '.join(ENCODER_TREATMENTS)}"
            )
        if self.minutes <= 0:
            raise TrainConfigError(f"--minutes {self.minutes:g}: the training budget must be > 0")
        if self.head.epochs < 1:
            raise TrainConfigError(f"--epochs {self.head.epochs}: must be ≥ 1")
        if self.encoder.epochs < 1:
            raise TrainConfigError(f"--encoder-epochs {self.encoder.epochs}: must be ≥ 1")
        if self.encoder.refresh_every < 1:
            raise TrainConfigError(f"--refresh-every {self.encoder.refresh_every}: must be ≥ 1")
        if self.validation_users < 1:
            raise TrainConfigError(f"--validation-users {self.validation_users}: must be ≥ 1")
        if self.backend not in ("local", "ray"):
            raise TrainConfigError(f"--backend {self.backend!r}: expected 'local' or 'ray'")
        if self.backend == "ray" and self.encoder.treatment == "finetune":
            raise TrainConfigError(
                "--backend ray fine-tunes with the contrastive stage: give --encoder "
                "contrastive or frozen (joint fine-tuning runs locally)"
            )

    def head_config(self) -> HeadConfig:
        """The head's config for this run (smaller in quick mode, seeded)."""
        if self.quick:
            return replace(
                self.head,
                dim=32,
                max_length=50,
                batch_size=32,
                dropout=0.1,
                epochs=min(self.head.epochs, 30),
                patience=4,
                seed=self.seed,
            )
        return replace(self.head, seed=self.seed)


class StageTimer:
    """Wall time per named stage, logged as it goes (to `logger`: the caller's module)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.seconds: dict[str, float] = {}
        self.log = logger

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage."""
        self.log.info("%s …", name)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.log.info("%s done in %.1f s", name, self.seconds[name])


def progress_bars(wanted: bool) -> bool:
    """Whether to draw progress bars: when wanted and stderr is a terminal (not in CI logs)."""
    return wanted and sys.stderr.isatty()


class TrainingBackend(Protocol):
    """Where embedding, the contrastive stage and clustering run: local or Ray."""

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
        """The contrastively fine-tuned encoder and the loss per step."""

    def cluster(
        self,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        user_items: list[list[int]],
        terms: list[list[str]],
        k: int | None,
        seed: int,
        titles: list[str] | None = None,
    ) -> Clustering:
        """Users' clusters (`titles`: item titles for the descriptions' examples)."""


class LocalBackend:
    """Embed, fine-tune and cluster in this process (the default backend)."""

    def __init__(self, progress: bool) -> None:
        self.device = pick_device()
        self.progress = progress_bars(progress)

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
        """Contrastive fine-tuning in place; the same encoder and the loss per step."""
        losses = finetune(
            encoder, tokenizer, texts, sequences, config, self.device, progress=self.progress
        )
        return encoder, losses

    cluster = staticmethod(cluster_users)


@dataclass
class TrainedModel:
    """What fit() returns: the shipped model, and why it was chosen."""

    encoder: MeanPoolEncoder
    tokenizer: PreTrainedTokenizerBase
    model_name: str
    head: SequenceHead | None  # None: the pretrained encoder won on validation
    text_embeddings: np.ndarray  # the shipped encoder's item texts [items, text_dim]
    pretrained_text_embeddings: np.ndarray
    validation: dict[str, float]  # validation NDCG@10 of each candidate
    shipped: str
    reason: str
    encoder_finetuned: bool
    training: dict[str, Any]

    def item_vectors(self) -> np.ndarray:
        """Item vectors in the space the user vectors score against."""
        if self.head is None:
            return self.text_embeddings
        with torch.no_grad():
            return self.head.all_item_vectors().numpy()

    def user_vectors(self, histories: list[list[int]], texts: list[str]) -> np.ndarray:
        """User vectors of histories (rows, oldest first)."""
        if self.head is not None:
            users, _ = score_users(self.head, histories)
            return users
        return embed_texts(
            self.encoder,
            self.tokenizer,
            [render_history([texts[r] for r in h[-20:]]) for h in histories],
            128,
            desc="users",
            progress=False,
        )


def load_model(config: TrainConfig, texts: list[str], out: Path) -> tuple[Any, Any, str]:
    """The starting encoder: --model, the packaged MiniLM, or (quick) a tiny BERT."""
    if config.quick and config.model is None:
        from training.tiny_model import build_tiny_bert

        model_dir = build_tiny_bert(texts, out / "tiny-model", seed=config.seed)
        name = "tiny-bert (quick mode)"
    else:
        model_dir = resolve_model_dir(config.model)
        name = DEFAULT_MODEL_NAME if config.model is None else model_dir.name
    encoder, tokenizer = load_encoder(model_dir)
    return encoder, tokenizer, name


@dataclass(frozen=True)
class ValidationSlice:
    """The validation users: their histories (rows) and each one's held-out next item."""

    histories: list[list[int]]
    targets: list[int]

    def ndcg(self, scores: np.ndarray) -> float:
        """NDCG@10 of the targets under full-catalogue scores [users, items]."""
        return mean_ndcg(target_ranks(scores, self.histories, self.targets))

    def text_ndcg(self, text_embeddings: np.ndarray) -> float:
        """NDCG@10 of an encoder alone: user = mean of the last item texts."""
        return self.ndcg(baselines.frozen_text_scores(text_embeddings, self.histories))


def fit(
    config: TrainConfig,
    items: pd.DataFrame,
    train_sequences: list[list[int]],
    val_histories: list[list[int]],
    val_targets: list[int],
    backend: TrainingBackend,
    workdir: Path,
    excluded_items: list[int] | None = None,
    log_dir: Path | None = None,
) -> TrainedModel:
    """Train the model on `train_sequences` (item rows), choose on validation, return it.

    `items` is the catalogue in row order. `excluded_items` (rows) are never targets (the
    cold-start protocol holds them out). Loss and validation curves go to TensorBoard
    event files in `log_dir`.
    """
    config.check()
    texts, titles = render_items(items), render_titles(items)
    if not any(t.strip() for t in texts):
        raise DataError(f"{config.data}: the items have no text (title, categories, description)")
    encoder, tokenizer, model_name = load_model(config, texts, workdir)
    encoder.to(backend.device)
    enc = config.encoder
    val = ValidationSlice(val_histories, val_targets)
    pretrained = backend.embed(encoder, tokenizer, texts, enc.item_max_length, desc="item texts")
    popularity = popularity_scores(train_sequences, len(items), len(val_targets))
    validation = {
        "popularity": val.ndcg(popularity),
        "pretrained encoder": val.text_ndcg(pretrained),
    }
    training: dict[str, Any] = {"treatment": enc.treatment}
    text_embeddings, contrastive_kept = pretrained, False
    if enc.treatment == "contrastive":
        encoder, tuned, ndcg, losses = _contrastive_stage(
            config, backend, encoder, tokenizer, texts, train_sequences, val, validation
        )
        validation["contrastive encoder"], training["contrastive_loss"] = ndcg, losses
        if tuned is not None:
            text_embeddings, contrastive_kept = tuned, True
    head = SequenceHead(torch.from_numpy(text_embeddings), config.head_config())
    short_text = torch.from_numpy(
        backend.embed(encoder, tokenizer, titles, enc.item_max_length, desc="item titles")
    )
    tuning = _encoder_tuning(enc, encoder, tokenizer, texts + titles)
    history = _train_head(
        config, head, train_sequences, val, excluded_items, tuning, short_text, log_dir
    )
    _freeze(encoder)
    kept_updates = int(history.get("best_encoder_updates", [0.0])[0])
    if tuning is not None:
        training["encoder_updates_total"] = tuning.updates
        training["encoder_updates_kept"] = kept_updates
    validation["sequence model"] = max(history["val_ndcg@10"], default=0.0)
    training["head"] = history | {"config": asdict(head.config)}
    best_baseline = max(("popularity", "pretrained encoder"), key=lambda k: validation[k])
    if validation["sequence model"] <= validation[best_baseline]:
        return _pretrained_fallback(
            config, texts, workdir, pretrained, validation, best_baseline, training
        )
    reason = (
        f"validation NDCG@10 {validation['sequence model']:.4f} > {best_baseline} "
        f"{validation[best_baseline]:.4f}"
    )
    if enc.treatment == "finetune":
        kept = f"fine-tuned ({kept_updates} updates)" if kept_updates else "pretrained"
        reason += f"; the {kept} encoder was the better one on validation"
    return TrainedModel(
        encoder=encoder,
        tokenizer=tokenizer,
        model_name=model_name,
        head=head,
        text_embeddings=head.item_text[1:].numpy().copy(),
        pretrained_text_embeddings=pretrained,
        validation=validation,
        shipped="sequence model",
        reason=reason,
        encoder_finetuned=kept_updates > 0 or contrastive_kept,
        training=training,
    )


def _contrastive_stage(
    config: TrainConfig,
    backend: TrainingBackend,
    encoder: MeanPoolEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    train_sequences: list[list[int]],
    val: ValidationSlice,
    validation: dict[str, float],
) -> tuple[MeanPoolEncoder, np.ndarray | None, float, list[float]]:
    """The contrastive stage, kept only if its encoder beats the pretrained one on validation.

    Returns the encoder to go on with, its item-text embeddings (None when the stage was
    not kept: the pretrained weights are restored), its validation NDCG@10 and its loss
    per step.
    """
    enc = config.encoder
    start = copy.deepcopy(encoder.state_dict())
    encoder, losses = backend.finetune(
        encoder, tokenizer, texts, train_sequences, replace(enc.contrastive, seed=config.seed)
    )
    tuned = backend.embed(encoder, tokenizer, texts, enc.item_max_length, desc="item texts")
    ndcg = val.text_ndcg(tuned)
    if ndcg > validation["pretrained encoder"]:
        return encoder, tuned, ndcg, losses
    log.info(
        "the contrastive stage did not beat the pretrained encoder on validation: "
        "keeping the pretrained weights"
    )
    encoder.load_state_dict(start)
    return encoder, None, ndcg, losses


def _encoder_tuning(
    enc: EncoderConfig,
    encoder: MeanPoolEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
) -> EncoderTuning | None:
    """The encoder's top layers, trained with the head (--encoder finetune), or None."""
    if enc.treatment != "finetune":
        return None
    tower = ItemTextTower(
        encoder.cpu(), tokenizer, texts, enc.trainable_layers, enc.item_max_length
    )
    return EncoderTuning(tower, enc.learning_rate, enc.refresh_every)


def _train_head(
    config: TrainConfig,
    head: SequenceHead,
    train_sequences: list[list[int]],
    val: ValidationSlice,
    excluded_items: list[int] | None,
    tuning: EncoderTuning | None,
    short_text: torch.Tensor,
    log_dir: Path | None,
) -> dict[str, list[float]]:
    """The sequence head (and the encoder's top layers with `tuning`); its curves."""

    def validate(model: SequenceHead) -> float:
        users, item_vectors = score_users(model, val.histories)
        return val.ndcg(users @ item_vectors.T)

    writer = _tensorboard(log_dir)

    def log_scalar(name: str, value: float, step: int) -> None:
        if writer is not None:
            writer.add_scalar(name, value, step)

    history = train_head(
        head,
        train_sequences,
        validate=validate,
        excluded_items=excluded_items or (),
        progress=progress_bars(config.progress),
        time_budget_s=config.minutes * 60,
        encoder_tuning=tuning,
        warmup_epochs=config.encoder.warmup_epochs,
        encoder_epochs=config.encoder.epochs,
        log=log_scalar,
        short_text=short_text,
    )
    if writer is not None:
        writer.close()
    return history


def _freeze(encoder: MeanPoolEncoder) -> None:
    """No more gradients, eval mode: the encoder as it ships."""
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    encoder.eval()


def _pretrained_fallback(
    config: TrainConfig,
    texts: list[str],
    workdir: Path,
    pretrained: np.ndarray,
    validation: dict[str, float],
    best_baseline: str,
    training: dict[str, Any],
) -> TrainedModel:
    """The pretrained encoder alone, shipped when the sequence model lost on validation."""
    reason = (
        f"the sequence model (validation NDCG@10 {validation['sequence model']:.4f}) did not "
        f"beat {best_baseline} ({validation[best_baseline]:.4f}): shipping the pretrained encoder"
    )
    log.info("%s", reason)
    fresh, tokenizer, model_name = load_model(config, texts, workdir)
    return TrainedModel(
        encoder=fresh,
        tokenizer=tokenizer,
        model_name=model_name,
        head=None,
        text_embeddings=pretrained,
        pretrained_text_embeddings=pretrained,
        validation=validation,
        shipped="pretrained encoder",
        reason=reason,
        encoder_finetuned=False,
        training=training,
    )


def _tensorboard(log_dir: Path | None) -> Any:
    """A SummaryWriter into log_dir, or None (no folder, or tensorboard not installed)."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: curves go to run.json only")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def train(config: TrainConfig) -> Path:
    """`irec train`: the whole pipeline, written as a run folder; returns its path."""
    config.check()
    if config.backend == "ray":
        from training.ray_backend import RayBackend

        storage = config.out.with_name(config.out.name + ".ray")
        with RayBackend(
            config.ray_address, config.ray_workers, storage, progress_bars(config.progress)
        ) as ray_backend:
            return _train(config, ray_backend)
    return _train(config, LocalBackend(config.progress))


def _train(config: TrainConfig, backend: TrainingBackend) -> Path:
    timer = StageTimer()
    with timer.stage("load data"):
        dataset_name, items, users, sequences = _load(config)
    train_sequences, val = hold_out(config, sequences)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = config.out.with_name(config.out.name + ".work")
    workdir.mkdir(parents=True, exist_ok=True)
    with timer.stage("encoder and sequence head"):
        model = fit(
            config,
            items,
            train_sequences,
            val.histories,
            val.targets,
            backend,
            workdir,
            log_dir=workdir / TENSORBOARD_DIR,
        )
    texts = render_items(items)
    new_items: dict[str, Any] | None = None
    if model.head is not None:
        with timer.stage("new-item setting"):
            new_items = _new_item_setting(model, val.histories, val.targets, texts, config.seed)
    with timer.stage("cluster users"):
        user_vectors = model.user_vectors(sequences, texts)
        item_vectors = model.item_vectors()
        clustering = _cluster_users(config, backend, items, sequences, user_vectors, item_vectors)
    with timer.stage("write run"):
        out = write_run(
            config.out,
            model.encoder,
            model.tokenizer,
            items,
            texts,
            users,
            item_vectors,
            user_vectors,
            clustering,
            {
                **run_info(config, model, dataset_name, len(users), len(items), timer.seconds),
                **({"new_items": new_items} if new_items else {}),
            },
            head=model.head,
            tensorboard=workdir / TENSORBOARD_DIR,
        )
    _log_validation(model)
    return out


def _load(config: TrainConfig) -> tuple[str, pd.DataFrame, list[str], list[list[int]]]:
    """The data set's name, items (row order), users and their sequences of item rows."""
    dataset = load_spec(config.data)
    items = dataset.items.reset_index(drop=True)
    row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
    users, sequences = [], []
    for user, seq in dataset.sequences().items():
        users.append(user)
        sequences.append([row_of[i] for i in seq])
    if config.users is not None and config.users < len(users):
        keep = sorted(random.Random(config.seed).sample(range(len(users)), config.users))
        users, sequences = [users[u] for u in keep], [sequences[u] for u in keep]
    log.info(
        "%s: %d users, %d items, %d interactions",
        dataset.name,
        len(users),
        len(items),
        sum(map(len, sequences)),
    )
    return dataset.name, items, users, sequences


def hold_out(
    config: TrainConfig, sequences: list[list[int]]
) -> tuple[list[list[int]], ValidationSlice]:
    """The training sequences, and the validation slice held out of them.

    The last item of a seeded sample of `config.validation_users` users (of those with 3
    or more items) is held out of training.
    """
    rng = random.Random(config.seed)
    evaluable = [u for u, s in enumerate(sequences) if len(s) >= 3]
    if not evaluable:
        raise DataError(f"{config.data}: no user has 3 or more interactions to validate on")
    held_out = set(rng.sample(evaluable, min(config.validation_users, len(evaluable))))
    train_sequences = [s[:-1] if u in held_out else s for u, s in enumerate(sequences)]
    val = ValidationSlice(
        histories=[sequences[u][:-1] for u in sorted(held_out)],
        targets=[sequences[u][-1] for u in sorted(held_out)],
    )
    return train_sequences, val


def _cluster_users(
    config: TrainConfig,
    backend: TrainingBackend,
    items: pd.DataFrame,
    sequences: list[list[int]],
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
) -> Clustering:
    """Users' clusters on unit vectors, described by the items' terms and titles."""
    terms = item_terms(list(items["categories"]), list(items["title"]), list(items["year"]))
    clustering = backend.cluster(
        unit_rows(user_vectors),
        unit_rows(item_vectors),
        sequences,
        terms,
        config.clusters,
        config.seed,
        render_titles(items),
    )
    log.info("%d clusters, silhouette %.3f", len(clustering.centroids), clustering.silhouette)
    return clustering


def _new_item_setting(
    model: TrainedModel,
    histories: list[list[int]],
    targets: list[int],
    texts: list[str],
    seed: int,
) -> dict[str, Any]:
    """How the bundle will serve items added later, chosen on this run's validation users."""
    head = model.head
    assert head is not None
    with torch.no_grad():
        item_text = head.item_text[1:].numpy()
        projection = head.text_projection.weight.numpy()
    chosen = choose_new_items(
        item_text,
        projection,
        model.item_vectors(),
        model.user_vectors(histories, texts),
        histories,
        targets,
        seed,
    )
    tried = {(t["neighbours"], t["weight"]): t for t in chosen["tried"]}
    pick = tried[(chosen["neighbours"], chosen["weight"])]
    log.info(
        "new items: text + the ID parts of the %d nearest trained items × %g (validation "
        "NDCG@10 for stand-in new items %.4f, text alone %.4f)",
        chosen["neighbours"],
        chosen["weight"],
        pick["cold"],
        chosen["tried"][0]["cold"],
    )
    return chosen


def run_info(
    config: TrainConfig,
    model: TrainedModel,
    dataset: str,
    num_users: int,
    num_items: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """run.json's content for a fitted model."""
    return {
        "model_name": model.model_name,
        "data": config.data,
        "seed": config.seed,
        "clusters": config.clusters,
        "engine": config.backend,
        "encoder": {
            "name": model.model_name,
            "treatment": config.encoder.treatment,
            "finetuned": model.encoder_finetuned,
            **asdict(config.encoder),
        },
        "shipped": model.shipped,
        "shipped_because": model.reason,
        "validation_ndcg@10": model.validation,
        "training": model.training,
        "finetune": {"history_max_length": 128, "item_max_length": config.encoder.item_max_length},
        "timings_s": timings,
        "dataset": dataset,
        "num_users": num_users,
        "num_items": num_items,
    }


def _log_validation(model: TrainedModel) -> None:
    """The candidates' validation NDCG@10 as a table, and what shipped."""
    rows = [f"| {name} | {value:.4f} |" for name, value in model.validation.items()]
    log.info(
        "\n| candidate (validation: held-out next items) | NDCG@10 |\n|---|---|\n%s\n"
        "shipped: %s — %s",
        "\n".join(rows),
        model.shipped,
        model.reason,
    )


__all__ = [
    "EncoderConfig",
    "LocalBackend",
    "StageTimer",
    "TrainConfig",
    "TrainedModel",
    "TrainingBackend",
    "fit",
    "train",
]
