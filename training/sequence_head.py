"""A light sequence head over item embeddings (SASRec-style), trained with full-catalogue CE.

Item vector = projection of the item's text embedding + an ID residual (zero-initialised,
so an item never seen in training is represented by its text alone). A causal
transformer reads a history (oldest → newest, right-aligned) and its last position is
the user vector; scores are dot products with every item vector. Cross-entropy over the
whole catalogue at every position (REFERENCE.md §3: far stronger than sampled BCE).

The module's ``user_vectors`` signature is what export turns into ONNX: inputs are item
IDs (row + 1; 0 = padding or no ID) and per-position text embeddings, so free texts and
new items enter by text alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class HeadConfig:
    """Shape and training knobs of the sequence head."""

    dim: int = 64
    blocks: int = 2
    heads: int = 2
    max_length: int = 200
    dropout: float = 0.2
    learning_rate: float = 3e-3
    batch_size: int = 128
    epochs: int = 20
    eval_every: int = 2
    patience: int = 3
    seed: int = 0
    use_ids: bool = True
    use_text: bool = True


class SequenceHead(nn.Module):
    """Item tower (text projection + ID residual) and a causal transformer user tower."""

    item_text: torch.Tensor
    causal_mask: torch.Tensor

    def __init__(self, text_embeddings: torch.Tensor, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        num_items, text_dim = text_embeddings.shape
        # Row 0 is padding / "no ID": item k lives at row k + 1.
        padded = torch.cat([torch.zeros(1, text_dim), text_embeddings.float()])
        self.register_buffer("item_text", padded, persistent=True)
        self.text_projection = nn.Linear(text_dim, config.dim, bias=False)
        self.id_residual = nn.Embedding(num_items + 1, config.dim, padding_idx=0)
        nn.init.zeros_(self.id_residual.weight)
        self.positions = nn.Embedding(config.max_length, config.dim)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            dim_feedforward=config.dim * 2,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        causal = torch.triu(torch.full((config.max_length, config.max_length), float("-inf")), 1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def item_vectors_from(self, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Item vectors from IDs (row + 1, 0 = none) and text embeddings, any leading shape."""
        vectors = torch.zeros(*ids.shape, self.config.dim, device=ids.device)
        if self.config.use_text:
            vectors = vectors + self.text_projection(text)
        if self.config.use_ids:
            vectors = vectors + self.id_residual(ids)
        return vectors

    def all_item_vectors(self) -> torch.Tensor:
        """Vectors of every catalogue item [num_items, dim] (row order)."""
        ids = torch.arange(1, self.item_text.shape[0], device=self.item_text.device)
        return self.item_vectors_from(ids, self.item_text[1:])

    def encode_positions(self, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position [batch, length, dim]; padding where ids and text are 0."""
        length = ids.shape[1]
        padding = (ids == 0) & (text.abs().sum(-1) == 0)
        x = self.item_vectors_from(ids, text) * math.sqrt(self.config.dim)
        positions = torch.arange(
            self.config.max_length - length, self.config.max_length, device=ids.device
        )
        x = self.dropout(x + self.positions(positions)[None])
        x = x.masked_fill(padding[..., None], 0.0)
        mask = self.causal_mask[:length, :length]
        h = self.blocks(x, mask=mask, is_causal=True)
        return self.norm(h)

    def user_vectors(self, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The user vector: the hidden state at the last (most recent) position."""
        return self.encode_positions(ids, text)[:, -1]

    def forward(self, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """ONNX entry point: user vectors [batch, dim]."""
        return self.user_vectors(ids, text)


def right_aligned(sequences: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Item rows + 1, right-aligned and left-padded with 0 to `length` (most recent last)."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        tail = list(seq)[-length:]
        if tail:
            out[i, length - len(tail) :] = np.asarray(tail, dtype=np.int64) + 1
    return out


@torch.no_grad()
def score_users(
    head: SequenceHead, histories: Sequence[Sequence[int]], batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [users, dim], item vectors [items, dim]) in eval mode."""
    head.eval()
    device = head.item_text.device
    users = []
    for start in range(0, len(histories), batch_size):
        batch = right_aligned(histories[start : start + batch_size], head.config.max_length)
        ids = torch.from_numpy(batch).to(device)
        users.append(head.user_vectors(ids, head.item_text[ids]).cpu().numpy())
    return np.concatenate(users), head.all_item_vectors().cpu().numpy()


def train_head(
    head: SequenceHead,
    sequences: Sequence[Sequence[int]],
    validate: Callable[[SequenceHead], float] | None = None,
    excluded_items: Sequence[int] = (),
    progress: bool = True,
    time_budget_s: float | None = None,
) -> dict[str, list[float]]:
    """Train on every position of every sequence (next-item CE over the catalogue).

    `validate` returns validation NDCG@10; the best epoch's weights are kept and training
    stops after `patience` evaluations without improvement or when the time budget runs out.
    `excluded_items` (rows) never appear in the softmax (cold-start items).
    """
    config = head.config
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    usable = [s for s in sequences if len(s) >= 2]
    inputs = right_aligned([s[:-1] for s in usable], config.max_length)
    targets = right_aligned([s[1:] for s in usable], config.max_length)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate, betas=(0.9, 0.98))
    device = head.item_text.device
    logit_mask = torch.zeros(head.item_text.shape[0] - 1, device=device)
    if len(excluded_items):
        logit_mask[list(excluded_items)] = float("-inf")
    history: dict[str, list[float]] = {"loss": [], "val_ndcg@10": [], "epoch": []}
    best, best_state, stale = -1.0, None, 0
    started = time.perf_counter()
    steps = math.ceil(len(usable) / config.batch_size)
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = rng.permutation(len(usable))
        bar = tqdm(range(steps), desc=f"head epoch {epoch}", unit="step", disable=not progress)
        for step in bar:
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            ids = torch.from_numpy(inputs[rows]).to(device)
            target = torch.from_numpy(targets[rows]).to(device)
            hidden = head.encode_positions(ids, head.item_text[ids])
            keep = target > 0
            logits = hidden[keep] @ head.all_item_vectors().T + logit_mask
            loss = nn.functional.cross_entropy(logits, target[keep] - 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["loss"].append(float(loss.item()))
            bar.set_postfix(loss=f"{np.mean(history['loss'][-20:]):.3f}")
        out_of_time = time_budget_s is not None and time.perf_counter() - started > time_budget_s
        if validate is not None and (
            epoch % config.eval_every == 0 or out_of_time or epoch == config.epochs
        ):
            score = validate(head)
            history["val_ndcg@10"].append(score)
            history["epoch"].append(epoch)
            print(f"[head] epoch {epoch}: val NDCG@10 {score:.4f}", flush=True)
            if score > best:
                best, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                history["best_epoch"] = [float(epoch)]
            else:
                stale += 1
                if stale >= config.patience:
                    break
        if out_of_time:
            print(f"[head] time budget reached after epoch {epoch}", flush=True)
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return history
