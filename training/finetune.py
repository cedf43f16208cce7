"""Contrastive fine-tuning: a history is pulled toward the item the user took next.

Loss: softmax cross-entropy of (history · item) / temperature over the batch's
target items (in-batch negatives). Columns holding the same item as a row's own
target are masked, so a popular item is never its own negative. Mean pooling
and L2 normalisation are in the encoder, so dot products are cosines.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from server.bundle.manifest import render_history
from training.torch_encoder import MeanPoolEncoder, tokenize

# Temperature ~0.05 is what the strongest contrastive recommenders on
# MovieLens-1M use (REFERENCE.md §3); much higher flattens the softmax.
DEFAULT_TEMPERATURE = 0.05


@dataclass(frozen=True)
class FinetuneConfig:
    """Knobs of one fine-tuning run."""

    # Field metadata makes a field an option of `irec train` and `irec eval` (irec.options).
    epochs: float = field(
        default=1.0, metadata={"flag": "--passes", "help": "contrastive: passes over the users"}
    )
    batch_size: int = field(default=32, metadata={"help": "contrastive: histories per step"})
    learning_rate: float = field(
        default=5e-5, metadata={"flag": "--lr", "help": "contrastive: AdamW learning rate"}
    )
    temperature: float = field(
        default=DEFAULT_TEMPERATURE, metadata={"help": "contrastive: softmax temperature"}
    )
    history_max_length: int = 128
    item_max_length: int = 32
    max_history_items: int = 20
    samples_per_user: int = field(
        default=1, metadata={"help": "contrastive: pairs per user per pass"}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "contrastive: stop after this many steps"}
    )
    warmup_ratio: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class TrainingPair:
    """One example: item rows seen so far (oldest first) and the row taken next."""

    history: tuple[int, ...]
    target: int


def sample_pairs(
    sequences: Sequence[Sequence[int]], samples_per_user: int, max_items: int, rng: random.Random
) -> list[TrainingPair]:
    """Pick cut points in each sequence: history = items before it, target = the item at it."""
    pairs = []
    for seq in sequences:
        if len(seq) < 2:
            continue
        for _ in range(samples_per_user):
            cut = rng.randrange(1, len(seq))
            pairs.append(TrainingPair(tuple(seq[max(0, cut - max_items) : cut]), seq[cut]))
    rng.shuffle(pairs)
    return pairs


def in_batch_loss(
    users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy over in-batch items; duplicates of a row's target are masked out."""
    logits = users @ items.T / temperature
    same_item = targets[:, None] == targets[None, :]
    diagonal = torch.eye(len(targets), dtype=torch.bool, device=users.device)
    logits = logits.masked_fill(same_item & ~diagonal, float("-inf"))
    labels = torch.arange(len(targets), device=users.device)
    return torch.nn.functional.cross_entropy(logits, labels)


class PairEncoder(nn.Module):
    """Histories and their target items through one shared encoder in a single forward call.

    One call per step keeps DistributedDataParallel (Ray Train) to one forward per backward.
    """

    def __init__(self, encoder: MeanPoolEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, histories: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(history embeddings, item embeddings), both unit rows."""
        return self.encoder(**histories), self.encoder(**items)


# One step's input: tokenized histories, tokenized target items, target rows.
ContrastiveBatch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]


def collate_pairs(
    pairs: Sequence[TrainingPair],
    tokenizer: PreTrainedTokenizerBase,
    item_texts: Sequence[str],
    config: FinetuneConfig,
) -> ContrastiveBatch:
    """Render and tokenize one batch of pairs (also a DataLoader collate_fn via partial)."""
    histories = [render_history([item_texts[r] for r in p.history]) for p in pairs]
    targets = [p.target for p in pairs]
    return (
        tokenize(tokenizer, histories, config.history_max_length),
        tokenize(tokenizer, [item_texts[t] for t in targets], config.item_max_length),
        torch.tensor(targets),
    )


def plan_steps(
    sequences: Sequence[Sequence[int]], config: FinetuneConfig, workers: int = 1
) -> tuple[int, int]:
    """(total optimizer steps, warmup steps); each step takes batch_size pairs per worker."""
    per_epoch = sum(1 for s in sequences if len(s) >= 2) * config.samples_per_user
    steps_per_epoch = max(1, per_epoch // (config.batch_size * workers))
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return total_steps, max(1, int(total_steps * config.warmup_ratio))


def make_optimizer(
    model: nn.Module, config: FinetuneConfig, total_steps: int, warmup: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with linear warmup then linear decay to zero."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(
            (step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1))
        ),
    )
    return optimizer, scheduler


def pair_batches(
    sequences: Sequence[Sequence[int]], config: FinetuneConfig, rng: random.Random
) -> Iterator[list[TrainingPair]]:
    """Endless batches of pairs; pairs are resampled when fewer than a batch remain."""
    pairs: list[TrainingPair] = []
    while True:
        if len(pairs) < config.batch_size:
            pairs = sample_pairs(sequences, config.samples_per_user, config.max_history_items, rng)
            if len(pairs) < 2:
                raise ValueError("fine-tuning needs at least two users with two or more items")
        batch, pairs = pairs[: config.batch_size], pairs[config.batch_size :]
        yield batch


def train_steps(
    model: nn.Module,
    batches: Iterable[ContrastiveBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    total_steps: int,
    config: FinetuneConfig,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """The contrastive loop both backends run; `model` is a PairEncoder (DDP-wrapped on Ray)."""
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total_steps, desc="fine-tuning", unit="step", disable=not progress)
    for h_inputs, i_inputs, targets in batches:
        if len(losses) >= total_steps:
            break
        users, items = model(
            {k: v.to(device) for k, v in h_inputs.items()},
            {k: v.to(device) for k, v in i_inputs.items()},
        )
        loss = in_batch_loss(users, items, targets.to(device), config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    model.eval()
    return losses


def finetune(
    encoder: MeanPoolEncoder,
    tokenizer: PreTrainedTokenizerBase,
    item_texts: Sequence[str],
    sequences: Sequence[Sequence[int]],
    config: FinetuneConfig,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Fine-tune the encoder in place on (history, next item) pairs; return the loss per step."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    total_steps, warmup = plan_steps(sequences, config)
    model = PairEncoder(encoder.to(device))
    optimizer, scheduler = make_optimizer(model, config, total_steps, warmup)
    batches = (
        collate_pairs(batch, tokenizer, item_texts, config)
        for batch in pair_batches(sequences, config, rng)
    )
    return train_steps(model, batches, optimizer, scheduler, total_steps, config, device, progress)
