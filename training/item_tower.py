"""The item tower's trainable part: the encoder's top layers over cached lower-layer states.

Fine-tuning the language model on behaviour, affordably on a CPU. A catalogue's item texts
are fixed, so the frozen lower layers run once and their token states are kept; the top
`trainable_layers` of the same encoder are trained with the sequence head on the
next-item objective. The head sees an item-text table (one unit vector per item); its
gradient with respect to that table is exact for every item, so the tower accumulates it
over `refresh_every` head steps, back-propagates it through the top layers in one pass
over the catalogue, takes one optimizer step and recomputes the table (a refreshed,
at most `refresh_every` steps stale item table). The layers are the encoder's own
modules, so saving the encoder afterwards saves the fine-tuned weights, and the served
ONNX encoder gives the same vectors for the same texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from training.torch_encoder import MeanPoolEncoder, ModelError

TEXTS_PER_CHUNK = 256


@dataclass
class _Chunk:
    rows: torch.Tensor  # catalogue rows of this chunk's texts
    hidden: torch.Tensor  # [texts, tokens, hidden] after the frozen layers
    mask: torch.Tensor  # [texts, tokens] attention mask
    additive_mask: torch.Tensor  # [texts, 1, 1, tokens], 0 or a large negative


class ItemTextTower(nn.Module):
    """Top layers of a BERT-style encoder, trainable, over cached states of fixed texts."""

    def __init__(
        self,
        encoder: MeanPoolEncoder,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        trainable_layers: int,
        max_length: int,
    ) -> None:
        super().__init__()
        transformer: Any = encoder.transformer
        layers = getattr(getattr(transformer, "encoder", None), "layer", None)
        if layers is None or not hasattr(transformer, "embeddings"):
            raise ModelError(
                "--encoder finetune needs a BERT-style model (embeddings + encoder layers); "
                "use --encoder frozen or contrastive"
            )
        if not 1 <= trainable_layers <= len(layers):
            raise ModelError(
                f"--encoder-layers {trainable_layers}: the encoder has {len(layers)} layers"
            )
        split = len(layers) - trainable_layers
        self.layers = nn.ModuleList(layers[split:])
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        for parameter in self.layers.parameters():
            parameter.requires_grad_(True)
        self.num_texts = len(texts)
        self.dim = int(transformer.config.hidden_size)
        # Sorted by length so each chunk pads little.
        order = np.argsort([len(t) for t in texts], kind="stable")
        self.chunks: list[_Chunk] = []
        was_training = transformer.training
        transformer.eval()
        with torch.no_grad():
            for start in range(0, len(texts), TEXTS_PER_CHUNK):
                rows = order[start : start + TEXTS_PER_CHUNK]
                tokens = tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                kwargs = {"input_ids": tokens["input_ids"]}
                if "token_type_ids" in tokens:
                    kwargs["token_type_ids"] = tokens["token_type_ids"]
                hidden = transformer.embeddings(**kwargs)
                additive = transformer.get_extended_attention_mask(
                    tokens["attention_mask"], tokens["input_ids"].shape
                )
                for layer in layers[:split]:
                    hidden = layer(hidden, attention_mask=additive)[0]
                self.chunks.append(
                    _Chunk(torch.from_numpy(rows), hidden, tokens["attention_mask"], additive)
                )
        transformer.train(was_training)

    def _embed_chunk(self, chunk: _Chunk) -> torch.Tensor:
        hidden = chunk.hidden
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=chunk.additive_mask)[0]
        mask = chunk.mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=-1)

    @torch.no_grad()
    def table(self) -> torch.Tensor:
        """Unit text embeddings of every text [texts, hidden], in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        out = torch.zeros(self.num_texts, self.dim)
        for chunk in self.chunks:
            out[chunk.rows] = self._embed_chunk(chunk)
        self.train(was_training)
        return out

    def backward(self, table_grad: torch.Tensor) -> None:
        """Accumulate d(loss)/d(layers) given d(loss)/d(table), one pass over the texts."""
        for chunk in self.chunks:
            grad = table_grad[chunk.rows]
            if torch.count_nonzero(grad) == 0:
                continue
            (self._embed_chunk(chunk) * grad).sum().backward()


class EncoderTuning:
    """Trains an ItemTextTower from the head's gradient on the item-text table.

    The gradient is summed over `refresh_every` head steps, then one pass over the
    catalogue back-propagates it through the tower, the optimizer steps, and the
    refreshed table is returned for the head to use.
    """

    def __init__(self, tower: ItemTextTower, learning_rate: float, refresh_every: int) -> None:
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be ≥ 1, got {refresh_every}")
        self.tower = tower
        self.refresh_every = refresh_every
        self.optimizer = torch.optim.AdamW(
            [p for p in tower.parameters() if p.requires_grad], lr=learning_rate
        )
        self.pending = torch.zeros(tower.num_texts, tower.dim)
        self.steps = 0
        self.updates = 0

    def accumulate(self, table_grad: torch.Tensor) -> torch.Tensor | None:
        """Add one step's table gradient; every `refresh_every` steps, update and refresh."""
        self.pending += table_grad.detach().cpu()
        self.steps += 1
        if self.steps % self.refresh_every:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.tower.train()
        self.tower.backward(self.pending / self.refresh_every)
        self.optimizer.step()
        self.pending.zero_()
        self.updates += 1
        return self.tower.table()

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the tower's weights (for keeping the best evaluation)."""
        return {k: v.detach().clone() for k, v in self.tower.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Put back weights taken with state()."""
        self.tower.load_state_dict(state)
