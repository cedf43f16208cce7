"""Contrastive fine-tuning: a history is pulled toward the item the user took next.

Loss: softmax cross-entropy of (history · item) / temperature over the batch's
target items (in-batch negatives). Columns holding the same item as a row's own
target are masked, so a popular item is never its own negative. Mean pooling
and L2 normalisation are in the encoder, so dot products are cosines.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from server.history import render_history
from training.encoder import MeanPoolEncoder, tokenize

# Temperature ~0.05 is what the strongest contrastive recommenders on
# MovieLens-1M use (REFERENCE.md §3); much higher flattens the softmax.
DEFAULT_TEMPERATURE = 0.05


@dataclass(frozen=True)
class FinetuneConfig:
    """Knobs of one fine-tuning run."""

    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    temperature: float = DEFAULT_TEMPERATURE
    history_max_length: int = 128
    item_max_length: int = 32
    max_history_items: int = 20
    samples_per_user: int = 1
    max_steps: int | None = None
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
    per_epoch = sum(1 for s in sequences if len(s) >= 2) * config.samples_per_user
    steps_per_epoch = max(1, per_epoch // config.batch_size)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = max(1, int(total_steps * config.warmup_ratio))

    encoder.to(device).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(
            (step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1))
        ),
    )
    losses: list[float] = []
    pairs: list[TrainingPair] = []
    bar = tqdm(total=total_steps, desc="fine-tuning", unit="step", disable=not progress)
    while len(losses) < total_steps:
        if len(pairs) < config.batch_size:
            pairs = sample_pairs(sequences, config.samples_per_user, config.max_history_items, rng)
            if len(pairs) < 2:
                raise ValueError("fine-tuning needs at least two users with two or more items")
        batch, pairs = pairs[: config.batch_size], pairs[config.batch_size :]
        histories = [render_history([item_texts[r] for r in p.history]) for p in batch]
        targets = [p.target for p in batch]
        h_inputs = tokenize(tokenizer, histories, config.history_max_length)
        i_inputs = tokenize(tokenizer, [item_texts[t] for t in targets], config.item_max_length)
        users = encoder(**{k: v.to(device) for k, v in h_inputs.items()})
        items = encoder(**{k: v.to(device) for k, v in i_inputs.items()})
        loss = in_batch_loss(users, items, torch.tensor(targets, device=device), config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    encoder.eval()
    return losses
