"""A light sequence head over item vectors (SASRec-style), trained with cross-entropy.

Item vector = projection of the item's text embedding + a bounded ID delta (Pembek et
al., RecSys 2025, "Let It Go? Not Quite"): the delta's norm is capped at `delta_cap` ×
the text projection's norm, so every trained item stays near where its text puts it, and
an item never seen in training (delta 0) is its text alone, on the same scale as the
items it competes with. One table serves the history (input) and the ranking (output).
`use_text=False` gives the plain ID-only SASRec a practitioner tries first (the report's
baseline, trained by this same code).

A causal transformer reads a history (oldest → newest, right-aligned) and its last
position is the user vector; scores are dot products with every item vector. Training is
next-item cross-entropy at every position, over the whole catalogue or over `negatives`
uniformly sampled items shared by the batch (REFERENCE.md §3: far stronger than sampled
BCE; thousands of shared negatives match the full softmax).

The module's ``user_vectors`` signature is what export turns into ONNX: inputs are item
IDs (row + 1; 0 = padding or no ID) and per-position text embeddings, so free texts and
new items enter by text alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.item_tower import EncoderTuning

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    """Shape and training knobs of the sequence head."""

    dim: int = 64
    blocks: int = 2
    heads: int = 1
    # Feed-forward width as a multiple of `dim`.
    feedforward: int = 4
    max_length: int = 200
    dropout: float = 0.2
    # Dropout on the attention weights. 0 by default: with it, PyTorch's attention falls
    # back from its fused CPU kernel to the materialised one, which made a training step on
    # ML-1M 1.3× slower (measured; dropout elsewhere in the blocks stays).
    attention_dropout: float = 0.0
    learning_rate: float = 1e-3
    weight_decay: float = 0.01  # AdamW
    batch_size: int = 128
    epochs: int = 200  # a bound: early stopping and the time budget end training first
    eval_every: int = 2
    # Training stops after this many evaluations in a row without a better validation.
    patience: int = 10
    # On an evaluation without improvement the learning rate is multiplied by this
    # (1.0: constant, as the anchors train).
    lr_decay: float = 1.0
    # Under a time budget the head's learning rate also decays linearly to this fraction
    # over the time left after the joint encoder phase (budget-aware decay: Li et al.,
    # ICLR 2020, "Budgeted Training"), so a run the budget stops ends annealed.
    lr_floor: float = 0.05
    seed: int = 0
    use_ids: bool = True
    use_text: bool = True
    # The ID delta's norm is at most this × the norm of the item's text projection
    # (0: uncapped). Ignored without text (the ID-only model). ML-1M validation NDCG@10 at
    # epoch 12, one seed (README, the tries): 0.5 → 0.1105, 1.0 → 0.1211, uncapped 0.1238,
    # ID only 0.1049.
    delta_cap: float = 1.0
    # Shared uniformly sampled negatives per step (0: the whole catalogue).
    negatives: int = 1024
    # bfloat16 autocast for the training step (the CPU's AMX / the GPU's tensor cores).
    bf16: bool = True
    # The ID part randomly removed in training, so the text path works on its own: new
    # items are scored, and free-text histories read, by text alone (ID dropout, as in
    # content-based cold-start models; Pembek et al., RecSys 2025).
    # On: without them the head never reads a history by text, and written histories
    # (titles only, live server, ML-1M) fell from 0.1026 to 0.0246 NDCG@10 (README).
    id_dropout: float = 0.2  # P(a history position enters by its text alone)
    text_only_histories: float = 0.2  # P(a whole training history has no IDs)
    # P(an item is scored by its text alone in a step).
    item_id_dropout: float = 0.0
    text_loss_weight: float = 0.0  # weight of the CE over text-only item vectors
    # Share of a batch's positions the text-only CE is computed on.
    text_loss_positions: float = 0.25
    # A person who writes a history types titles, not the catalogue's rendered text: a
    # position read by text alone reads the item's short text (title) this often.
    short_text_rate: float = 0.5


class SequenceHead(nn.Module):
    """Item tower (text projection + bounded ID delta) and a causal transformer user tower."""

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
        if config.use_text:
            nn.init.zeros_(self.id_residual.weight)  # a delta from the text, zero at first
        else:
            nn.init.trunc_normal_(self.id_residual.weight, std=0.02)
            with torch.no_grad():
                self.id_residual.weight[0].zero_()
        self.positions = nn.Embedding(config.max_length, config.dim)
        nn.init.trunc_normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            dim_feedforward=config.dim * config.feedforward,
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

    def id_deltas(self, ids: torch.Tensor, text_vectors: torch.Tensor | None) -> torch.Tensor:
        """The ID part of items `ids`, its norm capped against their text projections."""
        delta = self.id_residual(ids)
        cap = self.config.delta_cap
        if text_vectors is None or cap <= 0:
            return delta
        limit = cap * text_vectors.detach().norm(dim=-1, keepdim=True)
        scale = limit / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return delta * scale.clamp(max=1.0)

    def item_vectors_from(
        self, ids: torch.Tensor, text: torch.Tensor, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Item vectors from IDs (row + 1, 0 = none) and text embeddings, any leading shape.

        `id_keep` (same shape as ids, 0 or 1) removes the ID part where it is 0.
        """
        text_vectors = self.text_projection(text) if self.config.use_text else None
        if not self.config.use_ids:
            assert text_vectors is not None
            return text_vectors
        delta = self.id_deltas(ids, text_vectors)
        if id_keep is not None:
            delta = delta * id_keep[..., None]
        return delta if text_vectors is None else text_vectors + delta

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
        users.append(head.user_vectors(ids, head.item_text[ids]).float().cpu().numpy())
    return np.concatenate(users), head.all_item_vectors().float().cpu().numpy()


