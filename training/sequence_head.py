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

from training.item_tower import EncoderTuning


@dataclass(frozen=True)
class HeadConfig:
    """Shape and training knobs of the sequence head."""

    dim: int = 64
    blocks: int = 2
    heads: int = 2
    max_length: int = 200
    dropout: float = 0.2
    # Dropout on the attention weights. 0 by default: with it, PyTorch's attention falls
    # back from its fused CPU kernel to the materialised one, which made a training step on
    # ML-1M 1.3× slower (measured; dropout elsewhere in the blocks stays).
    attention_dropout: float = 0.0
    learning_rate: float = 3e-3
    batch_size: int = 128
    epochs: int = 20
    eval_every: int = 2
    patience: int = 3
    # On an evaluation without improvement the learning rate is multiplied by this
    # (1.0: constant); training stops after `patience` such evaluations in a row.
    lr_decay: float = 0.5
    # Under a time budget the head's learning rate also decays linearly to this fraction
    # over the time left after the joint encoder phase (budget-aware decay: Li et al.,
    # ICLR 2020, "Budgeted Training"), so a run the budget stops ends annealed.
    lr_floor: float = 0.05
    seed: int = 0
    use_ids: bool = True
    use_text: bool = True
    # The ID part randomly removed in training, so the text path works on its own: new
    # items are scored, and free-text histories read, by text alone (ID dropout, as in
    # content-based cold-start models; Pembek et al., RecSys 2025).
    id_dropout: float = 0.2  # P(a history position enters by its text alone)
    text_only_histories: float = 0.2  # P(a whole training history has no IDs)
    # P(an item is scored by its text alone in a step). Off by default: on ML-1M, 3 seeds,
    # 0.5 cost warm users 5% of validation NDCG@10 (0.1483 vs 0.1558) and text histories 13%
    # on test (0.0888 vs 0.1026), for a cold gain within noise on test (README, the tries).
    item_id_dropout: float = 0.0
    text_loss_weight: float = 0.5  # weight of the CE over text-only item vectors
    # Share of a batch's positions the text-only CE is computed on (a random subset each
    # step: the same expected gradient, at a fraction of the full-catalogue softmax's cost).
    text_loss_positions: float = 0.25
    # A person who writes a history types titles, not the catalogue's rendered text: a
    # position read by text alone reads the item's short text (title) this often.
    short_text_rate: float = 0.5


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
        for block in self.blocks.layers:
            block.self_attn.dropout = config.attention_dropout
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        causal = torch.triu(torch.full((config.max_length, config.max_length), float("-inf")), 1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def item_vectors_from(
        self, ids: torch.Tensor, text: torch.Tensor, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Item vectors from IDs (row + 1, 0 = none) and text embeddings, any leading shape.

        `id_keep` (same shape as ids, 0 or 1) removes the ID part where it is 0.
        """
        vectors = torch.zeros(*ids.shape, self.config.dim, device=ids.device)
        if self.config.use_text:
            vectors = vectors + self.text_projection(text)
        if self.config.use_ids:
            residual = self.id_residual(ids)
            if id_keep is not None:
                residual = residual * id_keep[..., None]
            vectors = vectors + residual
        return vectors

    def text_item_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Item vectors from text alone (what a new item gets)."""
        return self.text_projection(text)

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


ScalarLog = Callable[[str, float, int], None]


def _without_ids(ids: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """IDs with some positions (and some whole histories) set to 0: those enter by text."""
    keep = torch.ones_like(ids, dtype=torch.bool)
    if config.id_dropout > 0:
        keep &= torch.rand(ids.shape, device=ids.device) >= config.id_dropout
    if config.text_only_histories > 0:
        keep &= torch.rand(ids.shape[0], 1, device=ids.device) >= config.text_only_histories
    return ids * keep


def _text_loss_rows(count: int, share: float, device: torch.device) -> torch.Tensor:
    """A random `share` of `count` positions (at least one): where the text-only CE runs."""
    if share >= 1.0:
        return torch.arange(count, device=device)
    size = max(1, round(count * share))
    return torch.randperm(count, device=device)[:size]


def _set_lr(
    optimizer: torch.optim.Optimizer,
    config: HeadConfig,
    plateau: float,
    phase_started: float | None,
    started: float,
    budget_s: float | None,
) -> float:
    """Set the head's learning rate: base × plateau decays × the budget-aware linear decay."""
    rate = config.learning_rate * plateau
    if budget_s is not None and phase_started is not None:
        left = budget_s - (phase_started - started)
        done = (time.perf_counter() - phase_started) / max(left, 1e-9)
        rate *= max(config.lr_floor, 1.0 - done)
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


def train_head(
    head: SequenceHead,
    sequences: Sequence[Sequence[int]],
    validate: Callable[[SequenceHead], float] | None = None,
    excluded_items: Sequence[int] = (),
    progress: bool = True,
    time_budget_s: float | None = None,
    encoder_tuning: EncoderTuning | None = None,
    warmup_epochs: int = 1,
    encoder_epochs: int | None = None,
    log: ScalarLog | None = None,
    short_text: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """Train on every position of every sequence (next-item CE over the catalogue).

    `validate` returns validation NDCG@10; the best evaluation's weights (the head's, and
    the encoder's when `encoder_tuning` fine-tunes it) are kept, and training stops after
    `patience` evaluations without improvement or when the time budget runs out.
    `excluded_items` (rows) never appear in the softmax (cold-start items). With
    `encoder_tuning`, after `warmup_epochs` epochs on the pretrained table, the item-text
    table is a trainable input for `encoder_epochs` epochs (None: to the end): its
    gradient trains the encoder's top layers and the table is refreshed every few steps;
    afterwards the head alone trains on the last table (joint epochs cost several head
    epochs on a CPU, so the head converges in the second phase). An evaluation before
    any encoder update can win, so the fine-tuned encoder is kept only if it beats the
    pretrained one on validation (`best_encoder_updates` says which was kept).
    `short_text` [items, text_dim] holds embeddings of the items' titles (rows after the
    full texts in the tuned table).
    `log(name, value, step)` receives the loss per step and validation NDCG per evaluation.
    Each evaluation without improvement multiplies the learning rate by `lr_decay`; under
    `time_budget_s` the rate also falls linearly to `lr_floor` × over the head-only phase.
    """
    config = head.config
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    usable = [s for s in sequences if len(s) >= 2]
    inputs = right_aligned([s[:-1] for s in usable], config.max_length)
    targets = right_aligned([s[1:] for s in usable], config.max_length)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate, betas=(0.9, 0.98))
    device = head.item_text.device
    num_items = head.item_text.shape[0] - 1
    all_ids = torch.arange(1, num_items + 1, device=device)
    logit_mask = torch.zeros(num_items, device=device)
    if len(excluded_items):
        logit_mask[list(excluded_items)] = float("-inf")
    history: dict[str, list[float]] = {"loss": [], "val_ndcg@10": [], "epoch": []}
    best, best_state, stale = -1.0, None, 0
    best_encoder: dict[str, torch.Tensor] | None = None
    started = time.perf_counter()
    steps = math.ceil(len(usable) / config.batch_size)
    last_joint = config.epochs if encoder_epochs is None else warmup_epochs + encoder_epochs
    plateau = 1.0  # product of the decays on stale evaluations
    head_phase_started: float | None = None
    for epoch in range(1, config.epochs + 1):
        if encoder_tuning is not None and epoch == last_joint + 1:
            head_phase_started = time.perf_counter()
        elif encoder_tuning is None and epoch == 1:
            head_phase_started = started
        head.train()
        order = rng.permutation(len(usable))
        bar = tqdm(range(steps), desc=f"head epoch {epoch}", unit="step", disable=not progress)
        for step in bar:
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            ids = torch.from_numpy(inputs[rows]).to(device)
            target = torch.from_numpy(targets[rows]).to(device)
            tuning = encoder_tuning if warmup_epochs < epoch <= last_joint else None
            rate = _set_lr(optimizer, config, plateau, head_phase_started, started, time_budget_s)
            table = head.item_text[1:].detach().clone()
            table.requires_grad_(tuning is not None)
            padded = torch.cat([head.item_text[:1], table])
            ids_in = _without_ids(ids, config)
            text_in = padded[ids]
            titles = None
            if short_text is not None and config.short_text_rate > 0:
                titles = short_text.detach().clone().requires_grad_(tuning is not None)
                short = (ids_in == 0) & (ids > 0)
                short &= torch.rand(ids.shape, device=device) < config.short_text_rate
                text_in = torch.where(
                    short[..., None], torch.cat([head.item_text[:1], titles])[ids], text_in
                )
            hidden = head.encode_positions(ids_in, text_in)
            keep = target > 0
            hidden, wanted = hidden[keep], target[keep] - 1
            id_keep = None
            if config.item_id_dropout > 0:
                id_keep = (torch.rand(num_items, device=device) >= config.item_id_dropout).float()
            logits = hidden @ head.item_vectors_from(all_ids, table, id_keep).T + logit_mask
            loss = nn.functional.cross_entropy(logits, wanted)
            if config.text_loss_weight > 0 and config.use_text:
                chosen = _text_loss_rows(len(wanted), config.text_loss_positions, device)
                text_logits = hidden[chosen] @ head.text_item_vectors(table).T + logit_mask
                loss = loss + config.text_loss_weight * nn.functional.cross_entropy(
                    text_logits, wanted[chosen]
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if tuning is not None and table.grad is not None:
                grad = table.grad
                if short_text is not None:
                    title_grad = titles.grad if titles is not None else None
                    grad = torch.cat(
                        [grad, title_grad if title_grad is not None else torch.zeros_like(grad)]
                    )
                refreshed = tuning.accumulate(grad)
                if refreshed is not None:
                    with torch.no_grad():
                        head.item_text[1:] = refreshed[:num_items].to(device)
                        if short_text is not None:
                            short_text = refreshed[num_items:].to(device)
            history["loss"].append(float(loss.item()))
            if log is not None:
                log("train/loss", history["loss"][-1], len(history["loss"]))
                log("train/learning_rate", rate, len(history["loss"]))
            bar.set_postfix(loss=f"{np.mean(history['loss'][-20:]):.3f}")
        out_of_time = time_budget_s is not None and time.perf_counter() - started > time_budget_s
        if validate is not None and (
            epoch % config.eval_every == 0
            or out_of_time
            or epoch == config.epochs
            or (encoder_tuning is not None and epoch in (warmup_epochs, last_joint))
        ):
            score = validate(head)
            history["val_ndcg@10"].append(score)
            history["epoch"].append(epoch)
            if log is not None:
                log("validation/ndcg@10", score, epoch)
            print(f"[head] epoch {epoch}: val NDCG@10 {score:.4f}", flush=True)
            if score > best:
                best, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                if encoder_tuning is not None:
                    best_encoder = encoder_tuning.state()
                    history["best_encoder_updates"] = [float(encoder_tuning.updates)]
                history["best_epoch"] = [float(epoch)]
            else:
                stale += 1
                if stale >= config.patience:
                    break
                plateau *= config.lr_decay
                history.setdefault("lr_decayed_at", []).append(float(epoch))
        if out_of_time:
            print(f"[head] time budget reached after epoch {epoch}", flush=True)
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    if best_encoder is not None and encoder_tuning is not None:
        encoder_tuning.restore(best_encoder)
    head.eval()
    return history