ScalarLog = Callable[[str, float, int], None]


# -- the loss ------------------------------------------------------------------------------


def next_item_loss(
    hidden: torch.Tensor,
    wanted: torch.Tensor,
    vectors: torch.Tensor,
    candidates: torch.Tensor | None,
    logit_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each position's next item (`wanted`, rows of `vectors`).

    `candidates` None: against every row of `vectors` (plus `logit_mask`, -inf on rows
    that may not be ranked). Otherwise against the target and these shared negative
    rows; a negative that is the position's own target is masked out.
    """
    if candidates is None:
        logits = (hidden @ vectors.T).float()
        if logit_mask is not None:
            logits = logits + logit_mask
        return nn.functional.cross_entropy(logits, wanted)
    positive = (hidden * vectors[wanted]).sum(-1).float()
    negative = (hidden @ vectors[candidates].T).float()
    negative = negative.masked_fill(candidates[None] == wanted[:, None], float("-inf"))
    return (torch.logaddexp(positive, torch.logsumexp(negative, 1)) - positive).mean()


def _shared_negatives(allowed: torch.Tensor, count: int) -> torch.Tensor | None:
    """`count` distinct rows of `allowed` for this step (None: use them all)."""
    if count <= 0 or count >= len(allowed):
        return None
    return allowed[torch.randperm(len(allowed), device=allowed.device)[:count]]


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


# -- one training step ---------------------------------------------------------------------


@dataclass
class StepInputs:
    """What a step reads besides the batch: the item tables and the items it may rank."""

    allowed: torch.Tensor  # rows that may be targets and negatives
    logit_mask: torch.Tensor | None  # -inf on the other rows (full softmax), or None
    short_text: torch.Tensor | None  # titles' embeddings [items, text_dim]
    tuning: EncoderTuning | None  # the encoder trains from this step's table gradient
    text_tables: list[torch.Tensor] = field(default_factory=list)  # filled per step


def _history_text(
    head: SequenceHead, ids: torch.Tensor, ids_in: torch.Tensor, inputs: StepInputs
) -> torch.Tensor:
    """Per-position text embeddings; text-only positions sometimes read the title."""
    trainable = inputs.tuning is not None
    table = head.item_text[1:].detach().clone().requires_grad_(trainable)
    inputs.text_tables = [table]
    text_in = torch.cat([head.item_text[:1], table])[ids]
    config = head.config
    if inputs.short_text is None or config.short_text_rate <= 0 or not bool((ids_in == 0).any()):
        return text_in
    titles = inputs.short_text.detach().clone().requires_grad_(trainable)
    inputs.text_tables.append(titles)
    short = (ids_in == 0) & (ids > 0)
    short &= torch.rand(ids.shape, device=ids.device) < config.short_text_rate
    return torch.where(short[..., None], torch.cat([head.item_text[:1], titles])[ids], text_in)


def step_loss(
    head: SequenceHead, ids: torch.Tensor, target: torch.Tensor, inputs: StepInputs
) -> torch.Tensor:
    """The batch's loss: next-item CE (+ the text-only CE when weighted)."""
    config = head.config
    ids_in = _without_ids(ids, config)
    text_in = _history_text(head, ids, ids_in, inputs)
    table = inputs.text_tables[0]
    autocast: AbstractContextManager[object] = (
        torch.autocast(ids.device.type, dtype=torch.bfloat16) if config.bf16 else nullcontext()
    )
    with autocast:
        hidden = head.encode_positions(ids_in, text_in)
        keep = target > 0
        hidden, wanted = hidden[keep], target[keep] - 1
        id_keep = None
        if config.item_id_dropout > 0:
            num_items = len(table)
            id_keep = (torch.rand(num_items, device=ids.device) >= config.item_id_dropout).float()
        all_ids = torch.arange(1, len(table) + 1, device=ids.device)
        vectors = head.item_vectors_from(all_ids, table, id_keep)
        candidates = _shared_negatives(inputs.allowed, config.negatives)
        loss = next_item_loss(hidden, wanted, vectors, candidates, inputs.logit_mask)
        if config.text_loss_weight > 0 and config.use_text:
            chosen = _text_loss_rows(len(wanted), config.text_loss_positions, ids.device)
            loss = loss + config.text_loss_weight * next_item_loss(
                hidden[chosen],
                wanted[chosen],
                head.text_item_vectors(table),
                candidates,
                inputs.logit_mask,
            )
    return loss


def _tune_encoder(head: SequenceHead, inputs: StepInputs) -> None:
    """Pass the step's table gradient to the encoder; take its refreshed tables."""
    if inputs.tuning is None or inputs.text_tables[0].grad is None:
        return
    num_items = head.item_text.shape[0] - 1
    grad = inputs.text_tables[0].grad
    assert grad is not None
    if inputs.short_text is not None:
        title_grad = inputs.text_tables[1].grad if len(inputs.text_tables) > 1 else None
        grad = torch.cat([grad, title_grad if title_grad is not None else torch.zeros_like(grad)])
    refreshed = inputs.tuning.accumulate(grad)
    if refreshed is not None:
        with torch.no_grad():
            head.item_text[1:] = refreshed[:num_items].to(head.item_text.device)
        if inputs.short_text is not None:
            inputs.short_text = refreshed[num_items:].to(head.item_text.device)


# -- the schedule: learning rate, evaluations, early stopping ------------------------------


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


class _BestKeeper:
    """Keeps the best evaluation's weights; says when patience has run out."""

    def __init__(self, head: SequenceHead, tuning: EncoderTuning | None) -> None:
        self.head, self.tuning = head, tuning
        self.best, self.stale, self.plateau = -1.0, 0, 1.0
        self.state: dict[str, torch.Tensor] | None = None
        self.encoder: dict[str, torch.Tensor] | None = None

    def record(self, score: float, epoch: int, history: dict[str, list[float]]) -> bool:
        """Take an evaluation; True when training should stop (patience spent)."""
        config = self.head.config
        if score > self.best:
            self.best, self.stale = score, 0
            self.state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
            if self.tuning is not None:
                self.encoder = self.tuning.state()
                history["best_encoder_updates"] = [float(self.tuning.updates)]
            history["best_epoch"] = [float(epoch)]
            return False
        self.stale += 1
        if self.stale >= config.patience:
            return True
        if config.lr_decay != 1.0:
            self.plateau *= config.lr_decay
            history.setdefault("lr_decayed_at", []).append(float(epoch))
        return False

    def restore(self) -> None:
        """Put the best evaluation's weights back (head and encoder)."""
        if self.state is not None:
            self.head.load_state_dict(self.state)
        if self.encoder is not None and self.tuning is not None:
            self.tuning.restore(self.encoder)
        self.head.eval()


def training_pairs(
    sequences: Sequence[Sequence[int]], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): every sequence shifted by one, right-aligned to `length`."""
    usable = [s for s in sequences if len(s) >= 2]
    return (
        right_aligned([s[:-1] for s in usable], length),
        right_aligned([s[1:] for s in usable], length),
    )


def _allowed_rows(
    num_items: int, excluded_items: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows that may be ranked in training, the full softmax's -inf mask or None)."""
    if not len(excluded_items):
        return torch.arange(num_items, device=device), None
    mask = torch.zeros(num_items, device=device)
    mask[list(excluded_items)] = float("-inf")
    return torch.nonzero(mask == 0).flatten(), mask


def _batches(
    inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled (input, target) batches."""
    order = rng.permutation(len(inputs))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield inputs[rows], targets[rows]


def _train_epoch(
    head: SequenceHead,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    step_inputs: StepInputs,
    learning_rate: Callable[[], float],
    history: dict[str, list[float]],
    log: ScalarLog | None,
) -> None:
    """One pass over the batches: loss, backward, optimizer step, encoder update."""
    head.train()
    device = head.item_text.device
    for batch_inputs, batch_targets in batches:
        rate = learning_rate()
        ids = torch.from_numpy(batch_inputs).to(device)
        loss = step_loss(head, ids, torch.from_numpy(batch_targets).to(device), step_inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _tune_encoder(head, step_inputs)
        history["loss"].append(float(loss.item()))
        if log is not None:
            log("train/loss", history["loss"][-1], len(history["loss"]))
            log("train/learning_rate", rate, len(history["loss"]))
        if isinstance(batches, tqdm):
            batches.set_postfix(loss=f"{np.mean(history['loss'][-20:]):.3f}")


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
    """Train on every position of every sequence (next-item CE); returns the curves.

    `validate` returns validation NDCG@10; the best evaluation's weights (the head's,
    and the encoder's when `encoder_tuning` fine-tunes it) are kept, and training stops
    after `patience` evaluations without improvement or when the time budget runs out.
    `excluded_items` (rows) are never ranked in training (cold-start items). With
    `encoder_tuning`, after `warmup_epochs` epochs on the pretrained table the item-text
    table is a trainable input for `encoder_epochs` epochs (None: to the end): its
    gradient trains the encoder's top layers and the table is refreshed every few steps;
    afterwards the head alone trains on the last table. The fine-tuned encoder is kept
    only if an evaluation after its updates wins (`best_encoder_updates` says which was
    kept). `short_text` [items, text_dim] holds the items' titles' embeddings (rows after
    the full texts in the tuned table). `log(name, value, step)` receives the loss and
    learning rate per step and validation NDCG per evaluation; `seconds` in the result
    holds each epoch's wall time.
    """
    config = head.config
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    inputs, targets = training_pairs(sequences, config.max_length)
    optimizer = torch.optim.AdamW(
        head.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.98),
        weight_decay=config.weight_decay,
    )
    device = head.item_text.device
    allowed, logit_mask = _allowed_rows(head.item_text.shape[0] - 1, excluded_items, device)
    step_inputs = StepInputs(allowed, logit_mask, short_text, None)
    history: dict[str, list[float]] = {"loss": [], "val_ndcg@10": [], "epoch": [], "seconds": []}
    keeper = _BestKeeper(head, encoder_tuning)
    started = time.perf_counter()
    last_joint = config.epochs if encoder_epochs is None else warmup_epochs + encoder_epochs
    phase_started = started if encoder_tuning is None else None
    for epoch in range(1, config.epochs + 1):
        if encoder_tuning is not None and epoch == last_joint + 1:
            phase_started = time.perf_counter()
        step_inputs.tuning = encoder_tuning if warmup_epochs < epoch <= last_joint else None
        epoch_started = time.perf_counter()
        batches = _batches(inputs, targets, rng, config.batch_size)
        if progress:
            total = math.ceil(len(inputs) / config.batch_size)
            batches = tqdm(batches, total=total, desc=f"head epoch {epoch}", unit="step")

        def rate(phase: float | None = phase_started) -> float:
            return _set_lr(optimizer, config, keeper.plateau, phase, started, time_budget_s)

        _train_epoch(head, optimizer, batches, step_inputs, rate, history, log)
        history["seconds"].append(time.perf_counter() - epoch_started)
        out_of_time = time_budget_s is not None and time.perf_counter() - started > time_budget_s
        due = (
            epoch % config.eval_every == 0
            or out_of_time
            or epoch == config.epochs
            or (encoder_tuning is not None and epoch in (warmup_epochs, last_joint))
        )
        if validate is not None and due:
            score = validate(head)
            history["val_ndcg@10"].append(score)
            history["epoch"].append(epoch)
            if log is not None:
                log("validation/ndcg@10", score, epoch)
            logger.info(
                "[head] epoch %d: val NDCG@10 %.4f (%.1f s/epoch)",
                epoch,
                score,
                history["seconds"][-1],
            )
            if keeper.record(score, epoch, history):
                break
        if out_of_time:
            logger.info("[head] time budget reached after epoch %d", epoch)
            break
    keeper.restore()
    return history
